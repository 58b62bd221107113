//! `POST /v1/node/rotate-key`: a node replaces its identity key.
//!
//! Authenticated by the node credential (the old key's holder); the body names
//! the old and the new key, the new key's proof-of-work nonce, and the new
//! key's signature over `old key || new key`, so the controller knows the node
//! holds the new secret. The handler checks the signature and computes the
//! proof-of-work bits; the model ([`RotateKey`]) checks the rest and applies it.

use axum::Json;
use axum::extract::State;
use weft_identity::{ProofOfWork, verify_signature};
use weft_proto::api::{
    API_VERSION, ROTATE_KEY_SIGNATURE_CONTEXT, RotateKeyRequest, RotateKeyResponse,
    rotate_key_signed_message,
};

use super::register::decode_fixed;
use super::{ApiJson, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{Actor, RotateKey, RotatedKey};

pub(super) async fn rotate_key(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<RotateKeyRequest>,
) -> Result<Json<RotateKeyResponse>, ApiError> {
    let signature: [u8; 64] = decode_fixed(&req.signature, "invalid_signature", "signature")?;
    verify_signature(
        &req.new_node_key,
        ROTATE_KEY_SIGNATURE_CONTEXT,
        &rotate_key_signed_message(&req.old_node_key, &req.new_node_key),
        &signature,
    )
    .map_err(|_| ApiError::BadSignature)?;
    let pow_bits = ProofOfWork {
        nonce: req.pow_nonce,
    }
    .achieved(&req.new_node_key);
    let RotatedKey {
        name,
        node_key,
        rotated,
    } = st
        .engine
        .execute(
            Actor::Node(auth.key),
            RotateKey {
                node: auth.id,
                old_key: req.old_node_key,
                new_key: req.new_node_key,
                pow_bits,
            },
        )
        .await?;
    if rotated {
        tracing::info!(node = %name, from = %req.old_node_key, to = %node_key, "node rotated its key");
    }
    Ok(Json(RotateKeyResponse {
        api_version: API_VERSION,
        node_key,
        name,
        rotated,
    }))
}

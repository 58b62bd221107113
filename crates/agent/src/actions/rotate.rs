//! `rotate-key`: this node gets a new identity key, crash-safely.
//!
//! 1. The new identity is minted (proof of work at `weftd`'s difficulty) and
//!    written to `STATE_DIR/identity.next` (0600) before anything else, unless
//!    a rotation that did not finish left one there: that one is finished.
//! 2. The controller is asked (`POST /v1/node/rotate-key`, the node credential,
//!    the new key's signature over old key || new key); it answers the same for
//!    a retry of a rotation it already made.
//! 3. Confirmed: the supervisor renames `identity.next` over `identity.key` and
//!    gives the data plane and the relay link the new key.
//!
//! A crash anywhere leaves either the old key alone (nothing sent yet) or
//! `identity.next`, which `weftd` finishes at its next start ([`resume`],
//! retried while the controller is unreachable). A refusal the controller will
//! repeat moves `identity.next` aside (named in the log) and keeps the old key.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use weft_api_client::ClientError;
use weft_identity::{Identity, SearchOptions};
use weft_proto::api::{
    ROTATE_KEY_SIGNATURE_CONTEXT, RotateKeyRequest, RotateKeyResponse, rotate_key_signed_message,
};

use super::{ActionContext, Done, Request};
use crate::clock;
use crate::ctl::{self, TrustSettings};
use crate::state::Credential;

/// Wait between tries of a pending rotation while the controller is away.
const RESUME_RETRY: Duration = Duration::from_secs(10);

/// Why a rotation did not complete.
#[derive(Debug)]
enum Failure {
    /// Retrying can help (controller unreachable); `identity.next` is kept.
    Transient(String),
    /// It cannot: `identity.next` was moved aside (or never written).
    Permanent(String),
}

impl Failure {
    fn text(&self) -> &str {
        match self {
            Failure::Transient(s) | Failure::Permanent(s) => s,
        }
    }
}

/// The action.
pub(super) async fn rotate(ctx: &ActionContext) -> Done {
    let _one_at_a_time = ctx.rotating.lock().await;
    match rotate_inner(ctx).await {
        Ok(text) => Done::ok(text),
        Err(f) => Done::failed(String::new(), f.text()),
    }
}

async fn rotate_inner(ctx: &ActionContext) -> Result<String, Failure> {
    let (cred, current) = key_context(ctx).await?;
    let state = ctx.state.clone();
    let pending = state
        .load_next_identity()
        .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
    let (next, resumed) = match pending {
        Some(id) => (id, true),
        None => {
            let difficulty = ctx.difficulty;
            let minted = tokio::task::spawn_blocking(move || {
                let id = Identity::mint(
                    &mut rand_core::OsRng,
                    difficulty,
                    &SearchOptions::default(),
                    &AtomicBool::new(false),
                    |_| {},
                )
                .map_err(|e| anyhow::anyhow!("minting a new identity: {e}"))?;
                state.save_next_identity(&id)?;
                anyhow::Ok(id)
            })
            .await
            .map_err(|e| Failure::Permanent(format!("the minting task failed: {e}")))?
            .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
            (minted, false)
        }
    };
    let new_key = next.node_key();
    let resp = confirm_and_install(ctx, &cred, &current, next).await?;
    Ok(format!(
        "node {} now has key {new_key} (was {}){}\n",
        resp.name,
        current.node_key(),
        if resumed {
            "; finished a rotation that had not completed"
        } else {
            ""
        }
    ))
}

async fn key_context(ctx: &ActionContext) -> Result<(Credential, Arc<Identity>), Failure> {
    match ctx.ask(Request::KeyContext).await {
        Ok((Some(cred), id)) => Ok((cred, id)),
        Ok((None, _)) => Err(Failure::Permanent(
            "this node has not joined a controller: there is no key to rotate there".into(),
        )),
        Err(e) => Err(Failure::Transient(e)),
    }
}

/// Asks the controller to take `next` in place of `current`, then has the
/// supervisor switch to it. A permanent refusal moves `identity.next` aside.
async fn confirm_and_install(
    ctx: &ActionContext,
    cred: &Credential,
    current: &Identity,
    next: Identity,
) -> Result<RotateKeyResponse, Failure> {
    let (old, new) = (current.node_key(), next.node_key());
    let req = RotateKeyRequest {
        api_version: None,
        old_node_key: old,
        new_node_key: new,
        pow_nonce: next.pow().nonce,
        signature: URL_SAFE_NO_PAD.encode(next.sign(
            ROTATE_KEY_SIGNATURE_CONTEXT,
            &rotate_key_signed_message(&old, &new),
        )),
    };
    let trust = TrustSettings {
        ca_file: cred.ca_file.clone(),
        pin_sha256: cred.pin_sha256.clone(),
        allow_insecure_http: cred.allow_insecure_http,
    };
    let answer = match ctl::client(&cred.controller_list(), &trust, Some(&cred.credential)) {
        Ok(c) => c.rotate_key(&req).await,
        Err(e) => return Err(Failure::Transient(format!("{e:#}"))),
    };
    let resp = match answer {
        Ok(r) if r.node_key == new => r,
        Ok(r) => {
            return Err(set_aside(
                ctx,
                format!(
                    "the controller answered with key {} instead of {new}",
                    r.node_key
                ),
            ));
        }
        Err(e) if permanent(&e) => {
            return Err(set_aside(
                ctx,
                format!("the controller refused the new key: {e}"),
            ));
        }
        Err(e) => {
            return Err(Failure::Transient(format!(
                "the controller could not be asked ({e}); the new key waits in {} and weftd \
                 finishes the rotation when the controller answers",
                ctx.state.next_identity_path().display()
            )));
        }
    };
    match ctx
        .ask(|reply| Request::InstallIdentity(Box::new(next), reply))
        .await
    {
        Ok(Ok(())) => {
            tracing::info!(from = %old, to = %new, "identity key rotated");
            Ok(resp)
        }
        Ok(Err(e)) | Err(e) => Err(Failure::Transient(format!(
            "the controller has the new key but this agent could not switch to it ({e}); \
             weftd finishes the rotation at its next start"
        ))),
    }
}

fn permanent(e: &ClientError) -> bool {
    e.is_permanent()
}

/// Moves `identity.next` aside after a refusal retrying cannot cure.
fn set_aside(ctx: &ActionContext, why: String) -> Failure {
    match ctx.state.set_next_identity_aside(clock::unix_ms()) {
        Ok(aside) => Failure::Permanent(format!(
            "{why}; the node keeps its key (the new one was moved to {})",
            aside.display()
        )),
        Err(e) => Failure::Permanent(format!("{why}; and {e:#}")),
    }
}

/// At start: finishes a rotation `identity.next` says is under way, retrying
/// every [`RESUME_RETRY`] while the controller cannot be asked.
pub(crate) async fn resume(ctx: ActionContext) {
    loop {
        let one_at_a_time = ctx.rotating.lock().await;
        let next = match ctx.state.load_next_identity() {
            Ok(Some(id)) => id,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{e:#}");
                return;
            }
        };
        tracing::info!(new_key = %next.node_key(), "finishing a key rotation that had not completed");
        let (cred, current) = match key_context(&ctx).await {
            Ok(c) => c,
            Err(f) => {
                tracing::warn!("key rotation not finished: {}", f.text());
                return;
            }
        };
        match confirm_and_install(&ctx, &cred, &current, next).await {
            Ok(_) => return,
            Err(Failure::Permanent(why)) => {
                tracing::error!("key rotation abandoned: {why}");
                return;
            }
            Err(Failure::Transient(why)) => {
                tracing::warn!("key rotation not finished yet: {why}");
                drop(one_at_a_time);
                tokio::time::sleep(RESUME_RETRY).await;
            }
        }
    }
}

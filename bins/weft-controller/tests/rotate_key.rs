//! Key rotation on the real controller binary (`POST /v1/node/rotate-key`):
//! the node keeps its id, name and addresses; peers see the old key leave and
//! the new one arrive; relays' member sets follow; the old key is refused from
//! then on; a retry is idempotent; the change survives a restart; audited.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use weft_api_client::MapStream;
use weft_identity::Identity;
use weft_proto::NodeKey;
use weft_proto::api::{ROTATE_KEY_SIGNATURE_CONTEXT, RotateKeyRequest, rotate_key_signed_message};
use weft_proto::netmap::{MapChange, MapEvent, NetworkMap};
use weft_proto::relay_api::CreateRelayRequest;

/// A rotation request from `old` to `new`, signed by `signer`.
fn request(old: &NodeKey, new: &Identity, signer: &Identity) -> RotateKeyRequest {
    RotateKeyRequest {
        api_version: None,
        old_node_key: *old,
        new_node_key: new.node_key(),
        pow_nonce: new.pow().nonce,
        signature: URL_SAFE_NO_PAD.encode(signer.sign(
            ROTATE_KEY_SIGNATURE_CONTEXT,
            &rotate_key_signed_message(old, &new.node_key()),
        )),
    }
}

fn peer_keys(m: &NetworkMap) -> Vec<NodeKey> {
    m.networks[0].peers.iter().map(|p| p.node_key).collect()
}

/// Applies `s`'s events to `map` until `done(map)`.
async fn follow(s: &mut MapStream, map: &mut NetworkMap, done: impl Fn(&NetworkMap) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(map) {
        let ev = tokio::time::timeout_at(deadline, s.next_map())
            .await
            .expect("the change did not arrive within 10 s")
            .expect("stream ended")
            .expect("stream error");
        match ev {
            MapEvent::Snapshot(m) => *map = m,
            MapEvent::Delta(d) => map.apply(&d).expect("delta applies"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_replaces_the_old_one_for_peers_and_relays_and_a_retry_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &["--keepalive-secs", "1"]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let relay = admin
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "fra1".into(),
            url: "https://relay.example.net".into(),
        })
        .await
        .unwrap();
    let c = ctl.client();
    let relay = c.with_bearer(&relay.token).unwrap();
    let (a, b) = (identity(8), identity(8));
    let ra = register(&c, &tok, &a).await.unwrap();
    let rb = register(&c, &tok, &b).await.unwrap();
    let (ca, cb) = (
        c.with_bearer(&ra.credential).unwrap(),
        c.with_bearer(&rb.credential).unwrap(),
    );
    let mut sb = cb.map_stream(None, Duration::from_secs(10)).await.unwrap();
    let mut b_map = cb.map().await.unwrap();
    follow(&mut sb, &mut b_map, |m| peer_keys(m) == [a.node_key()]).await;
    let before = ca.map().await.unwrap();

    // Refused: a signature by another key than the new one, a new key with
    // too little proof of work, another node's key.
    let a2 = identity(8);
    let forged = ca.rotate_key(&request(&a.node_key(), &a2, &a)).await;
    assert_eq!(refused(forged).0, 401);
    let weak = weak_identity(8);
    let (status, code, _) = refused(ca.rotate_key(&request(&a.node_key(), &weak, &weak)).await);
    assert_eq!((status, code.as_str()), (403, "pow_too_weak"));
    let (status, code, _) = refused(ca.rotate_key(&request(&a.node_key(), &b, &b)).await);
    assert_eq!((status, code.as_str()), (409, "key_taken"));
    // Only with the node credential.
    assert_eq!(
        refused(c.rotate_key(&request(&a.node_key(), &a2, &a2)).await).0,
        401
    );

    // Rotated: same name and addresses; the node's own map has the new key.
    let req = request(&a.node_key(), &a2, &a2);
    let resp = ca.rotate_key(&req).await.unwrap();
    assert!(resp.rotated);
    assert_eq!(
        (resp.node_key, resp.name.as_str()),
        (a2.node_key(), ra.name.as_str())
    );
    let after = ca.map().await.unwrap();
    assert_eq!(after.node.node_key, a2.node_key());
    assert_eq!(after.node.name, before.node.name);
    assert_eq!(after.networks[0].ipv4, before.networks[0].ipv4);

    // The peer saw the old key leave and the new one arrive, as deltas.
    let mut saw_remove = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while peer_keys(&b_map) != [a2.node_key()] {
        let ev = tokio::time::timeout_at(deadline, sb.next_map())
            .await
            .expect("the rotation did not reach the peer within 10 s")
            .expect("stream ended")
            .expect("stream error");
        match ev {
            MapEvent::Snapshot(m) => b_map = m,
            MapEvent::Delta(d) => {
                saw_remove |= d.changes.iter().any(|ch| {
                    matches!(ch, MapChange::PeerRemove { node_key, .. } if *node_key == a.node_key())
                });
                b_map.apply(&d).expect("delta applies");
            }
        }
    }
    assert!(saw_remove, "the old key's removal came as a delta");
    let peer = &b_map.networks[0].peers[0];
    assert_eq!(peer.name, ra.name);

    // Relays: the old key is no longer a member, the new one is.
    let members = relay.relay_members().await.unwrap().members;
    assert!(members.contains(&a2.node_key()) && !members.contains(&a.node_key()));

    // A retry of the same request succeeds and changes nothing.
    let again = ca.rotate_key(&req).await.unwrap();
    assert!(!again.rotated);
    assert_eq!(again.node_key, a2.node_key());

    // The old key is refused: it is not this node's key any more.
    let a3 = identity(8);
    let (status, code, _) = refused(ca.rotate_key(&request(&a.node_key(), &a3, &a3)).await);
    assert_eq!((status, code.as_str()), (409, "key_mismatch"));

    // Audited, with both keys.
    let audit = admin.audit(50, None, None).await.unwrap();
    let entry = audit
        .entries
        .iter()
        .find(|e| e.action == "node.rotate_key")
        .expect("a node.rotate_key audit entry");
    assert_eq!(entry.target, a2.node_key().to_string());
    assert_eq!(entry.actor, format!("node:{}", a.node_key()));
    assert_eq!(entry.detail["from"], a.node_key().to_string());
    assert_eq!(
        audit
            .entries
            .iter()
            .filter(|e| e.action == "node.rotate_key")
            .count(),
        1,
        "the retry is not audited again"
    );

    // It survives a restart.
    ctl.sigterm(Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let ca = ctl.client().with_bearer(&ra.credential).unwrap();
    let m = ca.map().await.unwrap();
    assert_eq!(m.node.node_key, a2.node_key());
    assert_eq!(m.networks[0].ipv4, before.networks[0].ipv4);
}

//! `kill -9` during a burst of registrations: every answered registration must
//! survive the restart, and nothing may be half-written.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/16", 0).await;
    let fingerprint = ctl.fingerprint;

    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let client = ctl.client();
    let mut workers = Vec::new();
    for _ in 0..24 {
        let (c, t, acked) = (client.clone(), token.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..200 {
                let id = identity(0);
                match register(&c, &t, &id).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(id.node_key().to_string(), r.addresses[0].ipv4.to_string());
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill in the middle of the burst.
    for _ in 0..2000 {
        if acked.lock().unwrap().len() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ctl.kill9();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("acknowledged before kill -9: {}", acked.len());
    assert!(
        acked.len() >= 150,
        "only {} registrations before the kill",
        acked.len()
    );

    let ctl = Controller::start(dir.path(), &[]);
    assert_eq!(
        ctl.fingerprint, fingerprint,
        "the certificate must survive restarts"
    );
    let admin = ctl.admin();
    let nodes = admin.list_nodes(None).await.unwrap().nodes;
    let present: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.node_key.to_string(), n.addresses[0].ipv4.to_string()))
        .collect();
    for (key, ip) in &acked {
        assert_eq!(
            present.get(key),
            Some(ip),
            "acknowledged registration {key} lost or changed after kill -9"
        );
    }
    // Nothing half-written: every node has exactly its one membership, no
    // address is used twice, and the token's use count matches.
    let mut seen = BTreeSet::new();
    for n in &nodes {
        assert_eq!(n.addresses.len(), 1, "node without its membership: {n:?}");
        assert!(
            seen.insert(n.addresses[0].ipv4),
            "duplicate address after restart"
        );
    }
    let tokens = admin.list_tokens().await.unwrap().tokens;
    assert_eq!(tokens[0].uses as usize, nodes.len());
    let net = admin.show_network("lab").await.unwrap();
    assert_eq!(net.node_count as usize, nodes.len());
    // Versions keep increasing across the restart.
    let health = ctl.client().health().await.unwrap();
    assert!(health.map_version >= acked.len() as u64 / 256);
    // And the controller keeps working: a new registration gets a free address.
    let r = register(&ctl.client(), &token, &identity(0)).await.unwrap();
    assert!(!seen.contains(&r.addresses[0].ipv4));
}

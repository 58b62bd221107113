//! Two engines on one SQLite file (what two controller processes do):
//! writes through both at once, one global version, the same maps.

use std::sync::Arc;
use std::time::Duration;

use weft_proto::NodeKey;
use weft_proto::netmap::MapEvent;

use super::load;
use crate::engine::Engine;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::model::{Actor, NewNetwork, NewToken, NodeId, Registration};
use crate::netmap;
use crate::secret::SecretHash;
use crate::store::Store as _;
use crate::store::sqlite::SqliteStore;

fn start(path: &std::path::Path) -> (Engine, crate::engine::EngineThread) {
    let mut store = SqliteStore::open(path).unwrap();
    let mut world = load(&mut store, Vec::new()).unwrap();
    super::bump(&mut store, &mut world).unwrap();
    Engine::start(
        store,
        world,
        Arc::new(Hub::new(HubConfig::default())),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn registration(i: u8) -> Registration {
    Registration {
        node_key: NodeKey::from_bytes([i; 32]),
        token_hash: SecretHash::of("t"),
        pow_bits: 0,
        name: None,
        hostname: Some(format!("host{i}")),
        facts: None,
        credential_hash: SecretHash::of(&format!("cred{i}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_file_serialize_writes_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    drop(SqliteStore::create(&path).unwrap());
    let (a, ta) = start(&path);
    let (b, tb) = start(&path);
    a.execute(
        Actor::Admin,
        NewNetwork {
            name: "lab".into(),
            ipv4_cidr: "100.64.0.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
    )
    .await
    .unwrap();
    b.execute(
        Actor::Admin,
        NewToken {
            networks: vec!["lab".into()],
            tags: Default::default(),
            expires_at: u64::MAX,
            max_uses: Some(32),
            description: None,
            hash: SecretHash::of("t"),
        },
    )
    .await
    .unwrap();
    let mut joins = Vec::new();
    for i in 0..32u8 {
        let e = if i % 2 == 0 { a.clone() } else { b.clone() };
        joins.push(tokio::spawn(async move {
            e.execute(Actor::Node(NodeKey::from_bytes([i; 32])), registration(i))
                .await
        }));
    }
    let mut addresses = std::collections::BTreeSet::new();
    for j in joins {
        let r = j.await.unwrap().expect("registration");
        addresses.insert(r.addresses[0].ipv4);
    }
    assert_eq!(addresses.len(), 32, "no duplicate addresses");
    // The token's uses were counted across both: a 33rd is refused.
    assert!(
        a.execute(Actor::Node(NodeKey::from_bytes([99; 32])), registration(99))
            .await
            .is_err()
    );

    // Both come to the same state (B catches up within a poll or two).
    let mut same = false;
    for _ in 0..50 {
        let (wa, wb) = (a.world().read().await, b.world().read().await);
        if wa.change_seq == wb.change_seq {
            same = true;
            break;
        }
        drop((wa, wb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same, "B did not catch up");
    let (wa, wb) = (a.world().read().await, b.world().read().await);
    assert_eq!(wa.version, wb.version);
    let ids: Vec<NodeId> = wa.node_ids().collect();
    assert_eq!(ids.len(), 32);
    assert_eq!(ids, wb.node_ids().collect::<Vec<_>>());
    for id in ids {
        let sa = netmap::snapshot(&wa, id).map(|m| MapEvent::Snapshot(m).to_json());
        let sb = netmap::snapshot(&wb, id).map(|m| MapEvent::Snapshot(m).to_json());
        assert_eq!(sa, sb, "node {id}");
    }
    // A fresh load from the file is that state too.
    let mut store = SqliteStore::open(&path).unwrap();
    let fresh = load(&mut store, Vec::new()).unwrap();
    assert_eq!(fresh.version, wa.version);
    assert_eq!(fresh.change_seq, wa.change_seq);
    assert_eq!(store.last_change_seq().unwrap(), wa.change_seq);
    drop((wa, wb));
    a.shutdown();
    b.shutdown();
    tokio::task::spawn_blocking(move || {
        ta.join();
        tb.join();
    })
    .await
    .unwrap();
}

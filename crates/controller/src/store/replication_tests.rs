//! The replication behaviour every driver must have ([`Store`]'s
//! `*_exclusive`, changes log, heartbeats, presence rows); run by each
//! driver's tests with two handles on one database.

use std::sync::mpsc;
use std::time::Duration;

use super::{ChangeRecord, PresenceRecord, ReplicaRecord, Store, Write};

fn change(seq: u64, replica: &str) -> Write {
    Write::Change(ChangeRecord {
        seq,
        replica: replica.into(),
        at_ms: 1_000 + seq,
        body: format!("{{\"n\":{seq}}}"),
    })
}

use super::row_suites::node;

/// `open` must return a new handle on the same database each call.
pub(crate) fn replication_suite<S: Store>(open: impl Fn() -> S + Send + Sync + 'static) {
    let open = std::sync::Arc::new(open);
    let mut a = open();
    assert_eq!(a.last_change_seq().unwrap(), 0);
    a.begin_exclusive().unwrap();
    assert!(a.changes_since(0, 10).unwrap().is_empty());
    a.commit_exclusive(&[Write::PutNode(node(1)), change(1, "a")])
        .unwrap();

    // B waits for the lock while A holds it, and then sees A's commit.
    a.begin_exclusive().unwrap();
    let (tx, rx) = mpsc::channel();
    let b_open = open.clone();
    let b = std::thread::spawn(move || {
        let mut b = b_open();
        b.begin_exclusive().unwrap();
        let seen = b.changes_since(1, 10).unwrap();
        tx.send(seen.clone()).unwrap();
        let next = b.last_change_seq().unwrap() + 1;
        b.commit_exclusive(&[change(next, "b")]).unwrap();
        seen
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "B got the lock while A held it"
    );
    a.commit_exclusive(&[change(2, "a")]).unwrap();
    let seen = b.join().unwrap();
    assert_eq!(seen.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(seen[0].replica, "a");
    assert_eq!(seen[0].body, "{\"n\":2}");
    assert_eq!(a.last_change_seq().unwrap(), 3);
    let all = a.changes_since(0, 10).unwrap();
    assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(a.changes_since(0, 2).unwrap().len(), 2);

    // A duplicate seq fails the whole batch, and the lock is released.
    a.begin_exclusive().unwrap();
    assert!(
        a.commit_exclusive(&[Write::PutNode(node(2)), change(3, "a")])
            .is_err()
    );
    assert_eq!(a.load().unwrap().nodes.len(), 1, "rolled back");
    let mut c = open();
    c.begin_exclusive().unwrap();
    c.rollback_exclusive().unwrap();

    // Pruning keeps the newer changes.
    a.prune_changes(2).unwrap();
    let left = a.changes_since(0, 10).unwrap();
    assert_eq!(left.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3]);

    // Heartbeats and presence rows.
    let me = ReplicaRecord {
        id: "a".into(),
        started_ms: 5,
        heartbeat_ms: 10,
    };
    a.heartbeat(&me).unwrap();
    let rows = c
        .heartbeat(&ReplicaRecord {
            id: "b".into(),
            started_ms: 6,
            heartbeat_ms: 11,
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    let rows = a
        .heartbeat(&ReplicaRecord {
            heartbeat_ms: 20,
            ..me
        })
        .unwrap();
    assert_eq!(rows[0].heartbeat_ms, 20);
    assert_eq!(rows[0].started_ms, 5);
    a.apply(&[
        Write::Presence {
            replica: "a".into(),
            node_id: 1,
            online: true,
        },
        Write::Presence {
            replica: "b".into(),
            node_id: 1,
            online: true,
        },
        Write::Presence {
            replica: "b".into(),
            node_id: 1,
            online: true,
        },
    ])
    .unwrap();
    assert_eq!(a.load_presence().unwrap().len(), 2);
    a.apply(&[Write::ReplicaGone("b".into())]).unwrap();
    assert_eq!(
        a.load_presence().unwrap(),
        vec![PresenceRecord {
            replica: "a".into(),
            node_id: 1
        }]
    );
    assert_eq!(
        c.heartbeat(&ReplicaRecord {
            id: "c".into(),
            started_ms: 1,
            heartbeat_ms: 1,
        })
        .unwrap()
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>(),
        vec!["a", "c"]
    );
    a.apply(&[Write::Presence {
        replica: "a".into(),
        node_id: 1,
        online: false,
    }])
    .unwrap();
    assert!(a.load_presence().unwrap().is_empty());
    // A node's removal takes its presence rows with it.
    a.apply(&[Write::Presence {
        replica: "a".into(),
        node_id: 1,
        online: true,
    }])
    .unwrap();
    a.apply(&[Write::DeleteNode(1)]).unwrap();
    assert!(a.load_presence().unwrap().is_empty());
}

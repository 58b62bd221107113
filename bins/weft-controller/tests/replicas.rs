//! Several replicas on one database, on the real controller binary: two
//! processes on one SQLite file (or, with `WEFT_TEST_DATABASE=postgres`, one
//! PostgreSQL database). Writes go through both at once; versions stay
//! global and strictly increasing on every stream; every node's map, built
//! from the deltas of one replica, equals a fresh snapshot from the other;
//! presence is correct across replicas (a node held by a replica that is
//! killed goes offline within 30 s).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the test measures real delays of real controllers"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use weft_api_client::{Client, MapStream};
use weft_proto::api::{RegisterRequest, UpdateNodeRequest};
use weft_proto::netmap::{MapEvent, NetworkMap};

const IDLE: Duration = Duration::from_secs(10);
const FLAGS: &[&str] = &["--online-after-ms", "300", "--offline-after-ms", "1000"];

/// Starts a replica in `dir` on the database of `first` ([`replica_of`]).
fn second_replica(first: &Controller, dir: &Path) -> Controller {
    replica_of(first, dir, FLAGS)
}

/// A node's map as one stream built it, and the last version it saw.
struct Follower {
    stream: MapStream,
    map: NetworkMap,
    versions: Vec<u64>,
}

impl Follower {
    async fn open(c: &Client) -> Follower {
        let mut stream = c.map_stream(None, IDLE).await.expect("open the map stream");
        let MapEvent::Snapshot(map) = next_event(&mut stream).await else {
            panic!("the first event is not a snapshot");
        };
        Follower {
            stream,
            versions: vec![map.version],
            map,
        }
    }

    /// Applies what arrives until `quiet` passes without an event.
    async fn drain(&mut self, quiet: Duration) {
        while let Ok(ev) = tokio::time::timeout(quiet, self.stream.next_map()).await {
            match ev.expect("stream ended").expect("stream error") {
                MapEvent::Snapshot(m) => {
                    self.versions.push(m.version);
                    self.map = m;
                }
                MapEvent::Delta(d) => {
                    self.map.apply(&d).expect("delta applies");
                    self.versions.push(self.map.version);
                }
            }
        }
    }
}

async fn fresh_snapshot(c: &Client) -> NetworkMap {
    Follower::open(c).await.map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_take_writes_at_once_and_agree_on_every_map() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let token = network_with_token(&a.admin(), "lab", "100.64.0.0/24", 0).await;
    let b = second_replica(&a, d2.path());
    let replicas = [a.client(), b.client()];

    // 32 registrations at once, split between the replicas.
    let mut tasks = Vec::new();
    for i in 0..32usize {
        let (c, t) = (replicas[i % 2].clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let id = identity(0);
            (i, register(&c, &t, &id).await.expect("registration"))
        }));
    }
    let mut nodes = Vec::new();
    for t in tasks {
        nodes.push(t.await.unwrap());
    }
    let addresses: BTreeSet<String> = nodes
        .iter()
        .map(|(_, r)| r.addresses[0].ipv4.to_string())
        .collect();
    assert_eq!(addresses.len(), 32, "duplicate addresses: {addresses:?}");

    // Each node follows its map on the replica it did not register on.
    let mut followers = Vec::new();
    for (i, r) in &nodes {
        let c = replicas[(i + 1) % 2].with_bearer(&r.credential).unwrap();
        followers.push(Follower::open(&c).await);
    }
    // Writes through both replicas at once: renames and tags.
    let admins = [a.admin(), b.admin()];
    let mut edits = Vec::new();
    for (i, r) in nodes.iter().take(16) {
        let admin = admins[i % 2].clone();
        let key = r.node_key.to_string();
        let i = *i;
        edits.push(tokio::spawn(async move {
            let req = UpdateNodeRequest {
                name: Some(format!("renamed-{i}")),
                tags: Some(vec![format!("t{}", i % 3)]),
                ..UpdateNodeRequest::default()
            };
            admin.update_node(&key, &req).await.expect("update");
        }));
    }
    for e in edits {
        e.await.unwrap();
    }
    // Presence settles (every stream makes its node online), then the maps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for f in &mut followers {
        f.drain(Duration::from_millis(300)).await;
    }
    let va = replicas[0].health().await.unwrap().map_version;
    let vb = replicas[1].health().await.unwrap().map_version;
    assert_eq!(va, vb, "both replicas are at the same version");
    for ((i, r), f) in nodes.iter().zip(&mut followers) {
        f.drain(Duration::from_millis(200)).await;
        assert!(
            f.versions.windows(2).all(|w| w[0] < w[1]),
            "node {i}: versions not strictly increasing: {:?}",
            f.versions
        );
        assert!(f.map.version <= va, "node {i} is ahead of the replicas");
        let c = replicas[i % 2].with_bearer(&r.credential).unwrap();
        let mut fresh = fresh_snapshot(&c).await;
        // A snapshot carries the current version; a map built from deltas
        // the last version that changed it.
        assert!(fresh.version >= f.map.version);
        fresh.version = f.map.version;
        assert_eq!(
            serde_json::to_value(&f.map).unwrap(),
            serde_json::to_value(&fresh).unwrap(),
            "node {i}: the map built from deltas differs from a fresh snapshot"
        );
        assert_eq!(f.map.networks[0].peers.len(), 31);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_held_by_a_killed_replica_goes_offline_within_30_s() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let admin = a.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let mut b = second_replica(&a, d2.path());
    let on_a = register(&a.client(), &token, &identity(0)).await.unwrap();
    let on_b = register(&b.client(), &token, &identity(0)).await.unwrap();
    let _sa = Follower::open(&a.client().with_bearer(&on_a.credential).unwrap()).await;
    let _sb = Follower::open(&b.client().with_bearer(&on_b.credential).unwrap()).await;
    let online = |name: String| {
        let admin = admin.clone();
        async move { admin.show_node(&name).await.unwrap().online }
    };
    // Both online, each held by one replica (read on A).
    let until = Instant::now() + Duration::from_secs(10);
    while !(online(on_a.name.clone()).await && online(on_b.name.clone()).await) {
        assert!(Instant::now() < until, "not both online within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill9();
    let killed = Instant::now();
    while online(on_b.name.clone()).await {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the node held by the killed replica is still online after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("offline {:?} after the kill", killed.elapsed());
    assert!(
        online(on_a.name.clone()).await,
        "the node held by A stays online"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_moves_to_the_other_replica_and_resumes_by_delta() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let token = network_with_token(&a.admin(), "lab", "100.64.0.0/24", 0).await;
    let mut b = second_replica(&a, d2.path());
    let me = register(&b.client(), &token, &identity(0)).await.unwrap();
    let mut f = Follower::open(&b.client().with_bearer(&me.credential).unwrap()).await;
    // Writes acknowledged by B, seen by the follower on B.
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(register(&b.client(), &token, &identity(0)).await.unwrap());
    }
    f.drain(Duration::from_millis(1000)).await;
    let last = f.map.version;
    b.kill9();
    // Nothing acknowledged is lost: A has every node.
    let listed = a.admin().list_nodes(None).await.unwrap();
    for r in &acked {
        assert!(
            listed.nodes.iter().any(|n| n.node_key == r.node_key),
            "{} was acknowledged by the killed replica but A does not have it",
            r.name
        );
    }
    // The follower resumes on A from its last version: deltas, no snapshot.
    let c = a.client().with_bearer(&me.credential).unwrap();
    let mut s = c.map_stream(Some(last), IDLE).await.expect("resume on A");
    let newcomer = register(&a.client(), &token, &identity(0)).await.unwrap();
    let mut map = f.map.clone();
    let mut seen_newcomer = false;
    let until = Instant::now() + Duration::from_secs(10);
    while !seen_newcomer {
        assert!(
            Instant::now() < until,
            "the newcomer did not arrive by delta"
        );
        match next_event(&mut s).await {
            MapEvent::Snapshot(_) => panic!("resuming on the other replica sent a snapshot"),
            MapEvent::Delta(d) => {
                assert!(d.version > map.version, "versions go forward");
                map.apply(&d).expect("delta applies");
                seen_newcomer = map.networks[0]
                    .peers
                    .iter()
                    .any(|p| p.node_key == newcomer.node_key);
            }
        }
    }
    let fresh = fresh_snapshot(&c).await;
    // Presence may still move (the killed replica's streams); compare peers
    // by key and address.
    let peers = |m: &NetworkMap| -> BTreeSet<(String, String)> {
        m.networks[0]
            .peers
            .iter()
            .map(|p| (p.node_key.to_string(), format!("{:?}", p.ipv4)))
            .collect()
    };
    assert_eq!(peers(&map), peers(&fresh));
}

/// A registration `id` signs over `challenge` (base64), for `register_raw`.
fn signed(token: &str, id: &weft_identity::Identity, challenge: &str) -> RegisterRequest {
    serde_json::from_value(register_body(token, id, challenge)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_challenge_from_one_replica_registers_at_the_other_once() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let token = network_with_token(&a.admin(), "lab", "100.64.0.0/24", 0).await;
    let b = second_replica(&a, d2.path());
    let (ca, cb) = (a.client(), b.client());

    // Issued by A, used at B.
    let id = identity(0);
    let ch = ca.register_challenge().await.unwrap().challenge;
    let req = signed(&token, &id, &ch);
    let first = cb
        .register_raw(&req)
        .await
        .expect("B accepts A's challenge");
    // The same registration again, at either replica: refused.
    for (c, at) in [(&ca, "A"), (&cb, "B")] {
        let (status, code, _) = refused(c.register_raw(&req).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_challenge"),
            "a replay at {at}"
        );
    }
    // Two registrations on one challenge at both replicas at once: one wins.
    let ch = cb.register_challenge().await.unwrap().challenge;
    let id2 = identity(0);
    let req2 = signed(&token, &id2, &ch);
    let (ra, rb) = tokio::join!(ca.register_raw(&req2), cb.register_raw(&req2));
    assert_eq!(
        usize::from(ra.is_ok()) + usize::from(rb.is_ok()),
        1,
        "exactly one use: {ra:?} {rb:?}"
    );
    // A fresh challenge registers the same key again (a retry), rotating
    // its credential; the first credential is no longer valid.
    let ch = ca.register_challenge().await.unwrap().challenge;
    let again = cb.register_raw(&signed(&token, &id, &ch)).await.unwrap();
    assert_eq!(again.node_key, first.node_key);
    assert_ne!(again.credential, first.credential);
    // Both replicas restart: the key is the database's, so a challenge
    // issued before the restart still works after it.
    let ch = ca.register_challenge().await.unwrap().challenge;
    drop(b);
    let mut a = a;
    a.sigterm(Duration::from_secs(20));
    let a = Controller::start(d1.path(), FLAGS);
    let id3 = identity(0);
    a.client()
        .register_raw(&signed(&token, &id3, &ch))
        .await
        .expect("a challenge from before the restart");
}

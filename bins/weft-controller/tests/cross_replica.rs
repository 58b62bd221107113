//! Cross-replica behaviour on the real controller binary, two processes on
//! one database (SQLite, or PostgreSQL with `WEFT_TEST_DATABASE=postgres`):
//! - a task created through one replica reaches a node streaming from the
//!   other at once (the replayed change sends its `task` event), not at the
//!   node's next stream open;
//! - a replica that stalls past the heartbeat window has its presence
//!   withdrawn by the other (its nodes go offline), and announces its
//!   streams again when it wakes (they come back online);
//! - a relay's member stream gets the `reconnect` event when its replica
//!   drains (SIGTERM), and resumes on the other replica by delta.

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

use std::time::{Duration, Instant};

use common::*;
use weft_api_client::{Client, MapStream, MembersStream, MembersStreamEvent};
use weft_proto::netmap::{MapEvent, StreamEvent};
use weft_proto::relay_api::{CreateRelayRequest, MembersEvent};
use weft_proto::task::{Action, CreateTaskRequest, TaskKind, TaskTarget};

const FLAGS: &[&str] = &["--online-after-ms", "300", "--offline-after-ms", "1000"];

/// A node's map stream, its snapshot taken.
async fn open(c: &Client, idle: Duration) -> MapStream {
    let mut s = c.map_stream(None, idle).await.expect("open the map stream");
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Ok(StreamEvent::Map(MapEvent::Snapshot(_))))) => s,
        other => panic!("expected the snapshot first, got {other:?}"),
    }
}

/// Waits (at most `limit`) for the `task` event of `task_id` on `s`;
/// returns how long it took. Map events on the way are skipped.
async fn task_event(s: &mut MapStream, task_id: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(StreamEvent::Task(n)))) if n.task_id == task_id => {
                return started.elapsed();
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no task event for {task_id} within {limit:?}: {other:?}"),
        }
    }
}

fn netcheck(target: TaskTarget) -> CreateTaskRequest {
    CreateTaskRequest {
        target,
        kind: TaskKind::Action(Action::Netcheck),
        timeout_secs: Some(30),
        output_cap_bytes: None,
        deadline_secs: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_created_on_one_replica_reaches_a_stream_on_the_other_at_once() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let token = network_with_token(&a.admin(), "lab", "100.64.0.0/24", 0).await;
    let b = replica_of(&a, d2.path(), FLAGS);
    let on_b = register(&b.client(), &token, &identity(0)).await.unwrap();
    let on_a = register(&a.client(), &token, &identity(0)).await.unwrap();
    let node_b = b.client().with_bearer(&on_b.credential).unwrap();
    let node_a = a.client().with_bearer(&on_a.credential).unwrap();
    let idle = Duration::from_secs(30);
    let mut sb = open(&node_b, idle).await;
    let mut sa = open(&node_a, idle).await;

    // Created through A for both nodes: the node on A hears of it from A,
    // the node on B from B's replay of A's change, on the streams they hold.
    let view = a
        .admin()
        .create_task(&netcheck(TaskTarget::Network("lab".into())))
        .await
        .unwrap();
    let took = task_event(&mut sb, &view.id, Duration::from_secs(5)).await;
    eprintln!("task created on A reached the stream on B after {took:?}");
    task_event(&mut sa, &view.id, Duration::from_secs(5)).await;

    // The other way round, and the node leases it where it streams.
    let view = b
        .admin()
        .create_task(&netcheck(TaskTarget::Node(on_a.name.clone())))
        .await
        .unwrap();
    task_event(&mut sa, &view.id, Duration::from_secs(5)).await;
    let leased = node_a.lease_task(&view.id).await.unwrap();
    assert_eq!(leased.task_id, view.id);

    // A lease that expires is offered again on every replica: a short
    // task's lease, left to expire (timeout + 60 s) is too slow for a test,
    // so the model tests cover the sweep (model::remote tests).
}

/// Whether `node` is online, as replica `admin` sees it (`None`: that
/// replica does not know it yet).
async fn online(admin: &Client, node: &str) -> Option<bool> {
    admin.show_node(node).await.ok().map(|n| n.online)
}

/// Waits (at most `limit`) until `node`'s presence on `admin` is `want`.
async fn until_online(admin: &Client, node: &str, want: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    while online(admin, node).await != Some(want) {
        assert!(
            started.elapsed() < limit,
            "{node} not {} within {limit:?}",
            if want { "online" } else { "offline" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Sends SIGCONT on drop, so a failing test leaves no stopped process.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_stalled_announces_its_streams_again_when_it_wakes() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Controller::start(d1.path(), FLAGS);
    let admin = a.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let b = replica_of(&a, d2.path(), FLAGS);
    let me = register(&b.client(), &token, &identity(0)).await.unwrap();
    let key = me.node_key.to_string();
    // The stream outlives the stall: no keepalive comes while B is stopped.
    let mut s = open(
        &b.client().with_bearer(&me.credential).unwrap(),
        Duration::from_secs(120),
    )
    .await;
    until_online(&admin, &key, true, Duration::from_secs(10)).await;
    // A has read B's heartbeat (every 5 s), so it knows B was alive.
    tokio::time::sleep(Duration::from_secs(6)).await;

    signal(b.pid(), rustix::process::Signal::STOP);
    let stopped = Stopped(b.pid());
    let gone = until_online(&admin, &key, false, Duration::from_secs(35)).await;
    eprintln!("withdrawn by A {gone:?} after B stopped");
    // Not before its heartbeat (every 5 s) went stale (15 s): 10-20 s.
    assert!(
        gone >= Duration::from_secs(5),
        "withdrawn too early: {gone:?}"
    );

    drop(stopped);
    let back = until_online(&admin, &key, true, Duration::from_secs(10)).await;
    eprintln!("online again {back:?} after B woke");
    assert!(
        b.log()
            .contains("another replica withdrew this replica's presence"),
        "B says why it announces again"
    );
    // The stream B held through the stall still works: a change reaches it.
    let peer = register(&a.client(), &token, &identity(0)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(StreamEvent::Map(MapEvent::Delta(d)))))
                if serde_json::to_string(&d).unwrap().contains(&peer.name) =>
            {
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the stream B held did not get the new peer: {other:?}"),
        }
    }
    // And B's view agrees with A's.
    assert_eq!(online(&b.admin(), &key).await, Some(true));
}

async fn next_members(s: &mut MembersStream) -> MembersStreamEvent {
    tokio::time::timeout(Duration::from_secs(10), s.next_event())
        .await
        .expect("no member event within 10 s")
        .expect("stream ended")
        .expect("stream error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_told_to_reconnect_resumes_on_the_other_replica_by_delta() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut a = Controller::start(d1.path(), &[FLAGS, &["--drain-spread-secs", "2"]].concat());
    let token = network_with_token(&a.admin(), "lab", "100.64.0.0/24", 0).await;
    let b = replica_of(&a, d2.path(), FLAGS);
    let first = register(&a.client(), &token, &identity(0)).await.unwrap();
    let created = a
        .admin()
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "fra1".into(),
            url: "https://relay.example.net".into(),
        })
        .await
        .unwrap();
    let on_a = a.client().with_bearer(&created.token).unwrap();
    let mut ms = on_a
        .relay_members_stream(Duration::from_secs(10))
        .await
        .unwrap();
    let MembersStreamEvent::Members(MembersEvent::Snapshot(s)) = next_members(&mut ms).await else {
        panic!("the first member event must be a snapshot");
    };
    assert_eq!(s.members, vec![first.node_key]);
    // A change through B reaches the relay on A (B's change replayed).
    let second = register(&b.client(), &token, &identity(0)).await.unwrap();
    let MembersStreamEvent::Members(MembersEvent::Delta(d)) = next_members(&mut ms).await else {
        panic!("expected a delta");
    };
    assert_eq!(d.added, vec![second.node_key]);

    // A drains: the relay is told to reconnect elsewhere, within the spread.
    let stopping = std::thread::spawn(move || {
        let status = a.sigterm(Duration::from_secs(15));
        (status, a.log())
    });
    let MembersStreamEvent::Reconnect(notice) = next_members(&mut ms).await else {
        panic!("expected the reconnect notice");
    };
    assert_eq!(notice.within_ms, 2000);
    let last = ms.last_event_id().expect("a version to resume from");
    drop(ms);
    let (status, log) = stopping.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(log.contains("relay_streams=1"), "{log}");

    // Meanwhile a node joins through B; the relay resumes there by delta.
    let third = register(&b.client(), &token, &identity(0)).await.unwrap();
    let on_b = b.client().with_bearer(&created.token).unwrap();
    let mut ms = on_b
        .relay_members_stream_from(Some(last), Duration::from_secs(10))
        .await
        .unwrap();
    match next_members(&mut ms).await {
        MembersStreamEvent::Members(MembersEvent::Delta(d)) => {
            assert!(d.version > last);
            assert_eq!(d.added, vec![third.node_key], "only what it missed");
        }
        other => panic!("resumed with {other:?}, not a delta"),
    }
    // A version this replica never reached (within 2 s) gets a snapshot.
    let now = ms.last_event_id().unwrap();
    drop(ms);
    let mut ms = on_b
        .relay_members_stream_from(Some(now + 1000), Duration::from_secs(10))
        .await
        .unwrap();
    let MembersStreamEvent::Members(MembersEvent::Snapshot(s)) = next_members(&mut ms).await else {
        panic!("a version the replica never reached gets a snapshot");
    };
    assert_eq!(s.members.len(), 3);
}

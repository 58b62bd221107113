//! Controller load benchmark (not a timed test): simulated agents on loopback.
//!
//! Registers N nodes into one full-mesh network (PoW difficulty `--pow-bits`,
//! 0 by default, so 10,000 identities cost nothing), opens N map streams at
//! once (light agents: one task and one plain-HTTP connection each, see
//! `fanout/agent.rs`), then applies changes that touch every node (a join, a
//! rename, a policy edit every node's compiled policy picks up) and measures
//! how long until every stream saw each one. With `--restart` it then restarts
//! the controllers (SIGTERM, start again on the same data directory and port)
//! and measures how long until every agent's stream is open again, and the
//! policy edit once more. Prints registrations/s, fan-out p50/p99/max, the
//! controllers' RSS and CPU time, and the command line.
//!
//! Several replicas (`--replicas N`, see `fanout/fleet.rs`) share one
//! database: `--database postgres://USER@HOST/DB` (an empty database; the
//! password from `PGPASSWORD` or `WEFT_DATABASE_PASSWORD`), `--database
//! throwaway` (a PostgreSQL cluster the bench starts with `initdb` in a
//! temporary directory and removes; needs the server binaries, e.g. Debian's
//! `postgresql` package), or SQLite when absent (the replicas share the first
//! one's file). Registrations and agents are spread round-robin over the
//! replicas; each agent knows every replica's address and fails over like
//! weftd. With `--restart` and several replicas, one replica is also
//! restarted alone (its agents move to the others by delta). The join goes
//! through the last replica, the rename and the first policy edit through the
//! first, so the fan-out crosses replicas. `--compare-sqlite` then registers N
//! nodes on one SQLite controller, for registrations/s on both in one run.
//!
//! ```text
//! cargo bench -p weft-controller-bin --bench fanout -- [--nodes 1000] [--restart] [--pow-bits 0]
//!     [--replicas 2 --database throwaway|postgres://…] [--compare-sqlite]
//! ```
#![expect(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark reports and aborts"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use tokio::sync::{Semaphore, mpsc};
use weft_api_client::{Client, ClientConfig};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::api::{CreateNetworkRequest, CreateTokenRequest, UpdateNodeRequest};

#[path = "fanout/agent.rs"]
mod agent;
#[path = "fanout/fleet.rs"]
mod fleet;
#[path = "fanout/measure.rs"]
mod measure;
use agent::{Report, Shared};
use fleet::{Database, Fleet};
use measure::{Watch, ms, percentile, report, settle};

fn identity(bits: u32) -> Identity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = Identity::from_parts(&seed, ProofOfWork { nonce: 0 }).node_key();
    let nonce = (0u64..)
        .find(|n| ProofOfWork { nonce: *n }.achieved(&key) >= bits)
        .unwrap();
    Identity::from_parts(&seed, ProofOfWork { nonce })
}

fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

fn client(url: &str) -> Client {
    Client::new(ClientConfig::new(url)).unwrap()
}

struct Args {
    n: usize,
    restart: bool,
    pow_bits: u32,
    replicas: usize,
    database: Option<String>,
    compare_sqlite: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let value = |name: &str| text(name).and_then(|v| v.parse().ok());
    let a = Args {
        n: value("--nodes").unwrap_or(1000),
        restart: args.iter().any(|a| a == "--restart"),
        pow_bits: value("--pow-bits").map_or(0, |v: usize| v as u32),
        replicas: value("--replicas").unwrap_or(1).max(1),
        database: text("--database"),
        compare_sqlite: args.iter().any(|a| a == "--compare-sqlite"),
    };
    agent::self_check();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

/// Makes the bench network and a join token (through `admin`).
async fn setup(admin: &Client, pow_bits: u32) -> String {
    admin
        .create_network(&CreateNetworkRequest {
            api_version: None,
            name: "bench".into(),
            ipv4_cidr: "100.64.0.0/16".into(),
            ipv6_prefix: Some("fd7a:115c:a1e0::/48".into()),
            dns_domain: None,
            pow_difficulty: Some(pow_bits),
        })
        .await
        .unwrap();
    admin
        .create_token(&CreateTokenRequest {
            api_version: None,
            networks: vec!["bench".into()],
            tags: vec!["bench".into()],
            expires_in_secs: 3600,
            max_uses: None,
            description: None,
        })
        .await
        .unwrap()
        .token
}

/// Registers `ids`, 64 at a time, node `i` through replica `i % replicas`;
/// prints registrations/s and returns each node's credential, in order.
async fn register_all(fleet: &Fleet, token: &str, ids: &[Arc<Identity>]) -> Vec<String> {
    let n = ids.len();
    let regs: Vec<Client> = fleet.replicas.iter().map(|r| client(&r.url)).collect();
    let sem = Arc::new(Semaphore::new(64));
    let creds: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (_, _, cpu0) = fleet.usage();
    let db0 = fleet.database_cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (sem, token, id, reg, creds) = (
            sem.clone(),
            token.to_owned(),
            id.clone(),
            regs[i % regs.len()].clone(),
            creds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let r = reg
                .register(
                    &token,
                    id.node_key(),
                    id.pow().nonce,
                    |ctx, m| id.sign(ctx, m),
                    None,
                    Some(format!("agent-{i}")),
                )
                .await
                .unwrap();
            creds.lock().unwrap().push((i, r.credential));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (rss, _, cpu1) = fleet.usage();
    let db = match (db0, fleet.database_cpu()) {
        (Some(a), Some(b)) => format!("; PostgreSQL CPU {:.2} s", b - a),
        _ => String::new(),
    };
    println!(
        "registered {n} nodes through {} replica(s) in {secs:.2} s: {:.0} registrations/s (controller CPU {:.2} s, {:.2} ms per join; RSS {rss:.1} MiB{db})",
        fleet.replicas.len(),
        n as f64 / secs,
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e3 / n as f64
    );
    let mut creds = std::mem::take(&mut *creds.lock().unwrap());
    creds.sort();
    creds.into_iter().map(|(_, c)| c).collect()
}

/// Says so when a measured request failed (a controller too busy to answer
/// is a result, not a reason to stop the run); true when it succeeded.
fn failed<T>(what: &str, r: Result<T, weft_api_client::ClientError>, t: Instant) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            println!(
                "{what} FAILED after {:.1} s: {e}; not measured",
                t.elapsed().as_secs_f64()
            );
            false
        }
    }
}

fn admins(fleet: &Fleet) -> Vec<Client> {
    fleet
        .replicas
        .iter()
        .map(|r| client(&r.url).with_bearer(&fleet.admin_token).unwrap())
        .collect()
}

async fn run(a: Args) {
    let n = a.n;
    let shown: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!(
        "command: cargo bench -p weft-controller-bin --bench fanout -- {}",
        shown.join(" ")
    );
    let db = Database::parse(a.database.as_deref());
    let mut fleet = Fleet::start(a.replicas, &db);
    let r = fleet.replicas.len();
    let urls: Vec<String> = fleet
        .replicas
        .iter()
        .map(|x| format!("{} (pid {})", x.url, x.pid()))
        .collect();
    println!(
        "{r} replica(s) on {}: {}; {n} simulated agents, plain HTTP on loopback",
        db.describe(),
        urls.join(", ")
    );
    let admin = admins(&fleet);
    let token = setup(&admin[0], a.pow_bits).await;
    let ids: Vec<Arc<Identity>> = (0..n + 1).map(|_| Arc::new(identity(a.pow_bits))).collect();

    // 1. Registrations.
    let creds = register_all(&fleet, &token, &ids[..n]).await;

    // 2. Every agent opens its stream at once, on replica `i % r` first.
    let (tx, rx) = mpsc::unbounded_channel::<Report>();
    let shared = Arc::new(Shared {
        addrs: fleet
            .replicas
            .iter()
            .map(|x| x.listen.parse().unwrap())
            .collect(),
        armed: std::sync::RwLock::new(None),
        tx,
    });
    let mut watch = Watch {
        rx,
        shared: shared.clone(),
        on: vec![None; n],
    };
    let everyone: Vec<usize> = (0..n).collect();
    let t1 = Instant::now();
    let agents: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(i, cred)| tokio::spawn(agent::run(i, cred, shared.clone())))
        .collect();
    let o = watch.opened(&everyone, t1, Duration::from_secs(180)).await;
    println!(
        "{}/{n} streams open with their snapshots ({} snapshots, {} refusals) after {:.2} s; p50 {:.0} ms, p99 {:.0} ms; {}",
        o.lat.len(),
        o.snapshots,
        o.refused,
        t1.elapsed().as_secs_f64(),
        ms(percentile(&o.lat, 0.5)),
        ms(percentile(&o.lat, 0.99)),
        watch.spread(r),
    );
    settle(&fleet, "the presence changes of the streams opening").await;
    let (rss_idle, _, _) = fleet.usage();

    // 3. One change that touches every node: a new node joins (through the
    //    last replica).
    let newcomer = ids[n].clone();
    let key = newcomer.node_key().to_string();
    watch.arm(key.as_bytes());
    let t2 = Instant::now();
    let joined = client(&fleet.replicas[r - 1].url)
        .register(
            &token,
            newcomer.node_key(),
            newcomer.pow().nonce,
            |ctx, m| newcomer.sign(ctx, m),
            None,
            None,
        )
        .await;
    if failed("the join", joined, t2) {
        let join = watch.collect(key.as_bytes(), n, t2).await;
        report("join", &join, n);
    }

    // 4. Another: rename the newcomer (an admin change, through the first).
    watch.arm(b"renamed-newcomer");
    let t3 = Instant::now();
    let renamed = admin[0]
        .update_node(
            &key,
            &UpdateNodeRequest {
                name: Some("renamed-newcomer".into()),
                ..Default::default()
            },
        )
        .await;
    if failed("the rename", renamed, t3) {
        let rename = watch.collect(b"renamed-newcomer", n, t3).await;
        report("rename", &rename, n);
    }

    // 5. A policy edit every node's compiled policy picks up (a new rule
    //    among all members): every replica recompiles everyone.
    watch
        .policy_edit(&admin[0], &fleet, n, "bench-policy-edit")
        .await;
    let (rss_end, hwm, cpu_end) = fleet.usage();
    println!(
        "controller RSS: {rss_idle:.1} MiB holding {n} streams, {rss_end:.1} MiB at the end, peak {hwm:.1} MiB; CPU {cpu_end:.2} s total ({})",
        fleet.each()
    );
    settled_rss(&fleet, "the edits").await;

    if a.restart {
        restart_all(&mut fleet, &mut watch, n).await;
        if r > 1 {
            restart_one(&mut fleet, &mut watch, n, &key).await;
        }
    }
    for t in agents {
        t.abort();
    }
    drop(fleet);

    if a.compare_sqlite {
        let sqlite = Fleet::start(1, &Database::Sqlite);
        let token = setup(&admins(&sqlite)[0], a.pow_bits).await;
        let ids: Vec<Arc<Identity>> = (0..n).map(|_| Arc::new(identity(a.pow_bits))).collect();
        print!("for comparison, one SQLite controller: ");
        register_all(&sqlite, &token, &ids).await;
    }
}

/// Every replica restarts at once (SIGTERM to all, then start all): every
/// agent reconnects.
async fn restart_all(fleet: &mut Fleet, watch: &mut Watch, n: usize) {
    let r = fleet.replicas.len();
    let everyone: Vec<usize> = (0..n).collect();
    let db0 = fleet.database_cpu();
    let t = Instant::now();
    fleet.stop_all();
    let stopped = t.elapsed();
    for i in 0..r {
        fleet.restart(i);
    }
    let up = t.elapsed();
    let o = watch.opened(&everyone, t, Duration::from_secs(180)).await;
    let within = o
        .lat
        .iter()
        .filter(|d| **d <= Duration::from_secs(60))
        .count();
    println!(
        "restart of every replica: stopped in {:.2} s, serving again {:.2} s after SIGTERM; {}/{n} streams open again ({within} within 60 s; {} snapshots, {} refusals), last {:.2} s after SIGTERM; p50 {:.0} ms, p99 {:.0} ms; {}",
        stopped.as_secs_f64(),
        up.as_secs_f64(),
        o.lat.len(),
        o.snapshots,
        o.refused,
        o.lat.last().copied().unwrap_or_default().as_secs_f64(),
        ms(percentile(&o.lat, 0.5)),
        ms(percentile(&o.lat, 0.99)),
        watch.spread(r),
    );
    settle(fleet, "the reconnect").await;
    if let (Some(a), Some(b)) = (db0, fleet.database_cpu()) {
        println!("PostgreSQL CPU over the restart: {:.2} s", b - a);
    }
    let admin = admins(fleet);
    watch
        .policy_edit(&admin[0], fleet, n, "after-restart-edit")
        .await;
    let (rss, hwm, cpu) = fleet.usage();
    println!(
        "after the restart: controller RSS {rss:.1} MiB, peak {hwm:.1} MiB, CPU {cpu:.2} s ({})",
        fleet.each()
    );
    settled_rss(fleet, "the restart's edit").await;
}

/// The RSS once the controllers have been idle a while (they return the
/// memory a storm of encoding freed after it calms down, see
/// `weft_controller::memory`).
async fn settled_rss(fleet: &Fleet, after: &str) {
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (rss, _, _) = fleet.usage();
    println!(
        "controller RSS 12 s after {after}, idle: {rss:.1} MiB ({})",
        fleet.each()
    );
}

/// The last replica restarts alone: its agents move to the others (by
/// delta), then a policy edit goes through it once it is back. A rename
/// right after its exit gives every moved stream a delta to resume with (a
/// stream resuming at the current version gets no event to time).
async fn restart_one(fleet: &mut Fleet, watch: &mut Watch, n: usize, key: &str) {
    let r = fleet.replicas.len();
    let last = r - 1;
    let moved: Vec<usize> = (0..n).filter(|a| watch.on[*a] == Some(last)).collect();
    let t = Instant::now();
    fleet.stop(last);
    let stopped = t.elapsed();
    watch.arm(b"moved-newcomer");
    let renamed = admins(fleet)[0]
        .update_node(
            key,
            &UpdateNodeRequest {
                name: Some("moved-newcomer".into()),
                ..Default::default()
            },
        )
        .await;
    failed("the rename after the stop", renamed, t);
    let o = watch.opened(&moved, t, Duration::from_secs(120)).await;
    println!(
        "restart of replica {last} alone: stopped in {:.2} s; {}/{} of its streams open again elsewhere ({} snapshots, {} refusals), last {:.2} s after SIGTERM; p50 {:.0} ms, p99 {:.0} ms; {}",
        stopped.as_secs_f64(),
        o.lat.len(),
        moved.len(),
        o.snapshots,
        o.refused,
        o.lat.last().copied().unwrap_or_default().as_secs_f64(),
        ms(percentile(&o.lat, 0.5)),
        ms(percentile(&o.lat, 0.99)),
        watch.spread(r),
    );
    let t = Instant::now();
    fleet.restart(last);
    println!(
        "replica {last} serving again {:.2} s after its start",
        t.elapsed().as_secs_f64()
    );
    settle(fleet, "the move").await;
    let admin = admins(fleet);
    watch
        .policy_edit(&admin[last], fleet, n, "after-one-restart-edit")
        .await;
}

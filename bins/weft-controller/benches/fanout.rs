//! Controller load benchmark (not a timed test): simulated agents on loopback.
//!
//! Registers N nodes into one full-mesh network (PoW difficulty `--pow-bits`,
//! 0 by default, so 10,000 identities cost nothing), opens N map streams at
//! once (light agents: one task and one plain-HTTP connection each, see
//! `fanout/agent.rs`), then applies changes that touch every node (a join, a
//! rename, a policy edit every node's compiled policy picks up) and measures
//! how long until every stream saw each one. With `--restart` it then restarts
//! the controller (SIGTERM, start again on the same data directory and port)
//! and measures how long until every agent's stream is open again, and the
//! policy edit once more. Prints registrations/s, fan-out p50/p99/max, the
//! controller's RSS and CPU time, and the command line.
//!
//! ```text
//! cargo bench -p weft-controller-bin --bench fanout -- [--nodes 1000] [--restart] [--pow-bits 0]
//! ```
#![expect(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark reports and aborts"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use tokio::sync::{Semaphore, mpsc};
use weft_api_client::{Client, ClientConfig};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::api::{
    CreateNetworkRequest, CreateTokenRequest, SetPolicyRequest, UpdateNodeRequest,
};

#[path = "fanout/agent.rs"]
mod agent;
use agent::{Report, Shared};

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

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

/// (RSS MiB, peak RSS MiB, CPU seconds) of a process.
fn usage(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")".
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0, ticks / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts the controller on `dir` (plain HTTP, `listen`); returns it, its URL
/// and the admin token once it serves.
fn start(dir: &Path, listen: &str) -> (Child, String, String) {
    let _ = std::fs::remove_file(dir.join("controller.url"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("controller.log"))
        .unwrap();
    let out = std::fs::File::create(dir.join("stdout.txt")).unwrap();
    let args = [
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        listen,
        "--plain-http",
        "--log",
        "warn",
        // Presence is debounced (5 s by default): 1 s keeps the presence storm
        // inside the settle time after the streams open.
        "--online-after-ms",
        "1000",
        // Every simulated agent registers from 127.0.0.1.
        "--register-burst",
        "1000000",
        "--register-per-minute",
        "100000000",
    ];
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    for _ in 0..30_000 {
        if let Ok(url) = std::fs::read_to_string(dir.join("controller.url")) {
            let token = std::fs::read_to_string(dir.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned();
            return (child, url.trim().to_owned(), token);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "controller exited at start: {status}; see {}/controller.log",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("controller did not start");
}

fn client(url: &str) -> Client {
    Client::new(ClientConfig::new(url)).unwrap()
}

/// Waits until `n` agents reported a stream opened at or after `since`;
/// returns the latencies from `t0`, the snapshot count and the refusals.
async fn opened(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    n: usize,
    since: Instant,
    t0: Instant,
    limit: Duration,
) -> (Vec<Duration>, usize, usize) {
    let mut seen = vec![false; n];
    let (mut lat, mut snapshots, mut refused) = (Vec::with_capacity(n), 0, 0);
    let deadline = Instant::now() + limit;
    while lat.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Report::Opened {
                agent,
                snapshot,
                at,
            })) if at >= since && !seen[agent] => {
                seen[agent] = true;
                snapshots += usize::from(snapshot);
                lat.push(at - t0);
            }
            Ok(Some(Report::Refused { status })) => {
                if refused == 0 {
                    println!("first refusal of a stream open: HTTP {status}");
                }
                refused += 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    lat.sort();
    (lat, snapshots, refused)
}

/// Waits until `n` deltas containing `marker` arrived (60 s at most); returns
/// the latencies from `t0`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    marker: &[u8],
    n: usize,
    t0: Instant,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lat.len() < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Report::Hit { marker: m, at })) if &*m == marker => lat.push(at - t0),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    lat.sort();
    lat
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, lat: &[Duration], n: usize) {
    println!(
        "fan-out ({name}): {}/{} streams saw it; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        n,
        ms(percentile(lat, 0.50)),
        ms(percentile(lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

struct Args {
    n: usize,
    restart: bool,
    pow_bits: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let a = Args {
        n: value("--nodes").unwrap_or(1000),
        restart: args.iter().any(|a| a == "--restart"),
        pow_bits: value("--pow-bits").map_or(0, |v: usize| v as u32),
    };
    agent::self_check();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let n = a.n;
    println!(
        "command: cargo bench -p weft-controller-bin --bench fanout -- --nodes {n} --pow-bits {}{}",
        a.pow_bits,
        if a.restart { " --restart" } else { "" }
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, admin_token) = start(dir.path(), "127.0.0.1:0");
    let pid = child.id();
    let listen = url.trim_start_matches("http://").to_owned();
    println!("controller {url} (pid {pid}), {n} simulated agents, plain HTTP on loopback");
    let admin = client(&url).with_bearer(&admin_token).unwrap();
    admin
        .create_network(&CreateNetworkRequest {
            api_version: None,
            name: "bench".into(),
            ipv4_cidr: "100.64.0.0/16".into(),
            ipv6_prefix: Some("fd7a:115c:a1e0::/48".into()),
            dns_domain: None,
            pow_difficulty: Some(a.pow_bits),
        })
        .await
        .unwrap();
    let token = admin
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
        .token;
    let ids: Vec<Arc<Identity>> = (0..n + 1).map(|_| Arc::new(identity(a.pow_bits))).collect();

    // 1. Registrations: 64 at a time over one client's connection pool.
    let sem = Arc::new(Semaphore::new(64));
    let creds: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (_, _, cpu0) = usage(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let reg = client(&url);
    for (i, id) in ids.iter().take(n).enumerate() {
        let (sem, token, id, reg, creds) = (
            sem.clone(),
            token.clone(),
            id.clone(),
            reg.clone(),
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
    let reg_secs = t0.elapsed().as_secs_f64();
    let (rss, _, cpu1) = usage(pid);
    println!(
        "registered {n} nodes in {reg_secs:.2} s: {:.0} registrations/s (controller CPU {:.2} s, {:.2} ms per join; RSS {rss:.1} MiB)",
        n as f64 / reg_secs,
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e3 / n as f64
    );

    // 2. Every agent opens its stream at once.
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let shared = Arc::new(Shared {
        addr: listen.parse().unwrap(),
        armed: std::sync::RwLock::new(None),
        tx,
    });
    let mut creds = creds.lock().unwrap().clone();
    creds.sort();
    let t1 = Instant::now();
    let agents: Vec<_> = creds
        .into_iter()
        .map(|(i, cred)| tokio::spawn(agent::run(i, cred, shared.clone())))
        .collect();
    let (lat, snaps, refused) = opened(&mut rx, n, t1, t1, Duration::from_secs(180)).await;
    println!(
        "{}/{n} streams open with their snapshots ({snaps} snapshots, {refused} refusals) after {:.2} s; p50 {:.0} ms, p99 {:.0} ms",
        lat.len(),
        t1.elapsed().as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );
    settle(pid, "the presence changes of the streams opening").await;
    let (rss_idle, _, _) = usage(pid);

    // 3. One change that touches every node: a new node joins.
    let arm = |m: &[u8]| {
        let m: Arc<[u8]> = Arc::from(m);
        *shared.armed.write().unwrap() = Some(m.clone());
        m
    };
    let newcomer = ids[n].clone();
    let key = newcomer.node_key().to_string();
    arm(key.as_bytes());
    let t2 = Instant::now();
    reg.register(
        &token,
        newcomer.node_key(),
        newcomer.pow().nonce,
        |ctx, m| newcomer.sign(ctx, m),
        None,
        None,
    )
    .await
    .unwrap();
    let join = collect(&mut rx, key.as_bytes(), n, t2).await;
    report("join", &join, n);

    // 4. Another: rename the newcomer (an admin change).
    arm(b"renamed-newcomer");
    let t3 = Instant::now();
    admin
        .update_node(
            &key,
            &UpdateNodeRequest {
                name: Some("renamed-newcomer".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rename = collect(&mut rx, b"renamed-newcomer", n, t3).await;
    report("rename", &rename, n);

    // 5. A policy edit every node's compiled policy picks up (a new rule among
    //    all members): the controller recompiles everyone.
    policy_edit(&admin, &mut rx, &arm, pid, n, "bench-policy-edit").await;
    let (rss_end, hwm, cpu_end) = usage(pid);
    println!(
        "controller RSS: {rss_idle:.1} MiB holding {n} streams, {rss_end:.1} MiB at the end, peak {hwm:.1} MiB; CPU: {:.2} s registering, {cpu_end:.2} s total",
        cpu1 - cpu0,
    );

    // 6. A controller restart: every agent reconnects at once.
    if a.restart {
        let t5 = Instant::now();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = child.wait();
        let stopped = t5.elapsed();
        let (c2, url2, _) = start(dir.path(), &listen);
        child = c2;
        let pid = child.id();
        let up = t5.elapsed();
        let (lat, snaps, refused) = opened(&mut rx, n, t5, t5, Duration::from_secs(180)).await;
        let within = lat
            .iter()
            .filter(|d| **d <= Duration::from_secs(60))
            .count();
        println!(
            "restart: stopped in {:.2} s, serving again ({url2}) {:.2} s after SIGTERM; {}/{n} streams open again ({within} within 60 s; {snaps} snapshots, {refused} refusals), last {:.2} s after SIGTERM; p50 {:.0} ms, p99 {:.0} ms",
            stopped.as_secs_f64(),
            up.as_secs_f64(),
            lat.len(),
            lat.last().copied().unwrap_or_default().as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
        );
        settle(pid, "the reconnect").await;
        let admin = client(&url2).with_bearer(&admin_token).unwrap();
        policy_edit(&admin, &mut rx, &arm, pid, n, "after-restart-edit").await;
        let (rss, hwm, cpu) = usage(pid);
        println!(
            "after the restart: controller RSS {rss:.1} MiB, peak {hwm:.1} MiB, CPU {cpu:.2} s"
        );
    }
    for t in agents {
        t.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (3 s at least, 300 s at most) until the controller is idle (under
/// 5 % of a core over a second) and says how long that took.
async fn settle(pid: u32, what: &str) {
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cpu = usage(pid).2;
    while t.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = usage(pid).2;
        if now - cpu < 0.05 {
            break;
        }
        cpu = now;
    }
    println!(
        "controller idle {:.1} s after {what} (CPU {cpu:.2} s so far)",
        t.elapsed().as_secs_f64()
    );
}

/// Adds a rule among all members named `marker` and measures until `n`
/// streams saw it.
async fn policy_edit(
    admin: &Client,
    rx: &mut mpsc::UnboundedReceiver<Report>,
    arm: &impl Fn(&[u8]) -> Arc<[u8]>,
    pid: u32,
    n: usize,
    marker: &str,
) {
    arm(marker.as_bytes());
    let mut text = admin.get_policy().await.unwrap().text;
    text.push_str(&format!(
        "\n[[rule]]\nname = \"{marker}\"\naction = \"allow\"\nfrom = \"tag:bench\"\nto = \"tag:bench\"\nproto = \"tcp\"\nports = [443]\n"
    ));
    let (_, _, cpu_before) = usage(pid);
    let t = Instant::now();
    admin
        .set_policy(&SetPolicyRequest {
            api_version: None,
            text,
            expect_version: None,
        })
        .await
        .unwrap();
    let answered = t.elapsed();
    let edit = collect(rx, marker.as_bytes(), n, t).await;
    report(&format!("policy edit {marker}"), &edit, n);
    let (_, _, cpu_after) = usage(pid);
    println!(
        "policy edit: answered after {:.1} ms; controller CPU {:.2} s (recompile of every node and the fan-out)",
        ms(answered),
        cpu_after - cpu_before
    );
}

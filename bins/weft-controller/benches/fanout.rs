//! Controller load benchmark (not a timed test): simulated agents on loopback.
//!
//! Registers N nodes into one network (each agent with its own TLS
//! connection), holds N map streams, then applies changes that touch every
//! node (a join, a rename, then a policy edit that every node's compiled
//! policy picks up) and measures how long until every stream saw each one. Prints registrations/s, fan-out p50/p99/max, the controller's RSS
//! and CPU time.
//!
//! ```text
//! cargo bench -p weft-controller-bin --bench fanout -- [--nodes 1000] [--plain-http]
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
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::api::{
    CreateNetworkRequest, CreateTokenRequest, SetPolicyRequest, UpdateNodeRequest,
};
use weft_proto::netmap::{MapChange, MapEvent};

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

fn start(dir: &Path, plain: bool) -> (Child, String, Option<[u8; 32]>, String) {
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let out = std::fs::File::create(dir.join("stdout.txt")).unwrap();
    let mut args = vec![
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log",
        "warn",
        // Presence is debounced (5 s by default): 1 s keeps the presence storm
        // inside the settle time after the streams open, as before.
        "--online-after-ms",
        "1000",
    ];
    if plain {
        args.push("--plain-http");
    }
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if let Ok(url) = std::fs::read_to_string(dir.join("controller.url")) {
            let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
            let fp = stdout
                .lines()
                .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
                .map(|f| parse_fingerprint(f).unwrap());
            let token = std::fs::read_to_string(dir.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned();
            return (child, url.trim().to_owned(), fp, token);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("controller did not start");
}

fn client(url: &str, fp: Option<[u8; 32]>) -> Client {
    let trust = fp.map_or(Trust::SystemRoots, Trust::Fingerprint);
    Client::new(ClientConfig {
        trust,
        ..ClientConfig::new(url)
    })
    .unwrap()
}

/// Waits until `n` streams reported `marker`; returns the latencies from `t0`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    marker: &str,
    n: usize,
    t0: Instant,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lat.len() < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((m, at))) if m == marker => lat.push(at - t0),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    lat.sort();
    lat
}

fn report(name: &str, lat: &[Duration], n: usize) {
    println!(
        "fan-out ({name}): {}/{} streams saw it; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        n,
        percentile(lat, 0.50).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let plain = args.iter().any(|a| a == "--plain-http");
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, plain));
}

async fn run(n: usize, plain: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, fp, admin_token) = start(dir.path(), plain);
    let pid = child.id();
    println!(
        "controller {url} (pid {pid}), {n} simulated agents, {}",
        if plain { "HTTP" } else { "HTTPS" }
    );
    let admin = client(&url, fp).with_bearer(&admin_token).unwrap();
    admin
        .create_network(&CreateNetworkRequest {
            api_version: None,
            name: "bench".into(),
            ipv4_cidr: "100.64.0.0/16".into(),
            ipv6_prefix: Some("fd7a:115c:a1e0::/48".into()),
            dns_domain: None,
            pow_difficulty: Some(8),
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
    let ids: Vec<Arc<Identity>> = (0..n + 1).map(|_| Arc::new(identity(8))).collect();

    // 1. Registrations: 64 agents at a time, each its own client (TLS session).
    let sem = Arc::new(Semaphore::new(64));
    let creds: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (_, _, cpu0) = usage(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().take(n).enumerate() {
        let (sem, token, id, url, creds) = (
            sem.clone(),
            token.clone(),
            id.clone(),
            url.clone(),
            creds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let c = client(&url, fp);
            let r = c
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
        "registered {n} nodes in {reg_secs:.2} s: {:.0} registrations/s (controller CPU {:.2} s, RSS {rss:.1} MiB)",
        n as f64 / reg_secs,
        cpu1 - cpu0
    );

    // 2. Hold N streams; wait for every snapshot, then for the presence storm to settle.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let armed: Arc<std::sync::RwLock<Option<String>>> = Arc::default();
    let creds = creds.lock().unwrap().clone();
    let t1 = Instant::now();
    for (_, cred) in creds {
        let (tx, ready_tx, armed, url) = (tx.clone(), ready_tx.clone(), armed.clone(), url.clone());
        tokio::spawn(async move {
            let c = client(&url, fp).with_bearer(&cred).unwrap();
            let mut s = c.map_stream(None, Duration::from_secs(60)).await.unwrap();
            let mut first = true;
            while let Some(Ok(ev)) = s.next_map().await {
                if first {
                    let _ = ready_tx.send(());
                    first = false;
                }
                let MapEvent::Delta(d) = ev else { continue };
                let marker = armed.read().unwrap().clone();
                let Some(marker) = marker else { continue };
                let hit = d.changes.iter().any(|ch| match ch {
                    MapChange::PeerUpsert { peer, .. } => {
                        peer.node_key.to_string() == marker || peer.name == marker
                    }
                    MapChange::Policy { policy: Some(p) } => {
                        serde_json::to_string(p).is_ok_and(|text| text.contains(&marker))
                    }
                    _ => false,
                });
                if hit {
                    let _ = tx.send((marker, Instant::now()));
                }
            }
        });
    }
    for _ in 0..n {
        ready_rx.recv().await.unwrap();
    }
    println!(
        "{n} streams open with their snapshots after {:.2} s",
        t1.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_idle, _, cpu_idle) = usage(pid);

    // 3. One change that touches every node: a new node joins.
    let newcomer = ids[n].clone();
    *armed.write().unwrap() = Some(newcomer.node_key().to_string());
    let c = client(&url, fp);
    let t2 = Instant::now();
    c.register(
        &token,
        newcomer.node_key(),
        newcomer.pow().nonce,
        |ctx, m| newcomer.sign(ctx, m),
        None,
        None,
    )
    .await
    .unwrap();
    let join = collect(&mut rx, &newcomer.node_key().to_string(), n, t2).await;
    report("join", &join, n);

    // 4. Another: rename the newcomer (an admin change).
    *armed.write().unwrap() = Some("renamed-newcomer".into());
    let t3 = Instant::now();
    admin
        .update_node(
            &newcomer.node_key().to_string(),
            &UpdateNodeRequest {
                name: Some("renamed-newcomer".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rename = collect(&mut rx, "renamed-newcomer", n, t3).await;
    report("rename", &rename, n);

    // 5. A policy edit every node's compiled policy picks up (a new rule among
    //    all members): the controller recompiles everyone.
    let marker = "bench-policy-edit";
    *armed.write().unwrap() = Some(marker.into());
    let mut text = admin.get_policy().await.unwrap().text;
    text.push_str(&format!(
        "\n[[rule]]\nname = \"{marker}\"\naction = \"allow\"\nfrom = \"tag:bench\"\nto = \"tag:bench\"\nproto = \"tcp\"\nports = [443]\n"
    ));
    let (_, _, cpu_before_edit) = usage(pid);
    let t4 = Instant::now();
    admin
        .set_policy(&SetPolicyRequest {
            api_version: None,
            text,
            expect_version: None,
        })
        .await
        .unwrap();
    let edit = collect(&mut rx, marker, n, t4).await;
    report("policy edit", &edit, n);
    let (_, _, cpu_after_edit) = usage(pid);
    println!(
        "policy edit: controller CPU {:.2} s (recompile of every node and the fan-out)",
        cpu_after_edit - cpu_before_edit
    );

    let (rss_end, hwm, cpu_end) = usage(pid);
    println!(
        "controller RSS: {rss_idle:.1} MiB holding {n} streams, {rss_end:.1} MiB at the end, peak {hwm:.1} MiB; CPU: {:.2} s registering, {:.2} s total",
        cpu1 - cpu0,
        cpu_end
    );
    let _ = cpu_idle;
    let _ = child.kill();
    let _ = child.wait();
}

//! The overlay group: a controller on the internet and four agents on an office
//! LAN behind a NAT: a, b and c in network `lab` (100.64.0.0/24), d in network
//! `other` (100.64.1.0/24). Data-plane cases first, then the ones that change
//! the policy, then the agent restarts (which stop the controller).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::py::{CONNECTS, FLOW, RAW_UDP, REPLAY, UDP_LOG, UDP_SEQ};
use super::util::{
    arg, drops, last_json, lines, peer_drops, peer_names, py, py_ok, run_bounded, secs, set_policy,
    token_for,
};
use super::{CaseResult, Tally, not_run, run_case};
use crate::mesh::{Mesh, NetworkSpec};
use crate::scripts::ECHO_SERVER;
use crate::{Lab, Nat, Net, Topology, timed_wait, wait_until};

const LAB_NODES: [&str; 3] = ["a", "b", "c"];

pub(super) fn run(names: &[&str], progress: &mut dyn FnMut(&CaseResult)) -> Vec<CaseResult> {
    let lab = match Lab::build(
        &Topology::new()
            .host("controller", Net::Internet)
            .router("office", Net::Internet, Nat::Easy)
            .host("a", Net::lan("office"))
            .host("b", Net::lan("office"))
            .host("c", Net::lan("office"))
            .host("d", Net::lan("office")),
    ) {
        Ok(lab) => lab,
        Err(e) => return names.iter().map(|n| not_run(n, &e.to_string())).collect(),
    };
    let mut mesh = match setup(&lab) {
        Ok(m) => m,
        Err(e) => {
            return names
                .iter()
                .map(|n| not_run(n, &format!("{e:#}")))
                .collect();
        }
    };
    let mut out = Vec::new();
    for &name in names {
        out.push(run_case(name, progress, |t| match name {
            "spoofed-source" => spoofed_source(&mesh, t),
            "replayed-packets" => replayed_packets(&mesh, t),
            "wrong-network" => wrong_network(&mesh, t),
            "unauthorized-peer" => unauthorized_peer(&mesh, t),
            "policy-churn" => policy_churn(&mesh, t),
            "agent-sigkill" => agent_sigkill(&mut mesh, t),
            other => bail!("case {other} is not in the overlay group"),
        }));
    }
    out
}

fn setup(lab: &Lab) -> anyhow::Result<Mesh<'_>> {
    let mut mesh = Mesh::start(lab, "controller", NetworkSpec::default())?;
    mesh.admin(&[
        "network",
        "create",
        "other",
        "--cidr",
        "100.64.1.0/24",
        "--pow-difficulty",
        &mesh.network.pow_difficulty.to_string(),
    ])?;
    let token = mesh.token_file(3)?;
    for n in LAB_NODES {
        mesh.start_agent(n, Some(&token))?;
    }
    let other = token_for(&mesh, "other", 1)?;
    mesh.start_agent("d", Some(&other))?;
    mesh.wait_full_mesh(&LAB_NODES, Duration::from_secs(30))?;
    mesh.overlay_ip("d")?;
    Ok(mesh)
}

/// Starts a UDP logger on `node`'s `port` writing to `<log dir>/<file>`.
fn udp_logger(
    lab: &Lab,
    node: &str,
    port: u16,
    file: &str,
) -> anyhow::Result<(crate::Process, std::path::PathBuf)> {
    let path = lab.log_dir().join(file);
    let mut p = lab.spawn(
        node,
        &format!("udp-log-{port}"),
        &py(UDP_LOG, &[&port.to_string(), arg(&path)?, "120"]),
    )?;
    p.wait_for_log("listening", Duration::from_secs(10))?;
    Ok((p, path))
}

/// How many logged datagrams carry a payload starting `<tag>-`.
fn tagged(path: &std::path::Path, tag: &str) -> Vec<String> {
    let prefix = format!("{tag}-");
    lines(path)
        .into_iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

fn spoofed_source(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let (ip_a, ip_b, ip_c) = (
        mesh.overlay_ip("a")?,
        mesh.overlay_ip("b")?,
        mesh.overlay_ip("c")?,
    );
    let (_rx, file) = udp_logger(lab, "b", 9101, "spoof.recv")?;
    if !lab.ping("a", ip_b)? {
        bail!("a does not ping b before the case");
    }
    const N: u64 = 20;
    let n = N.to_string();
    // 1. Through a's own weftd: its egress check refuses a source not its own.
    let a_before = drops(mesh, "a", "policy_no_rule")?;
    py_ok(
        lab,
        "a",
        RAW_UDP,
        &[&ip_c.to_string(), &ip_b.to_string(), "9101", &n, "raw"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let a_refused = drops(mesh, "a", "policy_no_rule")? - a_before;
    // 2. A rogue a (its own key, its own WireGuard): b must refuse the source.
    let before = drops(mesh, "b", "spoofed_source")?;
    let before_peer = peer_drops(mesh, "b", "a", "spoofed_source")?;
    let st = mesh.status("b")?;
    let to = SocketAddr::from((lab.addr("b")?, st.listen_port));
    let key = st.node_key.to_string();
    let identity = mesh
        .agents
        .get("a")
        .map(|a| a.state_dir.join("identity.key"))
        .context("no agent in a")?;
    let bin = crate::bin_path("weft-lab")?;
    for (src, tag) in [(ip_c, "spoof"), (ip_a, "ctl")] {
        let (ok, text) = run_bounded(
            lab,
            "a",
            30,
            &[
                arg(&bin)?,
                "__wg-spoof",
                "--identity",
                arg(&identity)?,
                "--peer-key",
                &key,
                "--to",
                &to.to_string(),
                "--src",
                &src.to_string(),
                "--dst",
                &ip_b.to_string(),
                "--port",
                "9101",
                "--count",
                &n,
                "--tag",
                tag,
            ],
        )?;
        if !ok {
            bail!("__wg-spoof failed: {text}");
        }
    }
    let _ = wait_until("control packets", Duration::from_secs(5), || {
        Ok(tagged(&file, "ctl").len() >= N as usize)
    });
    std::thread::sleep(Duration::from_millis(300));
    let raw = tagged(&file, "raw").len();
    let spoofed = tagged(&file, "spoof").len();
    let control = tagged(&file, "ctl").len();
    let counted = drops(mesh, "b", "spoofed_source")? - before;
    let counted_peer = peer_drops(mesh, "b", "a", "spoofed_source")? - before_peer;
    // The real a takes its session back.
    let back = timed_wait("a pings b again", Duration::from_secs(20), || {
        lab.ping_once("a", ip_b)
    });
    t.count(format!(
        "via a's weftd: sent {N}, delivered {raw}, a refused {a_refused} (policy_no_rule); rogue a: sent {N} spoofed, delivered {spoofed}, b spoofed_source +{counted} (against a +{counted_peer}), {N} with a's own source delivered {control}; the real a pings b again after {}",
        back.as_ref().map_or_else(|_| "> 20s".to_owned(), |d| secs(*d))
    ));
    t.require(
        raw == 0 && a_refused == N,
        format!("a's weftd passed {} spoofed packets", N - a_refused),
    );
    t.require(
        spoofed == 0,
        format!("b delivered {spoofed} spoofed packets"),
    );
    t.require(
        counted == N && counted_peer == N,
        format!("b counted {counted} spoofed_source drops ({counted_peer} against a), not {N}"),
    );
    t.require(
        control == N as usize,
        format!("only {control} of {N} control packets arrived"),
    );
    t.require(back.is_ok(), "a does not ping b after the rogue session");
    Ok(())
}

fn replayed_packets(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let ip_b = mesh.overlay_ip("b")?;
    wait_until("a reaches b directly", Duration::from_secs(15), || {
        Ok(mesh.path("a", "b").is_some_and(|p| p.starts_with("direct")))
    })
    .context("a-b is not direct")?;
    let endpoint: SocketAddr = mesh
        .status("a")?
        .peers
        .iter()
        .find(|p| p.name == "b")
        .and_then(|p| p.endpoint.clone())
        .context("a has no endpoint for b")?
        .parse()
        .context("b's endpoint")?;
    let (_rx, file) = udp_logger(lab, "b", 9102, "replay.recv")?;
    const N: usize = 20;
    let mut sniffer = lab.spawn(
        "a",
        "replay",
        &py(
            REPLAY,
            &[
                "eth0",
                &endpoint.ip().to_string(),
                &endpoint.port().to_string(),
                &N.to_string(),
                "15",
            ],
        ),
    )?;
    sniffer.wait_for_log("capturing", Duration::from_secs(10))?;
    let before = drops(mesh, "b", "replay")?;
    let before_peer = peer_drops(mesh, "b", "a", "replay")?;
    py_ok(
        lab,
        "a",
        UDP_SEQ,
        &[&ip_b.to_string(), "9102", &N.to_string(), "rp", "0.05"],
    )?;
    let status = sniffer.wait_exit(Duration::from_secs(30))?;
    let report = last_json(&sniffer.log()?).with_context(|| {
        format!(
            "the capture printed no result ({status}): {}",
            sniffer.log_tail()
        )
    })?;
    let captured = report["captured"].as_u64().unwrap_or(0);
    let resent = report["resent"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let got = tagged(&file, "rp");
    let mut per: BTreeMap<&str, u32> = BTreeMap::new();
    for p in &got {
        *per.entry(p.as_str()).or_default() += 1;
    }
    let dups = got.len() - per.len();
    let counted = drops(mesh, "b", "replay")? - before;
    let counted_peer = peer_drops(mesh, "b", "a", "replay")? - before_peer;
    t.count(format!(
        "sent {N}, captured {captured}, resent {resent}; b delivered {} distinct, {dups} duplicates; replay +{counted} (against a +{counted_peer})",
        per.len()
    ));
    t.require(
        captured == N as u64 && resent == captured,
        format!("captured {captured}, resent {resent} of {N}"),
    );
    t.require(
        per.len() == N,
        format!("{} of {N} datagrams arrived", per.len()),
    );
    t.require(
        dups == 0,
        format!("{dups} replayed datagrams were delivered"),
    );
    t.require(
        counted == resent && counted_peer == resent,
        format!("b counted {counted} replays ({counted_peer} against a), {resent} resent"),
    );
    Ok(())
}

/// The name of `node`'s first overlay interface.
fn iface(mesh: &Mesh<'_>, node: &str) -> anyhow::Result<String> {
    mesh.status(node)?
        .networks
        .first()
        .map(|n| n.interface.clone())
        .with_context(|| format!("{node} has no network"))
}

fn wrong_network(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let (ip_a, ip_d) = (mesh.overlay_ip("a")?, mesh.overlay_ip("d")?);
    const N: u64 = 20;
    let mut summary = Vec::new();
    for (from, to, ip, cidr, port) in [
        ("d", "a", ip_a, "100.64.0.0/24", 9103u16),
        ("a", "d", ip_d, "100.64.1.0/24", 9104u16),
    ] {
        let (_rx, file) = udp_logger(lab, to, port, &format!("wrong-{to}.recv"))?;
        let dev = iface(mesh, from)?;
        // The sender's kernel has no route to the other network: add one, so the
        // packets really reach the sender's weftd.
        lab.run(from, &["ip", "route", "add", cidr, "dev", &dev])?;
        let before = drops(mesh, from, "no_route")?;
        let sent = py_ok(
            lab,
            from,
            UDP_SEQ,
            &[
                &ip.to_string(),
                &port.to_string(),
                &N.to_string(),
                "wn",
                "0.01",
            ],
        );
        let pinged = lab.ping_once(from, ip);
        std::thread::sleep(Duration::from_millis(300));
        let counted = drops(mesh, from, "no_route")? - before;
        let _ = lab.run(from, &["ip", "route", "del", cidr, "dev", &dev]);
        sent?;
        let got = tagged(&file, "wn").len();
        summary.push(format!(
            "{from}->{to}: sent {N} UDP + 1 ping, delivered {got}, ping answered {pinged}, {from} no_route +{counted}"
        ));
        t.require(
            got == 0,
            format!("{to} received {got} datagrams from {from}"),
        );
        t.require(!pinged, format!("{from} pinged {to} across networks"));
        t.require(
            counted >= N,
            format!("{from} counted {counted} no_route drops, sent {N}"),
        );
    }
    t.count(summary.join("; "));
    Ok(())
}

const AB: &str = r#"
[[rule]]
name = "a and b"
action = "allow"
from = ["node:a", "node:b"]
to = ["node:a", "node:b"]
"#;

fn unauthorized_peer(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let (ip_a, ip_b) = (mesh.overlay_ip("a")?, mesh.overlay_ip("b")?);
    let policy = format!(
        "{AB}\n[[rule]]\nname = \"b to c ssh\"\naction = \"allow\"\nfrom = \"node:b\"\nto = \"node:c\"\nproto = \"tcp\"\nports = [22]\n"
    );
    set_policy(mesh, "unauthorized.toml", &policy)?;
    wait_until("c sees only b", Duration::from_secs(5), || {
        Ok(peer_names(mesh, "c") == ["b"])
    })
    .context("the policy did not reach c")?;
    let (_rx, file) = udp_logger(lab, "b", 9105, "unauth.recv")?;
    const N: u64 = 30;
    let before = peer_drops(mesh, "c", "b", "policy_no_rule")?;
    py_ok(
        lab,
        "c",
        UDP_SEQ,
        &[&ip_b.to_string(), "9105", &N.to_string(), "un", "0.01"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let got = tagged(&file, "un").len();
    let counted = peer_drops(mesh, "c", "b", "policy_no_rule")? - before;
    t.count(format!(
        "c->b UDP: sent {N}, delivered {got}, c policy_no_rule +{counted}"
    ));
    t.require(got == 0, format!("b received {got} datagrams from c"));
    t.require(
        counted == N,
        format!("c counted {counted} policy_no_rule drops, sent {N}"),
    );

    // A stranger: a random WireGuard key in no map.
    let st = mesh.status("b")?;
    let to = SocketAddr::from((lab.addr("b")?, st.listen_port));
    let before = drops(mesh, "b", "unknown_peer")?;
    let bin = crate::bin_path("weft-lab")?;
    let (ok, text) = run_bounded(
        lab,
        "c",
        30,
        &[
            arg(&bin)?,
            "__wg-stranger",
            "--peer-key",
            &st.node_key.to_string(),
            "--to",
            &to.to_string(),
            "--count",
            &N.to_string(),
        ],
    )?;
    if !ok {
        bail!("__wg-stranger failed: {text}");
    }
    let mut counted = 0;
    let _ = wait_until(
        "stranger handshakes counted",
        Duration::from_secs(3),
        || {
            counted = drops(mesh, "b", "unknown_peer").unwrap_or(before) - before;
            Ok(counted >= N)
        },
    );
    let still = lab.ping("b", ip_a)?;
    t.count(format!(
        "stranger: {N} handshake initiations from random keys, b unknown_peer +{counted}, b still pings a: {still}"
    ));
    t.require(
        counted == N,
        format!("b counted {counted} unknown_peer drops, {N} sent"),
    );
    t.require(still, "b no longer pings a");
    Ok(())
}

fn churn_policy(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!(
            "# edit {i}: c may reach b on tcp/7000\n{AB}\n[[rule]]\nname = \"c to b 7000\"\naction = \"allow\"\nfrom = \"node:c\"\nto = \"node:b\"\nproto = \"tcp\"\nports = [7000]\n"
        )
    } else {
        format!("# edit {i}: a and b only\n{AB}")
    }
}

/// Background traffic a->b during the churn: iperf3 runs back to back, and pings.
#[derive(Debug, Default)]
struct Traffic {
    iperf_runs: u32,
    iperf_failed: u32,
    empty_seconds: u32,
    min_second_bytes: Option<u64>,
}

fn iperf_loop(lab: &Lab, ip_b: Ipv4Addr, done: &AtomicBool) -> Traffic {
    let mut tr = Traffic::default();
    let ip = ip_b.to_string();
    while !done.load(Ordering::Relaxed) {
        let argv = [
            "iperf3", "-c", &ip, "-p", "5201", "-t", "4", "-b", "40M", "-J",
        ];
        tr.iperf_runs += 1;
        let Ok((ok, text)) = run_bounded(lab, "a", 20, &argv) else {
            tr.iperf_failed += 1;
            continue;
        };
        let v = last_json(&text).or_else(|| serde_json::from_str(&text).ok());
        let intervals = v
            .as_ref()
            .and_then(|v| v["intervals"].as_array().cloned())
            .unwrap_or_default();
        if !ok || intervals.is_empty() {
            tr.iperf_failed += 1;
            continue;
        }
        for iv in intervals {
            let bytes = iv["sum"]["bytes"].as_u64().unwrap_or(0);
            if bytes == 0 {
                tr.empty_seconds += 1;
            }
            tr.min_second_bytes = Some(tr.min_second_bytes.map_or(bytes, |m| m.min(bytes)));
        }
    }
    tr
}

fn ping_loop(lab: &Lab, ip_b: Ipv4Addr, done: &AtomicBool) -> (u64, u64) {
    let (mut sent, mut answered) = (0, 0);
    let ip = ip_b.to_string();
    while !done.load(Ordering::Relaxed) {
        let argv = ["ping", "-n", "-q", "-c", "20", "-i", "0.1", "-W", "1", &ip];
        let Ok((_, text)) = run_bounded(lab, "a", 10, &argv) else {
            continue;
        };
        // "20 packets transmitted, 20 received, ..."
        if let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [tx, rx, ..] = nums[..] {
                sent += tx;
                answered += rx;
            }
        }
    }
    (sent, answered)
}

fn policy_churn(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let ip_b = mesh.overlay_ip("b")?;
    let b = ip_b.to_string();
    set_policy(mesh, "churn-start.toml", &churn_policy(1))?;
    let mut servers = Vec::new();
    for port in [7000u16, 7100] {
        let mut p = lab.spawn(
            "b",
            &format!("echo-{port}"),
            &py(ECHO_SERVER, &[&port.to_string()]),
        )?;
        p.wait_for_tcp_listen(port, Duration::from_secs(10))?;
        servers.push(p);
    }
    let mut iperf = std::process::Command::new("iperf3");
    iperf.args(["-s", "-B", &b, "-p", "5201"]);
    let mut srv = lab.spawn("b", "iperf3-server", &iperf)?;
    srv.wait_for_tcp_listen(5201, Duration::from_secs(10))?;
    servers.push(srv);
    wait_until("a pings b", Duration::from_secs(10), || lab.ping("a", ip_b))?;
    let ab_log = lab.log_dir().join("churn-ab.flow");
    let mut ab_flow = lab.spawn(
        "a",
        "flow-ab",
        &py(FLOW, &[&b, "7100", arg(&ab_log)?, "1.0", "300"]),
    )?;
    wait_until("the a->b flow echoes", Duration::from_secs(5), || {
        Ok(!lines(&ab_log).is_empty())
    })?;

    const EDITS: usize = 100;
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let (edits, traffic, pings) = std::thread::scope(|s| {
        let iperf = s.spawn(|| iperf_loop(lab, ip_b, &done));
        let ping = s.spawn(|| ping_loop(lab, ip_b, &done));
        let edits = churn_edits(mesh, &b, EDITS);
        done.store(true, Ordering::Relaxed);
        (
            edits,
            iperf.join().unwrap_or_default(),
            ping.join().unwrap_or_default(),
        )
    });
    let window = start.elapsed();
    let e = edits?;
    let ab_alive = ab_flow.try_wait()?.is_none();
    let ab_echoes = lines(&ab_log).len();
    t.count(format!(
        "{} edits in {}; c->b:7000 opened {}/{}, open flow cut {}/{} (slowest {}), refused after cut {}/{}; a->b flow {} echoes, alive {ab_alive}; iperf3 {} runs, {} failed, {} empty seconds, slowest second {} KB; ping {}/{}",
        e.applied,
        secs(window),
        e.opened,
        EDITS / 2,
        e.cut,
        EDITS / 2,
        secs(e.slowest_cut),
        e.refused,
        EDITS / 2,
        ab_echoes,
        traffic.iperf_runs,
        traffic.iperf_failed,
        traffic.empty_seconds,
        traffic.min_second_bytes.unwrap_or(0) / 1000,
        pings.1,
        pings.0
    ));
    t.problems.extend(e.problems);
    t.require(
        e.applied == EDITS,
        format!("only {} edits applied", e.applied),
    );
    t.require(ab_alive, "the a->b flow was cut");
    t.require(
        traffic.iperf_runs > 0 && traffic.iperf_failed == 0 && traffic.empty_seconds == 0,
        format!(
            "iperf3: {} of {} runs failed, {} empty seconds",
            traffic.iperf_failed, traffic.iperf_runs, traffic.empty_seconds
        ),
    );
    t.require(
        pings.0 > 0 && pings.0 == pings.1,
        format!("ping: {} of {} answered", pings.1, pings.0),
    );
    Ok(())
}

#[derive(Debug, Default)]
struct Edits {
    applied: usize,
    opened: usize,
    cut: usize,
    refused: usize,
    slowest_cut: Duration,
    problems: Vec<String>,
}

/// The churn itself: `n` edits; after each, what it allows must open and what it
/// closes must be cut, each within 2 s.
fn churn_edits(mesh: &Mesh<'_>, b: &str, n: usize) -> anyhow::Result<Edits> {
    let lab = mesh.lab();
    let mut e = Edits::default();
    let mut flow: Option<crate::Process> = None;
    let connects = |timeout: &str| -> bool {
        lab.python("c", CONNECTS, &[b, "7000", timeout])
            .is_ok_and(|o| o.status.success())
    };
    for i in 0..n {
        set_policy(mesh, "churn.toml", &churn_policy(i)).with_context(|| format!("edit {i}"))?;
        e.applied += 1;
        if i.is_multiple_of(2) {
            if wait_until("c->b:7000 opens", Duration::from_secs(2), || {
                Ok(connects("0.5"))
            })
            .is_err()
            {
                e.problems
                    .push(format!("edit {i}: c->b:7000 did not open within 2 s"));
                continue;
            }
            e.opened += 1;
            let log = lab.log_dir().join(format!("churn-cb-{i}.flow"));
            let mut p = lab.spawn(
                "c",
                &format!("flow-cb-{i}"),
                &py(FLOW, &[b, "7000", arg(&log)?, "0.3", "30"]),
            )?;
            if wait_until("c->b flow echoes", Duration::from_secs(2), || {
                Ok(!lines(&log).is_empty())
            })
            .is_err()
            {
                e.problems
                    .push(format!("edit {i}: the c->b:7000 flow carried nothing"));
                let _ = p.kill();
                continue;
            }
            flow = Some(p);
        } else {
            if let Some(mut p) = flow.take() {
                match timed_wait("c->b flow cut", Duration::from_secs(2), || {
                    p.try_wait().is_ok_and(|s| s.is_some())
                }) {
                    Ok(took) => {
                        e.cut += 1;
                        e.slowest_cut = e.slowest_cut.max(took);
                    }
                    Err(_) => {
                        e.problems
                            .push(format!("edit {i}: the open c->b:7000 flow was not cut"));
                        let _ = p.kill();
                    }
                }
            }
            if connects("0.5") {
                e.problems
                    .push(format!("edit {i}: c->b:7000 still connects"));
            } else {
                e.refused += 1;
            }
        }
    }
    Ok(e)
}

/// What weft set up on a node: addresses on weft links, protocol-119 routes,
/// whether the nftables table exists, the resolver file.
#[derive(Debug, PartialEq, Eq)]
struct Installed {
    addrs: Vec<String>,
    routes: Vec<String>,
    nft: bool,
    resolv: String,
}

fn installed(lab: &Lab, node: &str) -> anyhow::Result<Installed> {
    let addrs = lab
        .run(node, &["ip", "-o", "-4", "addr", "show"])?
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(1).is_some_and(|d| d.starts_with("weft"))).then(|| format!("{} {}", w[1], w[3]))
        })
        .collect();
    let mut routes: Vec<String> = lab
        .run(node, &["ip", "route", "show", "proto", "119"])?
        .lines()
        .map(str::to_owned)
        .collect();
    routes.sort();
    let nft = run_bounded(lab, node, 5, &["nft", "list", "table", "inet", "weft"])?.0;
    let resolv = std::fs::read_to_string(lab.resolv_conf_path(node)?).unwrap_or_default();
    Ok(Installed {
        addrs,
        routes,
        nft,
        resolv,
    })
}

fn resolves(lab: &Lab, node: &str, name: &str, ip: Ipv4Addr) -> bool {
    run_bounded(lab, node, 5, &["getent", "hosts", name])
        .is_ok_and(|(ok, out)| ok && out.split_whitespace().next() == Some(&ip.to_string()))
}

fn agent_sigkill(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let ip_b = mesh.overlay_ip("b")?;
    wait_until("a pings b", Duration::from_secs(10), || lab.ping("a", ip_b))?;
    let name = "b.lab.weft.internal";
    wait_until("b's name resolves on a", Duration::from_secs(10), || {
        Ok(resolves(lab, "a", name, ip_b))
    })?;
    let before = installed(lab, "a")?;
    if before.addrs.is_empty() || before.routes.is_empty() || !before.nft {
        bail!("a is not set up before the case: {before:?}");
    }
    const BOUND: Duration = Duration::from_secs(15);
    let mut summary = Vec::new();
    for controller_up in [false, true] {
        let label = if controller_up {
            "controller up"
        } else {
            "controller down"
        };
        mesh.kill_agent("a")?;
        let gone = installed(lab, "a")?;
        if controller_up {
            mesh.restart_controller()?;
        } else {
            mesh.kill_controller()?;
        }
        let start = Instant::now();
        mesh.start_agent("a", None)?;
        let took = timed_wait("a pings b after the restart", BOUND, || {
            lab.ping_once("a", ip_b)
        })
        .map(|_| start.elapsed());
        let repaired = wait_until("a's setup repaired", Duration::from_secs(10), || {
            Ok(installed(lab, "a").is_ok_and(|now| now == before))
        })
        .is_ok();
        let dns = resolves(lab, "a", name, ip_b);
        let now = installed(lab, "a")?;
        summary.push(format!(
            "{label}: after kill {} addrs {} routes, pings again after {}, setup repaired {repaired}, DNS {dns}",
            gone.addrs.len(),
            gone.routes.len(),
            took.as_ref()
                .map_or_else(|_| format!("> {}", secs(BOUND)), |d| secs(*d))
        ));
        t.require(
            took.is_ok(),
            format!("{label}: a did not ping b within {}", secs(BOUND)),
        );
        t.require(
            repaired,
            format!("{label}: not repaired: before {before:?}, now {now:?}"),
        );
        t.require(dns, format!("{label}: {name} does not resolve on a"));
    }
    t.count(summary.join("; "));
    Ok(())
}

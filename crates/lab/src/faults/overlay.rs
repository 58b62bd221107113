//! The overlay group: a controller on the internet and four agents on an office
//! LAN behind a NAT: a, b and c in network `lab` (100.64.0.0/24), c and d in
//! network `other` (100.64.1.0/24). Data-plane cases first, then the ones that
//! change the policy (policy churn is in `churn.rs`), then the agent
//! restarts (which stop the controller).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::py::{RAW_UDP, REPLAY, UDP_LOG, UDP_SEQ};
use super::util::{
    arg, drops, last_json, lines, peer_drops, peer_names, py, py_ok, run_bounded, secs, set_policy,
    token_for,
};
use super::{CaseResult, Tally};
use crate::mesh::{Mesh, NetworkSpec};
use crate::{Lab, Topology, timed_wait, wait_until};

const LAB_NODES: [&str; 3] = ["a", "b", "c"];

pub(super) fn run(names: &[&str], progress: &mut dyn FnMut(&CaseResult)) -> Vec<CaseResult> {
    super::run_group(
        names,
        progress,
        &Topology::office(&["a", "b", "c", "d"]),
        setup,
        |name, mesh, t| match name {
            "spoofed-source" => spoofed_source(mesh, t),
            "replayed-packets" => replayed_packets(mesh, t),
            "wrong-network" => wrong_network(mesh, t),
            "unauthorized-peer" => unauthorized_peer(mesh, t),
            "policy-churn" => super::churn::policy_churn(mesh, t),
            "agent-sigkill" => agent_sigkill(mesh, t),
            other => bail!("case {other} is not in the overlay group"),
        },
    )
}

/// Sends `n` UDP datagrams `<tag>-<i>` from `node` to `ip:port`, `gap_secs`
/// seconds apart (the [`UDP_SEQ`] program).
fn send_udp_seq(
    lab: &Lab,
    node: &str,
    ip: Ipv4Addr,
    port: u16,
    n: impl std::fmt::Display,
    tag: &str,
    gap_secs: &str,
) -> anyhow::Result<()> {
    py_ok(
        lab,
        node,
        UDP_SEQ,
        &[
            &ip.to_string(),
            &port.to_string(),
            &n.to_string(),
            tag,
            gap_secs,
        ],
    )
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
    let token = mesh.token_file(2)?;
    for n in ["a", "b"] {
        mesh.start_agent(n, Some(&token))?;
    }
    // c is in both networks (so it has the nftables table that keeps them apart).
    let both = token_for(&mesh, &["lab", "other"], 1)?;
    mesh.start_agent("c", Some(&both))?;
    let other = token_for(&mesh, &["other"], 1)?;
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
    send_udp_seq(lab, "a", ip_b, 9102, N, "rp", "0.05")?;
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
        let sent = send_udp_seq(lab, from, ip, port, N, "wn", "0.01");
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

/// Every network's default rule.
const OPEN: &str = r#"
[[rule]]
action = "allow"
from = "network:lab"
to = "network:lab"

[[rule]]
action = "allow"
from = "network:other"
to = "network:other"
"#;

pub(super) const AB: &str = r#"
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
    send_udp_seq(lab, "c", ip_b, 9105, N, "un", "0.01")?;
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
    set_policy(mesh, "open.toml", OPEN)?;
    wait_until("c pings b", Duration::from_secs(10), || lab.ping("c", ip_b))?;
    let name = "b.lab.weft.internal";
    wait_until("b's name resolves on c", Duration::from_secs(10), || {
        Ok(resolves(lab, "c", name, ip_b))
    })?;
    let before = installed(lab, "c")?;
    if before.addrs.is_empty() || before.routes.is_empty() || !before.nft {
        bail!("c is not set up before the case: {before:?}");
    }
    const BOUND: Duration = Duration::from_secs(15);
    let mut summary = Vec::new();
    for controller_up in [false, true] {
        let label = if controller_up {
            "controller up"
        } else {
            "controller down"
        };
        mesh.kill_agent("c")?;
        let gone = installed(lab, "c")?;
        if controller_up {
            mesh.restart_controller()?;
        } else {
            mesh.kill_controller()?;
        }
        let start = Instant::now();
        mesh.start_agent("c", None)?;
        let took = timed_wait("c pings b after the restart", BOUND, || {
            lab.ping_once("c", ip_b)
        })
        .map(|_| start.elapsed());
        let repaired = wait_until("c's setup repaired", Duration::from_secs(10), || {
            Ok(installed(lab, "c").is_ok_and(|now| now == before))
        })
        .is_ok();
        let dns = resolves(lab, "c", name, ip_b);
        let now = installed(lab, "c")?;
        summary.push(format!(
            "{label}: after the kill {} addresses, {} routes; pings b {} after the start, setup as before {repaired}, DNS {dns}",
            gone.addrs.len(),
            gone.routes.len(),
            took.as_ref()
                .map_or_else(|_| format!("> {}", secs(BOUND)), |d| format!("{} ms", d.as_millis()))
        ));
        t.require(
            took.is_ok(),
            format!("{label}: c did not ping b within {}", secs(BOUND)),
        );
        t.require(
            repaired,
            format!("{label}: not repaired: before {before:?}, now {now:?}"),
        );
        t.require(dns, format!("{label}: {name} does not resolve on c"));
    }
    t.count(summary.join("; "));
    Ok(())
}

//! The DNS blocklist end to end (issue 18): `weft admin dns blocklist set`
//! on the real controller, a lab node's `weftd --dns system` fetching it,
//! and its resolver answering blocked names (and names under them) with
//! NXDOMAIN, or 0.0.0.0 / `::` in zero mode, without asking the upstream;
//! counted in `weft dns stats` and `weft_agent_dns_blocked_total`; a burst of
//! blocked lookups raises a `dns_blocked` anomaly event on the node and on the
//! controller; the node keeps the list across a restart without its
//! controller; `clear` lets the names resolve again. The upstream is the
//! lab's own dnsmasq on the internet segment. Needs root, `dnsmasq` and `dig`
//! (`scripts/install-deps.sh`); FAILS (never skips) without them.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(clippy::print_stdout, reason = "the measured figures are reported")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Net, Topology};

const NODE: &str = "db";
/// The lab's plain DNS upstream: a host on the internet segment.
const UPSTREAM: &str = "dnsup";
/// The resolver weftd runs in the node.
const RESOLVER: &str = "@127.0.2.53";

/// The admin's file: hosts format and a plain domain list, with a comment.
const LIST: &str = "# lab blocklist\n0.0.0.0 ads.test\ntracker.test\n";

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `dig` in the node at weft's resolver: (status, answer data).
fn dig(lab: &Lab, name: &str, qtype: &str) -> (String, Vec<String>) {
    let netns = lab.netns(NODE).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "dig", RESOLVER])
        .args(["+noall", "+comments", "+answer", "+time=3", "+tries=1"])
        .args([name, qtype])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect();
    (status, answers)
}

/// How many times dnsmasq was asked about a name ending in `suffix`.
fn upstream_asked(log: &Path, suffix: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" query[") && l.split_whitespace().any(|w| w.ends_with(suffix)))
        .count()
}

fn weft_json(mesh: &Mesh<'_>, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = mesh.weft(NODE, &all).unwrap();
    assert!(out.status.success(), "weft {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `weft admin ARGS` next to the controller (as `Mesh::admin`, with the
/// exit status and stderr): status, stdout, stderr.
fn admin(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    let netns = lab.netns("controller").unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(weft_lab::bin_path("weft").unwrap())
        .arg("admin")
        .arg("--data-dir")
        .arg(lab.log_dir().join("controller-data"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn events_of_kind(v: &[serde_json::Value], kind: &str) -> usize {
    v.iter()
        .filter(|e| e["kind"] == kind || e["event"]["kind"] == kind)
        .count()
}

#[test]
fn a_blocklisted_name_is_refused_counted_and_raises_an_anomaly() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    assert!(
        Command::new("sh")
            .args(["-c", "command -v dig >/dev/null"])
            .status()
            .unwrap()
            .success(),
        "dig is missing: run scripts/install-deps.sh"
    );
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("dnsmasq is missing: run scripts/install-deps.sh (package dnsmasq-base)");

    let topo = Topology::office(&[NODE]).host(UPSTREAM, Net::Internet);
    let lab = Lab::build(&topo).expect("build the lab");
    let up_ip = lab.node(UPSTREAM).unwrap().uplink().addr;
    let mut dns_cmd = Command::new(dnsmasq);
    dns_cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file",
        "--log-facility=-",
        "--log-queries",
        "--user=root",
        "--group=root",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--port=53",
        &format!("--listen-address={up_ip}"),
        "--address=/ads.test/198.18.0.70",
        "--address=/tracker.test/198.18.0.71",
        "--address=/ok.test/198.18.0.72",
    ]);
    let mut upstream = lab.spawn(UPSTREAM, "dnsmasq", &dns_cmd).unwrap();
    upstream
        .wait_for_udp_bound(53, Duration::from_secs(10))
        .unwrap();
    let dnsmasq_log = lab.log_dir().join(format!("{UPSTREAM}-dnsmasq.log"));

    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let dir = lab.log_dir().join("blocklist");
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("list.txt");
    std::fs::write(&list, LIST).unwrap();
    let list_arg = list.display().to_string();

    // A file with a bad line is refused with its line, and nothing is set.
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "ok.example\n10.1.2.3 intranet.example\ncom\n").unwrap();
    let (ok, _, err) = admin(
        &lab,
        &["dns", "blocklist", "set", &bad.display().to_string()],
    );
    assert!(!ok, "a bad file was accepted");
    assert!(err.contains("bad.txt:2: "), "{err}");
    assert!(err.contains("bad.txt:3: "), "{err}");
    let (ok, out, _) = admin(&lab, &["dns", "blocklist", "show"]);
    assert!(ok && out.contains("no DNS blocklist is set"), "{out}");

    // Set before the node joins: its first map carries it.
    let (ok, out, err) = admin(&lab, &["dns", "blocklist", "set", &list_arg]);
    assert!(ok, "{err}");
    assert!(out.contains("2 domains, mode nxdomain"), "{out}");
    // Quick anomaly settings: 1 s windows, no warm-up, 10 blocked lookups a
    // window at least.
    let (ok, _, err) = admin(
        &lab,
        &[
            "network",
            "anomaly",
            "lab",
            "--window-secs",
            "1",
            "--warmup-secs",
            "0",
            "--drops-min",
            "10",
        ],
    );
    assert!(ok, "{err}");

    let token = mesh.token_file(1).unwrap();
    let upstream_arg = format!("udp://{up_ip}");
    let args = ["--dns", "system", "--dns-upstream", &upstream_arg];
    mesh.start_agent_with_args(NODE, Some(&token), &[], &args)
        .unwrap();
    mesh.overlay_ip(NODE).unwrap();

    // Names not on the list resolve through the upstream.
    within("ok.test resolves", Duration::from_secs(30), || {
        dig(&lab, "www.ok.test", "A").1 == ["198.18.0.72"]
    });
    // The list came with the first map: blocked as soon as the resolver runs.
    assert_eq!(dig(&lab, "ads.test", "A").0, "NXDOMAIN");
    for (name, qtype) in [
        ("beacon.ads.test", "A"),
        ("x.y.ads.test", "AAAA"),
        ("tracker.test", "A"),
        ("Sub.Tracker.TEST", "TXT"),
    ] {
        assert_eq!(dig(&lab, name, qtype).0, "NXDOMAIN", "{name} {qtype}");
    }
    assert_eq!(dig(&lab, "adstest.ok.test", "A").1, ["198.18.0.72"]);
    assert_eq!(
        upstream_asked(&dnsmasq_log, "ads.test"),
        0,
        "a blocked name left the node"
    );
    assert_eq!(upstream_asked(&dnsmasq_log, "tracker.test"), 0);
    let kept = lab
        .log_dir()
        .join(format!("{NODE}-state"))
        .join("dns-blocklist.json");
    assert!(kept.exists(), "the list is kept in the state directory");

    // Counted: weft dns stats and the metric.
    let stats = weft_json(&mesh, &["dns", "stats"]);
    let blocked = stats["blocked"].as_u64().unwrap();
    assert!(blocked >= 5, "{stats}");
    assert_eq!(stats["blocklist"]["entries"], 2, "{stats}");
    assert_eq!(stats["blocklist"]["mode"], "nxdomain", "{stats}");
    let m = mesh.weft(NODE, &["metrics"]).unwrap();
    let text = String::from_utf8_lossy(&m.stdout);
    let metric: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("weft_agent_dns_blocked_total "))
        .unwrap_or_else(|| panic!("no weft_agent_dns_blocked_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(metric >= blocked, "metric {metric}, stats {blocked}");
    println!("blocked lookups counted: stats {blocked}, metric {metric}");

    // A burst of blocked lookups (a program calling a listed domain) after
    // quiet windows: a dns_blocked event on the node and the controller.
    assert_eq!(
        events_of_kind(
            weft_json(&mesh, &["events"])["events"].as_array().unwrap(),
            "dns_blocked"
        ),
        0
    );
    std::thread::sleep(Duration::from_secs(4));
    let batch = dir.join("burst.txt");
    let names: String = (0..60).map(|i| format!("n{i}.ads.test A\n")).collect();
    std::fs::write(&batch, names).unwrap();
    let netns = lab.netns(NODE).unwrap();
    let burst = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &netns, "dig", RESOLVER, "+short", "+time=3", "+tries=1", "-f",
        ])
        .arg(&batch)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let took = within(
        "a dns_blocked event on the node",
        Duration::from_secs(20),
        || {
            events_of_kind(
                weft_json(&mesh, &["events"])["events"].as_array().unwrap(),
                "dns_blocked",
            ) > 0
        },
    );
    println!(
        "dns_blocked event {took:?} after the burst ({:?} in all)",
        burst.elapsed()
    );
    let events = weft_json(&mesh, &["events"]);
    let e = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "dns_blocked")
        .unwrap()
        .clone();
    assert_eq!(e["unit"], "lookups", "{e:#}");
    assert!(e["observed"].as_f64().unwrap() >= 10.0, "{e:#}");
    assert!(
        e["summary"]
            .as_str()
            .unwrap()
            .contains("names on the DNS blocklist"),
        "{e:#}"
    );
    within(
        "the event on the controller",
        Duration::from_secs(30),
        || {
            let (ok, out, _) = admin(&lab, &["events", "--json"]);
            ok && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
                events_of_kind(v["events"].as_array().unwrap_or(&Vec::new()), "dns_blocked") > 0
            })
        },
    );

    // Zero mode: unspecified addresses instead of NXDOMAIN.
    let (ok, out, err) = admin(
        &lab,
        &["dns", "blocklist", "set", &list_arg, "--mode", "zero"],
    );
    assert!(ok && out.contains("mode zero"), "{out}{err}");
    within("zero mode in force", Duration::from_secs(30), || {
        dig(&lab, "beacon.ads.test", "A") == ("NOERROR".into(), vec!["0.0.0.0".into()])
    });
    assert_eq!(
        dig(&lab, "beacon.ads.test", "AAAA"),
        ("NOERROR".into(), vec!["::".into()])
    );
    assert_eq!(dig(&lab, "tracker.test", "MX"), ("NOERROR".into(), vec![]));
    let (ok, out, _) = admin(&lab, &["--json", "dns", "blocklist", "show"]);
    assert!(ok, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["blocklist"]["mode"], "zero", "{shown}");
    assert_eq!(shown["blocklist"]["entries"], 2, "{shown}");

    // The node keeps the list: restarted while its controller is down, it
    // blocks from the start.
    mesh.kill_controller().unwrap();
    mesh.stop_agent(NODE).unwrap();
    mesh.start_agent_with_args(NODE, None, &[], &args).unwrap();
    within(
        "the kept list in force without the controller",
        Duration::from_secs(30),
        || dig(&lab, "again.ads.test", "A").1 == ["0.0.0.0"],
    );
    mesh.restart_controller().unwrap();

    // Cleared: the names resolve again, and the kept copy is gone.
    let (ok, out, err) = admin(&lab, &["dns", "blocklist", "clear"]);
    assert!(ok && out.contains("DNS blocklist removed"), "{out}{err}");
    within("ads.test resolves again", Duration::from_secs(60), || {
        dig(&lab, "after.ads.test", "A").1 == ["198.18.0.70"]
    });
    within("the kept copy removed", Duration::from_secs(10), || {
        !kept.exists()
    });
    let (ok, out, _) = admin(&lab, &["dns", "blocklist", "clear"]);
    assert!(ok && out.contains("no DNS blocklist was set"), "{out}");
    drop(upstream);
}

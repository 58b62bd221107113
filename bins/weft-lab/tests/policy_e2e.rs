//! End-to-end test of the access policy: the real controller stores, validates,
//! compiles and ships it; the real agents enforce it. Needs root and FAILS (never
//! skips) without it. Binaries from `WEFT_BIN_DIR` (run `cargo build --workspace
//! --bins` first; scripts/test.sh does).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::scripts::{ECHO_SERVER, TCP_FLOW, UDP_BURST};
use weft_lab::{Lab, Topology};

const NODES: [&str; 3] = ["web", "db", "other"];

fn lab() -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let topo = Topology::office(&NODES);
    Lab::build(&topo).expect("build the lab")
}

fn connects(lab: &Lab, node: &str, ip: Ipv4Addr, port: u16) -> bool {
    lab.tcp_echoes(node, ip, port)
}

fn peers(mesh: &Mesh<'_>, node: &str) -> Vec<String> {
    let mut v: Vec<String> = mesh
        .try_status(node)
        .map(|s| s.peers.into_iter().map(|p| p.name).collect())
        .unwrap_or_else(|| vec!["<no status>".into()]);
    v.sort();
    v
}

fn peer_drops(mesh: &Mesh<'_>, node: &str, peer: &str, reason: &str) -> u64 {
    mesh.status(node)
        .unwrap()
        .peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.drops.get(reason).copied())
        .unwrap_or(0)
}

/// Waits until `check` holds (polling fast), failing after `timeout`; returns how
/// long it took.
fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn set_policy(mesh: &Mesh<'_>, lab: &Lab, name: &str, text: &str) -> Instant {
    let path = lab.log_dir().join(name);
    std::fs::write(&path, text).unwrap();
    let out = mesh
        .admin(&["policy", "set", path.to_str().unwrap(), "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["author"], "admin", "{out}");
    Instant::now()
}

const WEB_TO_DB: &str = r#"# web may reach db on tcp/5432; nothing else.
[[rule]]
name = "web to db"
action = "allow"
from = "tag:web"
to = "tag:db"
proto = "tcp"
ports = [5432]

[[test]]
from = "tag:web"
to = "tag:db"
proto = "tcp"
port = 5432
expect = "allow"

[[test]]
from = "tag:db"
to = "tag:web"
proto = "tcp"
port = 8080
expect = "deny"
"#;

const DB_TO_WEB: &str = r#"# Reversed: db may reach web on tcp/8080; web may no longer reach db.
[[rule]]
name = "db to web"
action = "allow"
from = "tag:db"
to = "tag:web"
proto = "tcp"
ports = [8080]
"#;

#[test]
fn policy_is_shipped_enforced_explained_and_changed_live() {
    let lab = lab();
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");

    // A new network starts with its visible, editable default rule.
    let shown = mesh.admin(&["policy", "show"]).unwrap();
    assert!(
        shown.contains("members of lab may reach each other"),
        "{shown}"
    );

    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    // The default rule lets every member reach every other.
    mesh.wait_full_mesh(&NODES, Duration::from_secs(30))
        .unwrap();
    mesh.admin(&["node", "tag", "web", "web"]).unwrap();
    mesh.admin(&["node", "tag", "db", "db"]).unwrap();
    let ip_web = mesh.overlay_ip("web").unwrap();
    let ip_db = mesh.overlay_ip("db").unwrap();

    // Listeners: db on 5432 and 22, web on 8080.
    let mut servers = Vec::new();
    for (node, port) in [("db", 5432u16), ("db", 22), ("web", 8080)] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", ECHO_SERVER, &port.to_string()]);
        let mut p = lab.spawn(node, &format!("echo-{port}"), &cmd).unwrap();
        p.wait_for_tcp_listen(port, Duration::from_secs(10))
            .unwrap();
        servers.push(p);
    }
    assert!(
        connects(&lab, "db", ip_web, 8080),
        "default rule: db -> web"
    );

    // A policy whose tests fail is refused, with the failing test's line.
    let bad = format!(
        "{WEB_TO_DB}\n[[test]]\nfrom = \"tag:db\"\nto = \"tag:web\"\nproto = \"tcp\"\nport = 8080\nexpect = \"allow\"\n"
    );
    let bad_path = lab.log_dir().join("bad.toml");
    std::fs::write(&bad_path, &bad).unwrap();
    let err = mesh
        .admin(&["policy", "set", bad_path.to_str().unwrap()])
        .unwrap_err();
    assert!(format!("{err:#}").contains("test"), "{err:#}");
    // So is one that does not parse, with the line.
    std::fs::write(
        &bad_path,
        "[[rule]]\naction = \"allow\"\nfrom = [\"tag:web\"\n",
    )
    .unwrap();
    let err = mesh
        .admin(&["policy", "set", bad_path.to_str().unwrap()])
        .unwrap_err();
    // Refused by the CLI before it is sent: file:line:col, the line and a caret.
    let msg = format!("{err:#}");
    assert!(msg.contains("bad.toml:3:"), "{msg}");
    assert!(
        msg.contains("from = [\"tag:web\"") && msg.contains('^'),
        "{msg}"
    );

    // web may reach db tcp/5432 only.
    let t0 = set_policy(&mesh, &lab, "web-to-db.toml", WEB_TO_DB);
    let took = within(
        "new visibility on every agent",
        Duration::from_secs(1),
        || {
            peers(&mesh, "web") == ["db"]
                && peers(&mesh, "db") == ["web"]
                && peers(&mesh, "other").is_empty()
        },
    );
    let _ = t0;
    eprintln!("policy change 1 (web -> db tcp/5432) applied on all 3 agents in {took:?}");

    assert!(connects(&lab, "web", ip_db, 5432), "web -> db:5432");
    assert!(!connects(&lab, "db", ip_web, 8080), "db -> web:8080");
    assert!(!connects(&lab, "web", ip_db, 22), "web -> db:22");
    assert!(!connects(&lab, "other", ip_db, 5432), "other -> db:5432");
    assert!(!connects(&lab, "other", ip_web, 8080), "other -> web:8080");
    // The untagged node does not even see them.
    let st = mesh.status("other").unwrap();
    assert!(st.peers.is_empty(), "{:?}", st.peers);

    // Explain: the controller says which rule decides.
    let out = mesh
        .admin(&[
            "policy", "check", "--from", "web", "--to", "db", "--proto", "tcp", "--port", "5432",
            "--json",
        ])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allowed"], true, "{out}");
    assert_eq!(v["pairs"][0]["rule"], "web to db", "{out}");
    assert_eq!(v["pairs"][0]["line"], 2, "{out}");
    // The same from a node with the `weft` CLI (admin token, pinned controller).
    let token_path = mesh.controller.data_dir.join("admin.token");
    let out = mesh
        .weft(
            "web",
            &[
                "policy",
                "check",
                "--from",
                "web",
                "--to",
                "db",
                "--proto",
                "tcp",
                "--port",
                "5432",
                "--controller",
                &mesh.controller.url,
                "--token-file",
                token_path.to_str().unwrap(),
                "--pin-sha256",
                &mesh.controller.fingerprint,
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("allowed by rule \"web to db\" (line 2)"),
        "{text}"
    );
    assert!(
        mesh.admin(&[
            "policy", "check", "--from", "web", "--to", "db", "--proto", "tcp", "--port", "22",
        ])
        .is_err(),
        "port 22 is not allowed: exit 1"
    );
    // The agent's live view: `weft why-blocked` asks web's own engine.
    let ask = |node: &str, args: &[&str]| {
        let out = mesh.weft(node, args).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = ask("web", &["why-blocked", "db", "--port", "5432"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("outbound") && text.contains("allowed by rule \"web to db\" (line 2)"),
        "{text}"
    );
    let (ok, text) = ask("web", &["why-blocked", "db", "--port", "22"]);
    assert!(!ok, "web -> db:22 is blocked: exit 1\n{text}");
    assert!(text.contains("no rule allows it"), "{text}");
    // db's engine: web may open 5432 on db, db may not open 8080 on web.
    let (ok, text) = ask("db", &["why-blocked", "web", "--port", "5432", "--inbound"]);
    assert!(ok && text.contains("inbound"), "{text}");
    let (ok, text) = ask("db", &["why-blocked", "web", "--port", "8080", "--json"]);
    assert!(!ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["allowed"], false, "{text}");

    // Unauthorized traffic is dropped and counted exactly, per peer, on the
    // sender (egress, before encryption).
    std::thread::sleep(Duration::from_millis(300));
    let before = peer_drops(&mesh, "web", "db", "policy_no_rule");
    assert!(
        lab.python("web", UDP_BURST, &[&ip_db.to_string(), "22", "50"])
            .unwrap()
            .status
            .success()
    );
    let before_db = peer_drops(&mesh, "db", "web", "policy_no_rule");
    assert!(
        lab.python("db", UDP_BURST, &[&ip_web.to_string(), "8080", "30"])
            .unwrap()
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        peer_drops(&mesh, "web", "db", "policy_no_rule"),
        before + 50,
        "web's drops towards db"
    );
    assert_eq!(
        peer_drops(&mesh, "db", "web", "policy_no_rule"),
        before_db + 30,
        "db's drops towards web"
    );

    // An open flow web -> db:5432 ...
    let flow_log = lab.log_dir().join("flow.times");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        TCP_FLOW,
        &ip_db.to_string(),
        "5432",
        flow_log.to_str().unwrap(),
        "1",
        "600",
    ]);
    let mut flow = lab.spawn("web", "flow", &cmd).unwrap();
    within("the flow carries data", Duration::from_secs(5), || {
        std::fs::read_to_string(&flow_log).is_ok_and(|s| s.lines().count() >= 5)
    });

    // ... is cut when the policy stops allowing it; db -> web:8080 opens.
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let t1 = set_policy(&mesh, &lab, "db-to-web.toml", DB_TO_WEB);
    let wall_set = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let opened = within("db -> web:8080 allowed", Duration::from_secs(2), || {
        connects(&lab, "db", ip_web, 8080)
    });
    within("the flow process ends", Duration::from_secs(5), || {
        flow.try_wait().unwrap().is_some()
    });
    let last_echo: f64 = std::fs::read_to_string(&flow_log)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    // Negative: the flow was cut before the admin command even returned.
    let cut_after = last_echo - wall_set.as_secs_f64();
    eprintln!(
        "policy change 2 (db -> web tcp/8080 only): admin command took {:?}; db -> web:8080 connected {opened:?} after it returned; web's open flow to db:5432 carried its last echo at {cut_after:+.3}s relative to that",
        wall_set.saturating_sub(wall)
    );
    let _ = t1;
    assert!(cut_after < 1.0, "open flow cut after {cut_after:.3}s");
    assert!(opened < Duration::from_secs(1), "took {opened:?}");
    assert!(
        !connects(&lab, "web", ip_db, 5432),
        "web -> db:5432 now closed"
    );

    // Removing every rule closes everything: peers vanish from every map.
    let t2 = set_policy(&mesh, &lab, "empty.toml", "# nothing allowed\n");
    let _ = t2;
    let took = within("everyone isolated", Duration::from_secs(1), || {
        NODES.iter().all(|n| peers(&mesh, n).is_empty())
    });
    eprintln!("policy change 3 (empty: default deny) applied on all 3 agents in {took:?}");

    // Every change is in the audit log, by whom.
    let audit = mesh
        .admin(&["audit", "--target", "policy", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let entries = v["entries"].as_array().unwrap();
    // network.create appended the default rule (system generated it, admin
    // created the network), then three admin changes.
    assert_eq!(entries.len(), 4, "{audit}");
    assert!(entries.iter().all(|e| e["actor"] == "admin"), "{audit}");
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["detail"]["to_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
    drop(servers);
}

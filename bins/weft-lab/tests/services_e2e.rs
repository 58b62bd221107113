//! End-to-end: a named service with a virtual IP (issue 19), real binaries in
//! network namespaces. `db` is served by db1 and db2 (python TCP echo servers
//! on 5432 that prefix each answer with their node's name); the policy lets
//! `web` use `service:db` and nothing else. Asserted:
//!
//! - web resolves `db.svc.<network>.weft.internal` through its weft resolver
//!   to the VIP, and an echo round trip by name works (`weft service list`
//!   shows the service routed, with both instances healthy);
//! - killing db1's echo server moves new connections to db2 within 5 s
//!   (measured from the kill to the last connection that did not reach db2,
//!   printed), and `weft admin service show db` shows db1 unhealthy (so does
//!   db1's own `weft service list`);
//! - `other`, which the policy does not allow, gets NXDOMAIN, has no route to
//!   the VIP, and a connection to it fails;
//! - `weft service advertise db` on other is pending on the controller until
//!   withdrawn.
//!
//! Root only; FAILS without root. Binaries from `WEFT_BIN_DIR`.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code; the failover time is reported"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const NODES: [&str; 4] = ["db1", "db2", "web", "other"];
const PORT: u16 = 5432;
/// The longest a dead instance may keep getting new connections.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

/// An echo server answering each line with `<NAME> <line>` (threads, so the
/// provider's health checks never wait for a client).
const ECHO: &str = r#"
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
def serve(c):
    try:
        f = c.makefile("rb")
        for line in f:
            c.sendall(name.encode() + b" " + line)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// One connection to HOST:PORT (a name goes through the system resolver):
/// sends a line, prints the answer. Exit 0 only with an echo of the line.
const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=1.5)
    s.sendall(b"hello\n")
    answer = s.makefile("rb").readline().decode().strip()
except OSError as e:
    print("error %s" % e, flush=True)
    sys.exit(1)
print(answer, flush=True)
sys.exit(0 if answer.endswith(" hello") else 1)
"#;

/// `web uses db`; nothing else is allowed.
const POLICY: &str = r#"# web may use the service db; nothing else.
[[rule]]
name = "web uses db"
action = "allow"
from = "node:web"
to = "service:db"
"#;

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// One echo round trip from `node` to `host`: the answering node's name, or
/// why it failed.
fn echo(lab: &Lab, node: &str, host: &str) -> Result<String, String> {
    match lab.python(node, CLIENT, &[host, &PORT.to_string()]) {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() {
                Ok(text.split(' ').next().unwrap_or_default().to_owned())
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `dig NAME A` in `node` through its /etc/resolv.conf: (status, answers).
fn dig(lab: &Lab, node: &str, name: &str) -> (String, Vec<String>) {
    let netns = lab.netns(node).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "dig",
            "+noall",
            "+comments",
            "+answer",
            "+time=2",
            "+tries=1",
            name,
            "A",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers)
}

/// `weft admin service show db --json`.
fn show(mesh: &Mesh<'_>) -> serde_json::Value {
    let out = mesh.admin(&["service", "show", "db", "--json"]).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn instance_health(info: &serde_json::Value, node: &str) -> String {
    info["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["node"] == node)
        .and_then(|i| i["health"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

/// `weft --json service list` in `node`.
fn service_list(mesh: &Mesh<'_>, node: &str) -> serde_json::Value {
    let out = mesh.weft(node, &["--json", "service", "list"]).unwrap();
    assert!(
        out.status.success(),
        "weft service list in {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_service_by_name_fails_over_and_stays_invisible_to_others() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let lab = Lab::build(&Topology::office(&NODES)).expect("build the lab");
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let net = mesh.network.name.clone();
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&NODES, Duration::from_secs(30))
        .unwrap();

    let mut servers = Vec::new();
    for n in ["db1", "db2"] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", ECHO, n, &PORT.to_string()]);
        let mut p = lab.spawn(n, "echo", &cmd).unwrap();
        p.wait_for_tcp_listen(PORT, Duration::from_secs(10))
            .unwrap();
        servers.push(p);
    }
    let policy = lab.log_dir().join("services.toml");
    std::fs::write(&policy, POLICY).unwrap();
    mesh.admin(&["policy", "set", policy.to_str().unwrap()])
        .unwrap();
    let port = format!("{PORT}/tcp");
    mesh.admin(&[
        "service",
        "create",
        "db",
        "--network",
        &net,
        "--node",
        "db1,db2",
        "--port",
        &port,
    ])
    .unwrap();
    let info = show(&mesh);
    let vip = info["vip"].as_str().unwrap().to_owned();
    let fqdn = format!("db.svc.{net}.weft.internal");
    assert_eq!(info["fqdn"], fqdn.as_str(), "{info}");
    println!("db: {fqdn} -> {vip}");

    // Both providers check and report: healthy on the controller.
    let took = within("db1 and db2 healthy", Duration::from_secs(15), || {
        let info = show(&mesh);
        instance_health(&info, "db1") == "healthy" && instance_health(&info, "db2") == "healthy"
    });
    println!("both instances healthy {took:?} after create");

    // web resolves the name through its resolver, and reaches it by name.
    within(
        &format!("web resolves {fqdn} to {vip}"),
        Duration::from_secs(15),
        || dig(&lab, "web", &fqdn).1 == [vip.clone()],
    );
    let mut answered = Vec::new();
    within(
        "an echo round trip by name",
        Duration::from_secs(15),
        || echo(&lab, "web", &fqdn).map(|n| answered.push(n)).is_ok(),
    );
    for _ in 0..12 {
        answered.push(echo(&lab, "web", &fqdn).expect("echo by name"));
    }
    println!("answers by name: {answered:?}");
    assert!(answered.iter().all(|n| n == "db1" || n == "db2"));
    let list = service_list(&mesh, "web");
    let svc = &list["services"][0];
    assert_eq!(svc["service"]["name"], "db", "{list}");
    assert_eq!(svc["vip_routed"], true, "{list}");
    assert_eq!(svc["service"]["instances"].as_array().unwrap().len(), 2);

    // db1's server dies: new connections land on db2 only, within the bound.
    servers[0].kill().unwrap();
    let killed = Instant::now();
    let mut last_miss = Duration::ZERO;
    let mut streak = 0;
    let mut tries = Vec::new();
    while streak < 10 {
        let at = killed.elapsed();
        assert!(
            at < FAILOVER_BOUND + Duration::from_secs(10),
            "no steady failover to db2: {tries:?}"
        );
        match echo(&lab, "web", &vip) {
            Ok(n) if n == "db2" => streak += 1,
            other => {
                streak = 0;
                last_miss = killed.elapsed();
                tries.push((at, other));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "failover: the last new connection that missed db2 started {:?} after the kill \
         (bound {FAILOVER_BOUND:?}); misses: {tries:?}",
        last_miss
    );
    assert!(last_miss <= FAILOVER_BOUND, "{tries:?}");
    within("admin show: db1 unhealthy", Duration::from_secs(10), || {
        instance_health(&show(&mesh), "db1") == "unhealthy"
    });
    println!(
        "admin show: db1 unhealthy (seen {:?} after the kill)",
        killed.elapsed()
    );
    let text = mesh.admin(&["service", "show", "db"]).unwrap();
    assert!(text.contains("unhealthy"), "{text}");
    println!("{text}");
    let provided = service_list(&mesh, "db1");
    assert_eq!(provided["provides"][0]["health"], "unhealthy", "{provided}");
    assert!(
        provided["provides"][0]["detail"].as_str().is_some(),
        "{provided}"
    );

    // other: not allowed, so no name, no route, no connection.
    let (status, answers) = dig(&lab, "other", &fqdn);
    assert_eq!((status.as_str(), answers.len()), ("NXDOMAIN", 0));
    let route = lab
        .run("other", &["ip", "route", "get", &vip])
        .unwrap_or_else(|e| format!("{e:#}"));
    assert!(!route.contains("weft"), "other routes the VIP: {route}");
    assert!(echo(&lab, "other", &vip).is_err());
    let list = service_list(&mesh, "other");
    assert_eq!(list["services"].as_array().map(Vec::len), Some(0), "{list}");
    // web still resolves and connects.
    assert_eq!(echo(&lab, "web", &fqdn).as_deref(), Ok("db2"));

    // other offers to provide db: pending until an admin decides; withdrawn.
    let out = mesh
        .weft("other", &["service", "advertise", "db", "--port", &port])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("pending: "), "{text}");
    println!("weft service advertise db (other): {}", text.trim());
    assert_eq!(show(&mesh)["pending"], serde_json::json!(["other"]));
    let out = mesh
        .weft("other", &["service", "advertise", "db", "--withdraw"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("withdrawn: "), "{text}");
    assert_eq!(show(&mesh)["pending"], serde_json::json!([]));
}

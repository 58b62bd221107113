//! End-to-end: consuming a service through a localhost listener (`weft service
//! listen`) and by transparent interception (`weft service intercept`), with
//! real binaries in network namespaces. For each mode a 100 MiB stream from a
//! (the consumer) to a sink on b (the provider) runs over a relay-only path
//! (direct UDP cut at a's router); the relay is killed and restarted in the
//! middle, then the cut is lifted (a path switch to direct), and the sink's
//! sha256 must equal the sender's with the client exiting 0 (no reset). Root
//! only; these tests FAIL without root. Binaries from `WEFT_BIN_DIR`.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Nat, Net, Topology};

/// The service's port on the provider.
const PORT: u16 = 5000;
/// The bytes each stream carries.
const MIB: u64 = 100;

/// The provider's sink: for each connection, reads to EOF, answers the
/// sha256 of what it read, and closes. Threads, so the provider's health
/// checks (connect, close) never block a transfer.
const SINK: &str = r#"
import hashlib, socket, sys, threading
def serve(c):
    try:
        h = hashlib.sha256(); n = 0
        while True:
            b = c.recv(1 << 16)
            if not b: break
            h.update(b); n += len(b)
        c.sendall(("%s %d\n" % (h.hexdigest(), n)).encode())
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The consumer's client: sends MIB mebibytes of seeded random data to
/// HOST:PORT at most RATE MiB/s, printing progress (`sent N MiB`), then
/// half-closes and compares the sink's sha256 with its own. Exit 0 only
/// when they match; any reset is an exception (exit 1).
const CLIENT: &str = r#"
import hashlib, random, socket, sys, time
host, port, mib, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(19); h = hashlib.sha256()
s = socket.create_connection((host, port), timeout=120)
start = time.monotonic()
for i in range(mib):
    chunk = rnd.randbytes(1 << 20)
    h.update(chunk); s.sendall(chunk)
    print("sent %d MiB" % (i + 1), flush=True)
    ahead = (i + 1) / rate - (time.monotonic() - start)
    if ahead > 0: time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    b = s.recv(4096)
    if not b: break
    answer += b
mine = "%s %d" % (h.hexdigest(), mib << 20)
print("sender   " + mine, flush=True)
print("receiver " + answer.decode().strip(), flush=True)
print("took %.1f s" % (time.monotonic() - start), flush=True)
sys.exit(0 if answer.decode().strip() == mine else 2)
"#;

fn require_root() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn lab() -> Lab {
    require_root();
    Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .router("ra", Net::Internet, Nat::Easy)
            .router("rb", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("b", Net::lan("rb")),
    )
    .unwrap()
}

/// A controller and relay on infra, consumer a and provider b (direct at
/// first), the service `db` on b, and the sink running there.
fn mesh(lab: &Lab) -> (Mesh<'_>, weft_lab::Process) {
    let mut mesh = Mesh::start(lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent("a", Some(&token)).unwrap();
    mesh.start_agent("b", Some(&token)).unwrap();
    mesh.wait_full_mesh(&["a", "b"], Duration::from_secs(30))
        .unwrap();
    let mut sink = Command::new("python3");
    sink.args(["-c", SINK, &PORT.to_string()]);
    let mut sink = lab.spawn("b", "sink", &sink).unwrap();
    sink.wait_for_tcp_listen(PORT, Duration::from_secs(10))
        .unwrap();
    let port = format!("{PORT}/tcp");
    let name = mesh.network.name.clone();
    mesh.admin(&[
        "service",
        "create",
        "db",
        "--network",
        &name,
        "--node",
        "b",
        "--port",
        &port,
    ])
    .unwrap();
    (mesh, sink)
}

/// Runs `weft ARGS` in `node`; (success, stdout + stderr).
fn weft(mesh: &Mesh<'_>, node: &str, args: &[&str]) -> (bool, String) {
    let out = mesh.weft(node, args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Adds a consumer once a's map lists the service (the map reaches it a
/// moment after `service create`).
fn consume(mesh: &Mesh<'_>, args: &[&str]) {
    let mut last = String::new();
    let ok = weft_lab::timed_wait("the consumer starts", Duration::from_secs(20), || {
        let (ok, text) = weft(mesh, "a", args);
        last = text;
        ok
    });
    assert!(ok.is_ok(), "weft {}: {last}", args.join(" "));
    println!("weft {}: {}", args.join(" "), last.trim());
    // New streams go to healthy instances (unknown ones only when none is
    // healthy, and never to unhealthy ones): wait for b's first report.
    let mut last = String::new();
    let healthy = weft_lab::timed_wait("db healthy in a's map", Duration::from_secs(20), || {
        let (ok, text) = weft(mesh, "a", &["service", "list", "--json"]);
        last = text.clone();
        ok && serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v["services"][0]["service"]["instances"][0]["health"] == "healthy")
    });
    assert!(healthy.is_ok(), "weft service list: {last}");
}

/// Cuts direct UDP between the sites at a's router (the relay is TCP).
fn cut_direct(lab: &Lab) {
    lab.run("ra", &["nft", "add", "table", "ip", "cut"])
        .unwrap();
    lab.run(
        "ra",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "cut",
            "block",
            "{ type filter hook forward priority -10 ; }",
        ],
    )
    .unwrap();
    for dir in ["dport", "sport"] {
        lab.run(
            "ra",
            &[
                "nft", "add", "rule", "ip", "cut", "block", "udp", dir, "51820", "drop",
            ],
        )
        .unwrap();
    }
}

fn sent_mib(p: &weft_lab::Process) -> u64 {
    p.log()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("sent ")?.strip_suffix(" MiB")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// One 100 MiB transfer from a to `host:port` (the listener or the
/// intercepted address): on the relay, through a relay restart, then a
/// switch to direct; the checksums must match and the client exit 0.
fn transfer(lab: &Lab, mesh: &mut Mesh<'_>, host: &str, port: u16) {
    cut_direct(lab);
    within("a uses the relay to b", Duration::from_secs(15), || {
        mesh.path("a", "b").as_deref() == Some("relay")
    });
    let mut client = Command::new("python3");
    client.args(["-c", CLIENT, host, &port.to_string(), &MIB.to_string(), "6"]);
    let mut client = lab.spawn("a", "client", &client).unwrap();
    let started = Instant::now();
    if let Err(e) = weft_lab::timed_wait("20 MiB sent", Duration::from_secs(60), || {
        sent_mib(&client) >= 20
    }) {
        panic!(
            "{e}\nclient: {}\na: {}\nb: {}",
            client.log_tail(),
            mesh.agent_log_tail("a"),
            mesh.agent_log_tail("b")
        );
    }

    mesh.kill_relay().unwrap();
    let at = sent_mib(&client);
    println!("relay killed after {at} MiB ({:?})", started.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    mesh.restart_relay().unwrap();
    println!(
        "relay restarted ({:?}, {} MiB sent)",
        started.elapsed(),
        sent_mib(&client)
    );
    within(
        "the stream moves on after the restart",
        Duration::from_secs(60),
        // More than every socket buffer on the way holds (the client's,
        // weftd's both ways): the stream really moved over the new relay.
        || sent_mib(&client) >= at + 40,
    );
    println!(
        "stream moving again ({:?}, {} MiB)",
        started.elapsed(),
        sent_mib(&client)
    );

    // A path switch in the same stream: direct UDP comes back.
    lab.run("ra", &["nft", "delete", "table", "ip", "cut"])
        .unwrap();
    let took = within("a moves to direct", Duration::from_secs(15), || {
        mesh.path("a", "b").is_some_and(|p| p.starts_with("direct"))
    });
    println!("relay -> direct in {took:?} at {} MiB", sent_mib(&client));

    let status = client.wait_exit(Duration::from_secs(180)).unwrap();
    let log = client.log().unwrap();
    let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with("sent ")).collect();
    println!("{}", tail.join("\n"));
    assert!(
        status.success(),
        "the client failed ({status}): {}",
        tail.join("\n")
    );
    let digest = |who: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(who))
            .map(str::trim)
            .map(str::to_owned)
    };
    let (sender, receiver) = (digest("sender "), digest("receiver "));
    assert!(sender.is_some(), "{log}");
    assert_eq!(sender, receiver, "sha256 and length differ");
}

/// The consumer's counters from `weft service list --json` (streams, bytes),
/// when H4's listing is there.
fn consumer_counters(mesh: &Mesh<'_>) -> Option<(u64, u64)> {
    let (ok, text) = weft(mesh, "a", &["service", "list", "--json"]);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let c = v["services"].as_array()?.first()?["consumers"]
        .as_array()?
        .first()?
        .clone();
    Some((c["streams_total"].as_u64()?, c["bytes"].as_u64()?))
}

#[test]
fn a_localhost_listener_carries_100_mib_across_a_relay_restart_and_a_path_switch() {
    let lab = lab();
    let (mut mesh, _sink) = mesh(&lab);
    let listen = "127.0.0.1:15000";
    consume(&mesh, &["service", "listen", "db", listen]);
    transfer(&lab, &mut mesh, "127.0.0.1", 15000);
    if let Some((streams, bytes)) = consumer_counters(&mesh) {
        println!("consumer counters: {streams} streams, {bytes} bytes");
        assert!(streams >= 1 && bytes >= MIB << 20, "{streams} {bytes}");
    }

    // Refusals exit non-zero and change nothing.
    let (ok, text) = weft(
        &mesh,
        "a",
        &["service", "listen", "nosuch", "127.0.0.1:15001"],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("not in this node's map"), "{text}");
    let (ok, text) = weft(
        &mesh,
        "a",
        &["service", "listen", "db", listen, "--port", "5001"],
    );
    assert!(!ok, "{text}");

    // Removed: the port closes; removing again fails.
    let (ok, text) = weft(&mesh, "a", &["service", "listen", "db", listen, "--remove"]);
    assert!(ok, "{text}");
    let probe = lab.run("a", &["python3", "-c", &connect_probe("127.0.0.1", 15000)]);
    assert!(probe.is_err(), "still listening after --remove");
    let (ok, _) = weft(&mesh, "a", &["service", "listen", "db", listen, "--remove"]);
    assert!(!ok);
}

/// A python one-liner that exits 0 when a TCP connect to HOST:PORT succeeds.
fn connect_probe(host: &str, port: u16) -> String {
    format!("import socket; socket.create_connection(('{host}', {port}), timeout=3)")
}

fn tproxy_state(lab: &Lab) -> (bool, bool) {
    let table = lab
        .run("a", &["nft", "list", "table", "inet", "weft_tproxy"])
        .is_ok();
    let rule = lab
        .run("a", &["ip", "-4", "rule", "show", "pref", "7719"])
        .is_ok_and(|s| !s.trim().is_empty());
    (table, rule)
}

#[test]
fn interception_carries_100_mib_across_a_relay_restart_and_a_path_switch() {
    let lab = lab();
    let (mut mesh, _sink) = mesh(&lab);
    // An address the application "already uses": routable (a's default
    // route), answered by no one; only interception makes it work.
    let original = "192.0.2.10";
    let target = format!("{original}:{PORT}");
    assert!(
        lab.run("a", &["python3", "-c", &connect_probe(original, PORT)])
            .is_err(),
        "{target} answers before interception"
    );
    consume(&mesh, &["service", "intercept", "db", &target]);
    assert_eq!(tproxy_state(&lab), (true, true));
    transfer(&lab, &mut mesh, original, PORT);

    // weft down removes the table and the rule; up brings them back (the
    // consumer is kept in service-consumers.json).
    let (ok, text) = weft(&mesh, "a", &["down"]);
    assert!(ok, "{text}");
    assert_eq!(
        tproxy_state(&lab),
        (false, false),
        "left behind by weft down"
    );
    let (ok, text) = weft(&mesh, "a", &["up"]);
    assert!(ok, "{text}");
    within(
        "interception back after up",
        Duration::from_secs(20),
        || tproxy_state(&lab) == (true, true),
    );
    within(
        "an intercepted connect works again",
        Duration::from_secs(20),
        || {
            lab.run("a", &["python3", "-c", &connect_probe(original, PORT)])
                .is_ok()
        },
    );

    // Removed: nothing of it stays.
    let (ok, text) = weft(
        &mesh,
        "a",
        &["service", "intercept", "db", &target, "--remove"],
    );
    assert!(ok, "{text}");
    assert_eq!(
        tproxy_state(&lab),
        (false, false),
        "left behind by --remove"
    );
}

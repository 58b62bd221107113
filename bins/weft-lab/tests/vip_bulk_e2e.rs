//! End-to-end: bulk TCP through a service VIP with the TUN offloads on (issue
//! 19), real binaries in network namespaces. `blob` is served by `provider`
//! (a python server that either sinks what it gets and answers its SHA-256, or
//! sends a fixed stream); `consumer` sends 64 MiB to the VIP and fetches 64
//! MiB from it. Its TUN reads TSO super-packets whose segments the tunnel core
//! rewrites to the provider's address, and the replies from the VIP are
//! GRO-coalesced on its TUN writes: a wrong checksum anywhere would stall or
//! corrupt the transfer. Asserted: both digests match, both weftds opened
//! their TUNs with offloads, and the consumer counted no service drop after
//! the transfers started.
//!
//! Root only; FAILS without root. Binaries from `WEFT_BIN_DIR`.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code; the throughput is reported"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const NODES: [&str; 2] = ["consumer", "provider"];
const PORT: u16 = 7000;
const MIB: usize = 64;

/// `sink` connections: read to EOF, answer the SHA-256. `source`: send MIB
/// MiB of a fixed pattern (the client hashes it). The first line says which.
const SERVER: &str = r#"
import hashlib, socket, sys, threading
port, mib = int(sys.argv[1]), int(sys.argv[2])
block = bytes(range(256)) * 4096
def serve(c):
    try:
        f = c.makefile("rb")
        mode = f.readline().strip()
        if mode == b"sink":
            h = hashlib.sha256()
            while True:
                b = f.read(65536)
                if not b:
                    break
                h.update(b)
            c.sendall(h.hexdigest().encode() + b"\n")
        elif mode == b"source":
            for _ in range(mib):
                c.sendall(block)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// `up HOST PORT MIB`: sends MIB MiB, prints "<sent digest> <server's digest>".
/// `down HOST PORT MIB`: prints "<expected digest> <received digest>".
const CLIENT: &str = r#"
import hashlib, socket, sys
mode, host, port, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
block = bytes(range(256)) * 4096
want = hashlib.sha256(block * mib).hexdigest()
s = socket.create_connection((host, port), timeout=30)
if mode == "up":
    s.sendall(b"sink\n")
    for i in range(mib):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    got = s.makefile("rb").readline().decode().strip()
else:
    s.sendall(b"source\n")
    h = hashlib.sha256()
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b)
    got = h.hexdigest()
print(want, got, flush=True)
"#;

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `weft --json status`'s drop counters in `node`.
fn drops(mesh: &Mesh<'_>, node: &str, reason: &str) -> u64 {
    let out = mesh.weft(node, &["--json", "status"]).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["drops"][reason].as_u64().unwrap_or(0)
}

#[test]
fn bulk_tcp_through_a_vip_with_offloads_arrives_intact_both_ways() {
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
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SERVER, &PORT.to_string(), &MIB.to_string()]);
    let mut server = lab.spawn("provider", "blob-server", &cmd).unwrap();
    server
        .wait_for_tcp_listen(PORT, Duration::from_secs(10))
        .unwrap();
    let port = format!("{PORT}/tcp");
    mesh.admin(&[
        "service",
        "create",
        "blob",
        "--network",
        &net,
        "--node",
        "provider",
        "--port",
        &port,
        "--health",
        "none",
    ])
    .unwrap();
    let out = mesh.admin(&["service", "show", "blob", "--json"]).unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let vip = info["vip"].as_str().unwrap().to_owned();
    println!("blob: VIP {vip}");
    // weftd opened the TUNs with offloads: the kernel hands them TSO
    // super-packets (tx-tcp-segmentation on weft0).
    for n in NODES {
        let netns = lab.netns(n).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, "ethtool", "-k", "weft0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("tx-tcp-segmentation: on"),
            "{n}'s weft0 without TSO:\n{text}"
        );
    }
    // The consumer's map lists the service and its instance is usable.
    within("the VIP answers", Duration::from_secs(20), || {
        lab.python("consumer", CLIENT, &["down", &vip, &PORT.to_string(), "1"])
            .is_ok_and(|o| o.status.success())
    });
    let before =
        drops(&mesh, "consumer", "service_no_instance") + drops(&mesh, "consumer", "service_port");
    for mode in ["up", "down"] {
        let started = Instant::now();
        let out = lab
            .python(
                "consumer",
                CLIENT,
                &[mode, &vip, &PORT.to_string(), &MIB.to_string()],
            )
            .unwrap();
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "{mode}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let digests: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(digests.len(), 2, "{mode}: {text}");
        assert_eq!(digests[0], digests[1], "{mode}: the bytes changed");
        println!(
            "{mode}: {MIB} MiB through the VIP intact in {took:?} ({:.0} Mbit/s, debug build)",
            (MIB * 8 * 1024 * 1024) as f64 / took.as_secs_f64() / 1e6
        );
    }
    let after =
        drops(&mesh, "consumer", "service_no_instance") + drops(&mesh, "consumer", "service_port");
    assert_eq!(after, before, "service drops during the transfers");
    server.kill().unwrap();
}

//! Workload networking end to end (issue 18, item 5): `weft run --net
//! none|host-loopback|bridged|custom` on a real `weftd` in a lab node, each
//! mode proven by what the workload can and cannot reach, and nothing left
//! behind when the workload ends, nor after weftd is SIGKILLed and restarted.
//! Needs root and FAILS (never skips) without it. Build the binaries first
//! (`cargo build --bins`).
//!
//! The lab: `n1` runs the workloads; `n2` is an overlay peer with echo
//! servers on 7001 (the policy lets n1 in) and 7002 (it does not);
//! `controller` is outside (the internet side of n1's office NAT) with echo
//! servers on 7200 and 7201; n1 itself has echo servers bound to its
//! 127.0.0.1 on 7100 and 7101.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::scripts::{ECHO_SERVER, TCP_ECHO_CHECK};
use weft_lab::{Lab, Process, Topology};

const POLICY: &str = r#"# n1 may reach n2 on tcp/7001 only.
[[rule]]
name = "n1 to n2 echo"
action = "allow"
from = "node:n1"
to = "node:n2"
proto = "tcp"
ports = [7001]
"#;

/// `net.ipv4.ip_forward` of a lab host before weft (checked in `setup`).
const FORWARDING_BEFORE: &str = "0";

fn lab() -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    Lab::build(&Topology::office(&["n1", "n2"])).expect("build the lab")
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// An echo server in `node` on `bind:port`.
fn echo(lab: &Lab, node: &str, bind: &str, port: u16) -> Process {
    let script = ECHO_SERVER.replace("\"0.0.0.0\"", &format!("{bind:?}"));
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script, &port.to_string()]);
    let mut p = lab.spawn(node, &format!("echo-{port}"), &cmd).unwrap();
    p.wait_for_tcp_listen(port, Duration::from_secs(10))
        .unwrap();
    p
}

/// `weft run NET... -- CMD...` in n1; fails the test if the workload was not
/// created (the command's own exit status is the output's).
fn run(mesh: &Mesh<'_>, net: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(net);
    args.push("--");
    args.extend_from_slice(cmd);
    let out = mesh.weft("n1", &args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("weft run: workload "),
        "weft {}: the workload was not created: {stderr}",
        args.join(" ")
    );
    out
}

/// Whether a workload of mode `net` opens a TCP connection to `ip:port` and
/// gets a byte echoed (2 s).
fn reaches(mesh: &Mesh<'_>, net: &[&str], ip: Ipv4Addr, port: u16) -> bool {
    let (ip, port) = (ip.to_string(), port.to_string());
    run(
        mesh,
        net,
        &["python3", "-c", TCP_ECHO_CHECK, &ip, &port, "2"],
    )
    .status
    .success()
}

/// What workload networking may have left in n1: links, the table, records,
/// forwarding, namespace handles weftd holds. Empty: nothing.
fn leftovers(mesh: &Mesh<'_>, lab: &Lab) -> Vec<String> {
    let mut found = Vec::new();
    let links = lab.run("n1", &["ip", "-o", "link", "show"]).unwrap();
    for l in links.lines() {
        if l.contains("wfbr0") || l.contains("wfwl") {
            found.push(format!("link: {l}"));
        }
    }
    let tables = lab.run("n1", &["nft", "list", "tables"]).unwrap();
    if tables.contains("weft_wl") {
        found.push(format!("nft: {tables}"));
    }
    let dir = mesh.agents["n1"].state_dir.join("workloads");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        found.push(format!("file: {}", e.path().display()));
    }
    let fwd = lab
        .run("n1", &["cat", "/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    if fwd.trim() != FORWARDING_BEFORE {
        found.push(format!(
            "ip_forward {} (was {FORWARDING_BEFORE})",
            fwd.trim()
        ));
    }
    // (a SIGKILLed weftd has no /proc entry: it holds nothing)
    if let Some(p) = mesh.agents["n1"].process.as_ref()
        && let Ok(own) = std::fs::read_link(format!("/proc/{}/ns/net", p.pid()))
    {
        for e in std::fs::read_dir(format!("/proc/{}/fd", p.pid()))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = std::fs::read_link(e.path())
                && t.to_string_lossy().starts_with("net:[")
                && t != own
            {
                found.push(format!("weftd holds namespace {}", t.display()));
            }
        }
    }
    found
}

fn assert_clean(mesh: &Mesh<'_>, lab: &Lab, after: &str) {
    let mut last = Vec::new();
    let r = weft_lab::timed_wait(
        &format!("nothing left after {after}"),
        Duration::from_secs(3),
        || {
            last = leftovers(mesh, lab);
            last.is_empty()
        },
    );
    if let Err(e) = r {
        panic!("{e}: {last:#?}\n{}", mesh.agent_log_tail("n1"));
    }
}

/// A controller, n1 and n2 joined, the policy in force, echo servers up.
fn setup(lab: &Lab) -> (Mesh<'_>, Vec<Process>) {
    let fwd = lab
        .run("n1", &["cat", "/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    assert_eq!(
        fwd.trim(),
        FORWARDING_BEFORE,
        "the lab host forwards already"
    );
    let mut mesh = Mesh::start(lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(2).unwrap();
    for n in ["n1", "n2"] {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&["n1", "n2"], Duration::from_secs(30))
        .unwrap();
    let path = lab.log_dir().join("workload-policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    mesh.admin(&["policy", "set", path.to_str().unwrap()])
        .unwrap();
    let servers = vec![
        echo(lab, "n1", "127.0.0.1", 7100),
        echo(lab, "n1", "127.0.0.1", 7101),
        echo(lab, "n2", "0.0.0.0", 7001),
        echo(lab, "n2", "0.0.0.0", 7002),
        echo(lab, "controller", "0.0.0.0", 7200),
        echo(lab, "controller", "0.0.0.0", 7201),
    ];
    let n2 = mesh.overlay_ip("n2").unwrap();
    within(
        "the policy lets n1 reach n2:7001",
        Duration::from_secs(30),
        || lab.tcp_echoes("n1", n2, 7001),
    );
    within(
        "the policy refuses n1 -> n2:7002",
        Duration::from_secs(30),
        || {
            mesh.weft(
                "n1",
                &["why-blocked", "n2", "--proto", "tcp", "--port", "7002"],
            )
            .is_ok_and(|o| o.status.code() == Some(3))
        },
    );
    assert_clean(&mesh, lab, "start");
    (mesh, servers)
}

#[test]
fn each_mode_reaches_what_it_may_and_nothing_else_and_leaves_nothing() {
    let lab = lab();
    let (mesh, _servers) = setup(&lab);
    let local = Ipv4Addr::LOCALHOST;
    let n2 = mesh.overlay_ip("n2").unwrap();
    let outside = lab.addr("controller").unwrap();
    // n1 itself reaches the outside (through the office NAT).
    assert!(lab.tcp_echoes("n1", outside, 7200));

    // none: its own loopback works; nothing else.
    let none = ["--net", "none"];
    let own_lo = "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(1)\n\
                  c = socket.create_connection(s.getsockname(), timeout=2)\nprint('own loopback ok')";
    let out = run(&mesh, &none, &["python3", "-c", own_lo]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("own loopback ok"),
        "{out:?}"
    );
    assert!(
        !reaches(&mesh, &none, local, 7100),
        "none reached the node's 127.0.0.1:7100"
    );
    assert!(
        !reaches(&mesh, &none, outside, 7200),
        "none reached the outside"
    );
    assert!(!reaches(&mesh, &none, n2, 7001), "none reached the overlay");
    assert_clean(&mesh, &lab, "--net none");

    // host-loopback: the forwarded port of the node's loopback only.
    let hl = ["--net", "host-loopback", "--forward", "7100"];
    assert!(
        reaches(&mesh, &hl, local, 7100),
        "host-loopback missed its forwarded port"
    );
    assert!(
        !reaches(&mesh, &hl, local, 7101),
        "host-loopback reached a port not forwarded"
    );
    assert!(
        !reaches(&mesh, &hl, outside, 7200),
        "host-loopback reached the outside"
    );
    assert!(
        !reaches(&mesh, &hl, n2, 7001),
        "host-loopback reached the overlay"
    );
    assert_clean(&mesh, &lab, "--net host-loopback");

    // bridged: the outside, and the overlay under the node's policy.
    let br = ["--net", "bridged"];
    assert!(
        reaches(&mesh, &br, outside, 7200),
        "bridged missed the outside"
    );
    assert!(
        reaches(&mesh, &br, n2, 7001),
        "bridged missed n2:7001 (policy allows n1)"
    );
    assert!(
        !reaches(&mesh, &br, n2, 7002),
        "bridged reached n2:7002 (policy refuses n1)"
    );
    assert!(
        !reaches(&mesh, &br, local, 7100),
        "bridged reached the node's loopback"
    );
    // Names resolve through the node's resolver even though it listens on
    // the node's loopback (the namespace relays DNS to the gateway); in
    // --net none they do not.
    let conf = lab.run("n1", &["cat", "/etc/resolv.conf"]).unwrap();
    let first = conf
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .unwrap_or_default();
    assert!(
        first.starts_with("127."),
        "n1's resolver is not on loopback: {conf}"
    );
    let name = "n2.lab.weft.internal";
    let resolve = format!("import socket\nprint(socket.gethostbyname({name:?}))");
    let out = run(&mesh, &br, &["python3", "-c", &resolve]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == n2.to_string(),
        "bridged did not resolve {name}: {out:?}\n{}",
        lab.run("n1", &["cat", "/etc/resolv.conf"])
            .unwrap_or_default()
    );
    let out = run(&mesh, &none, &["python3", "-c", &resolve]);
    assert!(!out.status.success(), "none resolved {name}: {out:?}");
    // The workload's own address is on the bridge: n2 let it in above only
    // because it arrived masqueraded as n1's overlay address (a peer drops an
    // inner source that is not the sender's).
    let seen = run(
        &mesh,
        &br,
        &[
            "python3",
            "-c",
            "import socket,sys\ns=socket.create_connection((sys.argv[1],7001),timeout=2)\nprint(s.getsockname()[0])",
            &n2.to_string(),
        ],
    );
    assert!(seen.status.success(), "{seen:?}");
    assert!(
        String::from_utf8_lossy(&seen.stdout).starts_with("10.231.0."),
        "the workload's own address is on the bridge: {seen:?}"
    );
    assert_clean(&mesh, &lab, "--net bridged");

    // custom: only the --allow destinations, even where the policy allows more.
    let cu = ["--net", "custom", "--allow", &format!("{outside}:7200")];
    let cu: Vec<&str> = cu.iter().map(|s| s.as_ref()).collect();
    assert!(
        reaches(&mesh, &cu, outside, 7200),
        "custom missed its allowed destination"
    );
    assert!(
        !reaches(&mesh, &cu, outside, 7201),
        "custom reached a port not allowed"
    );
    assert!(
        !reaches(&mesh, &cu, n2, 7001),
        "custom reached the overlay without --allow"
    );
    let cu2 = [
        "--net",
        "custom",
        "--allow",
        &format!("{n2}:7001"),
        "--allow",
        &format!("{n2}:7002"),
    ];
    let cu2: Vec<&str> = cu2.iter().map(|s| s.as_ref()).collect();
    assert!(
        reaches(&mesh, &cu2, n2, 7001),
        "custom missed an allowed overlay peer"
    );
    assert!(
        !reaches(&mesh, &cu2, n2, 7002),
        "custom reached n2:7002: --allow does not override the overlay policy"
    );
    // A root command may rewrite its namespace's rules: weftd restores them
    // within 5 s. As --user nobody it cannot touch them at all.
    let (o, p) = (outside.to_string(), "7201");
    let escape = format!(
        "nft flush ruleset; python3 -c \"$CHECK\" {o} {p} 2 && echo open; \
         sleep 7; python3 -c \"$CHECK\" {o} {p} 2 || echo closed"
    );
    let out = mesh
        .weft(
            "n1",
            &[
                "run",
                "--net",
                "custom",
                "--allow",
                &format!("{o}:7200"),
                "--",
                "env",
                &format!("CHECK={TCP_ECHO_CHECK}"),
                "sh",
                "-c",
                &escape,
            ],
        )
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("open") && said.contains("closed"), "{out:?}");
    let cu3 = [
        "--net",
        "custom",
        "--user",
        "nobody",
        "--allow",
        &format!("{o}:7200"),
    ];
    let cu3: Vec<&str> = cu3.iter().map(|s| s.as_ref()).collect();
    let out = run(&mesh, &cu3, &["sh", "-c", "nft flush ruleset"]);
    assert!(!out.status.success(), "nobody flushed the rules: {out:?}");
    assert!(
        reaches(&mesh, &cu3, outside, 7200),
        "custom as nobody missed its allowed destination"
    );
    assert!(
        !reaches(&mesh, &cu3, outside, 7201),
        "custom as nobody reached a port not allowed"
    );
    assert_clean(&mesh, &lab, "--net custom");

    // A process the command left running keeps the namespace until it ends.
    let out = run(&mesh, &br, &["sh", "-c", "sleep 2 >/dev/null 2>&1 &"]);
    assert!(out.status.success(), "{out:?}");
    let kept = leftovers(&mesh, &lab);
    assert!(
        kept.iter().any(|l| l.contains("wfwl")),
        "the namespace went while a process ran in it: {kept:#?}"
    );
    assert_clean(&mesh, &lab, "the left-running process's end");

    // Bad input is refused before anything is made.
    let out = mesh
        .weft(
            "n1",
            &["run", "--net", "bridged", "--forward", "80", "--", "true"],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host-loopback"),
        "{out:?}"
    );
    // The command's exit status is weft run's.
    let out = run(&mesh, &none, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_clean(&mesh, &lab, "the refusals");
}

/// Starts `weft run --net MODE -- sh -c 'echo $$ > PIDFILE; exec sleep 600'`
/// in n1 in the background; the workload's pid once it runs.
fn start_sleeper(
    mesh: &Mesh<'_>,
    lab: &Lab,
    net: &[&str],
    name: &str,
) -> (std::process::Child, u32) {
    let pidfile = lab.log_dir().join(format!("{name}.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let a = &mesh.agents["n1"];
    let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.netns("n1").unwrap()])
        .arg(weft_lab::bin_path("weft").unwrap())
        .arg("--socket")
        .arg(&a.socket)
        .arg("run")
        .args(net)
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let mut pid = 0;
    within(&format!("{name} running"), Duration::from_secs(10), || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid != 0
    });
    (child, pid)
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Kills the workloads a failed test would otherwise leave running.
struct Sleepers(Vec<u32>);
impl Drop for Sleepers {
    fn drop(&mut self) {
        for p in &self.0 {
            kill(*p);
        }
    }
}

#[test]
fn after_weftd_is_sigkilled_the_next_one_sweeps_and_adopts() {
    let lab = lab();
    let (mut mesh, _servers) = setup(&lab);
    let mut sleepers = Sleepers(Vec::new());
    let outside = lab.addr("controller").unwrap();

    // A workload that ends while weftd is dead is swept at the next start.
    let (mut cli, pid) = start_sleeper(&mesh, &lab, &["--net", "custom"], "ends-while-dead");
    sleepers.0.push(pid);
    mesh.kill_agent("n1").unwrap();
    kill(pid);
    let _ = cli.wait();
    assert!(
        !leftovers(&mesh, &lab).is_empty(),
        "a SIGKILLed weftd left nothing to sweep?"
    );
    mesh.start_agent("n1", None).unwrap();
    assert_clean(
        &mesh,
        &lab,
        "weftd SIGKILL, the workload's end, and weftd's restart",
    );

    // A workload still running is adopted: kept (and working), then removed
    // when it ends.
    let (mut cli, pid) = start_sleeper(&mesh, &lab, &["--net", "bridged"], "outlives-weftd");
    sleepers.0.push(pid);
    let hl = ["--net", "host-loopback", "--forward", "7100"];
    let (mut hl_cli, hl_pid) = start_sleeper(&mesh, &lab, &hl, "forwards-outlive-weftd");
    sleepers.0.push(hl_pid);
    mesh.kill_agent("n1").unwrap();
    mesh.start_agent("n1", None).unwrap();
    within(
        "the running workload adopted",
        Duration::from_secs(10),
        || mesh.agent_log("n1").contains("adopted a workload"),
    );
    let still = leftovers(&mesh, &lab);
    assert!(
        still.iter().any(|l| l.contains("wfwl")),
        "the adopted workload lost its veth: {still:#?}"
    );
    // Its network still works: a process entering its namespace reaches the outside.
    let check = Command::new("nsenter")
        .args([
            &format!("--net=/proc/{pid}/ns/net"),
            "python3",
            "-c",
            TCP_ECHO_CHECK,
        ])
        .args([&outside.to_string(), "7200", "2"])
        .status()
        .unwrap();
    assert!(
        check.success(),
        "the adopted workload cannot reach the outside"
    );
    // The adopted host-loopback workload has its forwarded port again.
    let check = Command::new("nsenter")
        .args([
            &format!("--net=/proc/{hl_pid}/ns/net"),
            "python3",
            "-c",
            TCP_ECHO_CHECK,
            "127.0.0.1",
            "7100",
            "2",
        ])
        .status()
        .unwrap();
    assert!(
        check.success(),
        "the adopted host-loopback workload lost its forwarded port"
    );
    kill(pid);
    kill(hl_pid);
    let _ = cli.wait();
    let _ = hl_cli.wait();
    assert_clean(&mesh, &lab, "the adopted workload's end");
}

//! End-to-end tests of the lab. They need root (network namespaces, nftables) and
//! FAIL, with a message saying so, when not run as root: no silent skip.
//! Each test builds its own lab; under cargo-nextest they run in parallel and
//! must not collide.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "test helpers panic on failure and show the self-test table"
)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_lab::{Impairment, Lab, LabError, Nat, Net, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_weft-lab");

fn require_root() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
}

/// Names of all namespaces on the host.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn run_namespaces(run_id: &str) -> Vec<String> {
    let prefix = format!("wl-{run_id}-");
    let mut names: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn selftest(profile: &str) {
    require_root();
    let out = Command::new(BIN)
        .args(["selftest", "--profile", profile])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "selftest {profile} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn selftest_open() {
    selftest("open");
}

#[test]
fn selftest_easy() {
    selftest("easy");
}

#[test]
fn selftest_hard() {
    selftest("hard");
}

#[test]
fn selftest_fullcone() {
    selftest("fullcone");
}

#[test]
fn selftest_udp_blocked() {
    selftest("udp-blocked");
}

#[test]
fn selftest_cgnat() {
    selftest("cgnat");
}

fn small() -> Topology {
    Topology::new()
        .host("srv", Net::Internet)
        .router("home", Net::Internet, Nat::Easy)
        .host("a", Net::lan("home"))
        .host("b", Net::lan("home"))
}

fn observer(lab: &Lab, node: &str) -> weft_lab::Process {
    let mut cmd = Command::new(BIN);
    cmd.args(["__udp-observer", "--listen", "0.0.0.0:3478"]);
    let mut p = lab.spawn(node, "observer", &cmd).unwrap();
    p.wait_for_log("observer listening", Duration::from_secs(10))
        .unwrap();
    p.wait_for_udp_bound(3478, Duration::from_secs(10)).unwrap();
    p.wait_for_tcp_listen(3478, Duration::from_secs(10))
        .unwrap();
    p
}

fn root_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn dropping_the_lab_removes_everything() {
    require_root();
    let links_before = root_links();
    let lab = Lab::build(&small()).unwrap();
    let run_id = lab.run_id().to_owned();
    let mut expected = lab.namespaces();
    expected.sort();
    assert_eq!(run_namespaces(&run_id), expected);
    // Nothing of the lab lives in the root namespace.
    assert_eq!(root_links(), links_before);
    assert!(
        Path::new("/run/weft-lab")
            .join(&run_id)
            .join("owner")
            .is_file()
    );

    // Routing works: LAN to LAN, LAN to internet through the NAT, not inward.
    assert!(lab.ping("a", lab.addr("b").unwrap()).unwrap());
    assert!(lab.ping("a", lab.addr("srv").unwrap()).unwrap());
    assert!(!lab.ping("srv", lab.addr("a").unwrap()).unwrap());

    let obs = observer(&lab, "srv");
    let pid = obs.pid();
    // Leak the handle on purpose: teardown must kill the process anyway.
    std::mem::forget(obs);
    let reaper = lab.reaper_pid().unwrap();
    drop(lab);
    assert_eq!(run_namespaces(&run_id), Vec::<String>::new());
    assert!(!Path::new("/run/weft-lab").join(&run_id).exists());
    eventually("the leaked process to die", Duration::from_secs(5), || {
        !pid_alive(pid)
    });
    eventually("the reaper to exit", Duration::from_secs(5), || {
        !pid_alive(reaper)
    });
}

#[test]
fn a_panic_while_the_lab_is_alive_still_cleans_up() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = Lab::build(&small()).unwrap();
        tx.send(lab.run_id().to_owned()).unwrap();
        panic!("test panics on purpose");
    })
    .join();
    assert!(result.is_err());
    let run_id = rx.recv().unwrap();
    assert_eq!(run_namespaces(&run_id), Vec::<String>::new());
}

/// Starts `weft-lab __hold` and returns it with its run id, reaper pid and child pid.
fn hold() -> (Child, String, u32, u32) {
    let mut child = Command::new(BIN)
        .arg("__hold")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in hold output {line:?}"))
            .to_owned()
    };
    let run_id = field("run=");
    let reaper = field("reaper=").parse().unwrap();
    let inner = field("child=").parse().unwrap();
    assert!(
        !run_namespaces(&run_id).is_empty(),
        "hold built nothing: {line}"
    );
    assert!(pid_alive(inner));
    (child, run_id, reaper, inner)
}

#[test]
fn sigkill_of_the_owner_leaves_nothing_behind() {
    require_root();
    let (mut child, run_id, reaper, inner) = hold();
    child.kill().unwrap(); // SIGKILL: no destructor, no signal handler runs.
    child.wait().unwrap();
    eventually(
        "the reaper to remove the namespaces",
        Duration::from_secs(5),
        || run_namespaces(&run_id).is_empty(),
    );
    eventually("the lab's processes to die", Duration::from_secs(5), || {
        !pid_alive(inner) && !pid_alive(reaper)
    });
    assert!(!Path::new("/run/weft-lab").join(&run_id).exists());
}

#[test]
fn sweep_removes_runs_whose_owner_died() {
    require_root();
    let (mut child, run_id, reaper, _) = hold();
    // Kill the reaper first, then the owner: only a sweep can clean up now.
    assert!(
        Command::new("kill")
            .args(["-9", &reaper.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually("the reaper to die", Duration::from_secs(5), || {
        !pid_alive(reaper)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let left = run_namespaces(&run_id);
    let out = Command::new(BIN).arg("sweep").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sweep failed: {out:?}");
    // A concurrent test's lab may have swept first (labs sweep when they start).
    if !left.is_empty() && Path::new("/run/weft-lab").join(&run_id).exists() {
        assert!(
            stdout.contains(&run_id),
            "sweep did not mention {run_id}:\n{stdout}"
        );
    }
    assert_eq!(run_namespaces(&run_id), Vec::<String>::new(), "{stdout}");
    assert!(!Path::new("/run/weft-lab").join(&run_id).exists());
}

#[test]
fn ctrl_c_and_sigterm_tear_the_lab_down() {
    require_root();
    for signal in ["-INT", "-TERM"] {
        let (mut child, run_id, _, _) = hold();
        assert!(
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{signal}: {status}");
        // The handler tears down before exiting: nothing is left at this point.
        assert_eq!(run_namespaces(&run_id), Vec::<String>::new(), "{signal}");
    }
}

#[test]
fn sweep_leaves_live_runs_alone() {
    require_root();
    let lab = Lab::build(&small()).unwrap();
    let report = weft_lab::sweep().unwrap();
    assert!(report.live.contains(&lab.run_id().to_owned()), "{report:?}");
    assert_eq!(run_namespaces(lab.run_id()).len(), lab.namespaces().len());
}

#[test]
fn parallel_labs_use_the_same_addresses_without_colliding() {
    require_root();
    let labs: Vec<Lab> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| Lab::build(&small()).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(labs[0].run_id(), labs[1].run_id());
    for lab in &labs {
        assert_eq!(lab.addr("srv").unwrap(), labs[0].addr("srv").unwrap());
        assert!(lab.ping("a", lab.addr("srv").unwrap()).unwrap());
    }
}

#[test]
fn process_helpers_capture_logs_and_wait() {
    require_root();
    let lab = Lab::build(&small()).unwrap();
    let mut obs = observer(&lab, "srv");
    assert_eq!(obs.log_path(), lab.log_dir().join("srv-observer.log"));
    lab.wait_for_tcp_port("srv", 3478, Duration::from_secs(5))
        .unwrap();
    lab.wait_for_udp_port("srv", 3478, Duration::from_secs(5))
        .unwrap();
    // The port is only bound in srv's namespace, not in a's.
    let err = lab
        .wait_for_tcp_port("a", 3478, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, LabError::Timeout { .. }), "{err}");

    // A probe through the NAT sees the router's public address.
    let srv = format!("{}:3478", lab.addr("srv").unwrap());
    let out = lab.run("a", &[BIN, "__udp-probe", "--to", &srv]).unwrap();
    assert!(
        out.contains(&format!("{}:", lab.addr("home").unwrap())),
        "{out}"
    );

    // A process that exits early fails the wait with its log.
    let mut sh = Command::new("sh");
    sh.args(["-c", "echo about to fail; echo oops >&2; exit 3"]);
    let mut early = lab.spawn("a", "early", &sh).unwrap();
    let err = early
        .wait_for_log("never printed", Duration::from_secs(10))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("exited") && msg.contains("oops") && msg.contains("about to fail"),
        "{msg}"
    );

    // Graceful stop.
    let status = obs.stop(Duration::from_secs(5)).unwrap();
    assert!(!status.success());
    assert!(obs.log().unwrap().contains("observer listening"));
}

#[test]
fn impairments_apply_and_change_at_runtime() {
    require_root();
    let lab = Lab::build(
        &Topology::new()
            .host("x", Net::Internet)
            .host("y", Net::Internet)
            .impair("x", Impairment::loss(100.0)),
    )
    .unwrap();
    let y = lab.addr("y").unwrap();
    assert!(!lab.ping("x", y).unwrap(), "100% loss set at build time");
    lab.impair("x", Impairment::NONE).unwrap();
    // The neighbour entry may have failed under 100% loss; give ARP a few retries
    // (a loaded CI machine is slow to answer).
    eventually("ping after clearing", Duration::from_secs(8), || {
        lab.ping("x", y).unwrap_or(false)
    });
    lab.impair("x", Impairment::loss(100.0)).unwrap();
    assert!(!lab.ping("x", y).unwrap(), "100% loss set at runtime");
    lab.impair("x", Impairment::NONE).unwrap();

    // Delay works on every kernel: netem where present, the userspace wire
    // otherwise.
    lab.impair("x", Impairment::delay(Duration::from_millis(60)))
        .unwrap();
    let (_, avg, _) = ping_stats(&lab, "x", y, 3, "0.2");
    assert!(
        avg >= 110.0,
        "60 ms each way gives >= 120 ms RTT, got {avg} ms"
    );
    lab.impair("x", Impairment::NONE).unwrap();
}

/// Pings `to` from `node` `count` times at `interval` seconds and returns
/// (received, average RTT in ms, transmitted).
fn ping_stats(
    lab: &Lab,
    node: &str,
    to: std::net::Ipv4Addr,
    count: u32,
    interval: &str,
) -> (u32, f64, u32) {
    let mut cmd = Command::new("ping");
    cmd.args([
        "-c",
        &count.to_string(),
        "-i",
        interval,
        "-W",
        "2",
        "-n",
        "-q",
        &to.to_string(),
    ]);
    let out = lab.spawn(node, "ping", &cmd).unwrap();
    let mut out = out;
    out.wait_exit(Duration::from_secs(u64::from(count) + 30))
        .unwrap();
    let log = out.log().unwrap();
    let sent_recv = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in {log}"));
    let nums: Vec<u32> = sent_recv
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    let avg = log
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (nums[1], avg, nums[0])
}

#[test]
fn userspace_wire_delays_and_drops_as_asked() {
    require_root();
    let lab = Lab::build(
        &Topology::new()
            .host("x", Net::Internet)
            .host("y", Net::Internet),
    )
    .unwrap();
    let y = lab.addr("y").unwrap();
    assert!(lab.ping("x", y).unwrap());

    // 50 ms each way: a round trip takes about 100 ms.
    lab.impair_with_wire("x", "eth0", Impairment::delay(Duration::from_millis(50)))
        .unwrap();
    let (received, avg, sent) = ping_stats(&lab, "x", y, 10, "0.1");
    println!("wire 50 ms each way: {received}/{sent} answered, average RTT {avg:.1} ms");
    assert_eq!(received, sent);
    assert!(
        (99.0..140.0).contains(&avg),
        "expected about 100 ms, got {avg} ms"
    );

    // TCP with segmentation offload and partial checksums crosses the wire.
    let (bytes, out) = lab.iperf3_bytes("x", "y", y, 2).unwrap();
    println!("iperf3 through the wire (100 ms RTT, 2 s): {bytes} bytes");
    assert!(bytes > 1_000_000.0, "{out}");

    // 10 % loss per direction, no delay: a round trip is lost with 1 - 0.9² = 19 %.
    lab.impair_with_wire("x", "eth0", Impairment::loss(10.0))
        .unwrap();
    let before = lab.wire_stats("x", "eth0").unwrap();
    let (received, _, sent) = ping_stats(&lab, "x", y, 400, "0.005");
    let lost = f64::from(sent - received) / f64::from(sent);
    println!(
        "wire 10 % loss each way: {received}/{sent} answered ({:.1} % lost)",
        lost * 100.0
    );
    // 400 trials at 19 %: standard deviation about 2 %.
    assert!((0.11..0.27).contains(&lost), "round-trip loss {lost}");
    let stats = lab.wire_stats("x", "eth0").unwrap();
    for (dir, was) in [
        (stats.outbound, before.outbound),
        (stats.inbound, before.inbound),
    ] {
        let lost = dir.lost - was.lost;
        let rate = lost as f64 / (lost + dir.forwarded - was.forwarded) as f64;
        assert!((0.05..0.16).contains(&rate), "{stats:?}");
    }

    // Removing the wire restores the plain link.
    lab.impair_with_wire("x", "eth0", Impairment::NONE).unwrap();
    assert!(lab.wire_stats("x", "eth0").is_none());
    let (received, avg, sent) = ping_stats(&lab, "x", y, 5, "0.1");
    assert_eq!(received, sent);
    assert!(avg < 20.0, "{avg}");
}

#[test]
fn non_root_users_are_told_to_use_root() {
    require_root();
    // Drop to nobody for one run of the binary.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "sweep",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("weft-lab needs root (network namespaces, nftables)"),
        "{stderr}"
    );
}

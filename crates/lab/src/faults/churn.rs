//! The policy-churn case (in the overlay group's lab): 100 policy edits under
//! traffic. Allowed flows (iperf3, ping, an open TCP flow a->b) must never be
//! cut; a flow c->b:7000 that every other edit allows must open after each such
//! edit and be cut after each other one.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Tally;
use super::overlay::AB;
use super::util::{arg, last_json, lines, py, py_output, run_bounded, secs, set_policy};
use crate::mesh::Mesh;
use crate::scripts::ECHO_SERVER;
use crate::scripts::{TCP_ECHO_CHECK, TCP_FLOW};
use crate::{Lab, timed_wait, wait_until};

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

pub(super) fn policy_churn(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
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
        &py(TCP_FLOW, &[&b, "7100", arg(&ab_log)?, "1.0", "300"]),
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
        "{} edits in {} ({} ms per admin policy set, {} ms per opening, {} ms per cut); c->b:7000 opened {}/{}, open flow cut {}/{} (slowest {}), refused after cut {}/{}; a->b flow {} echoes, alive {ab_alive}; iperf3 {} runs, {} failed, {} empty seconds, slowest second {} KB; ping {}/{}",
        e.applied,
        secs(window),
        e.admin.as_millis() / e.applied.max(1) as u128,
        e.open_wait.as_millis() / (e.opened.max(1) as u128),
        e.cut_wait.as_millis() / (e.cut.max(1) as u128),
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
    /// Time spent in `weft admin policy set`.
    admin: Duration,
    /// Time spent waiting for c->b:7000 to open, and for open flows to be cut.
    open_wait: Duration,
    cut_wait: Duration,
    problems: Vec<String>,
}

/// The churn itself: `n` edits; after each, what it allows must open and what it
/// closes must be cut, each within 2 s.
fn churn_edits(mesh: &Mesh<'_>, b: &str, n: usize) -> anyhow::Result<Edits> {
    let lab = mesh.lab();
    let mut e = Edits::default();
    let mut flow: Option<crate::Process> = None;
    let connects = |timeout: &str| -> bool {
        py_output(lab, "c", TCP_ECHO_CHECK, &[b, "7000", timeout]).is_ok_and(|o| o.status.success())
    };
    for i in 0..n {
        // The flow the coming edit is to cut must still be alive before it.
        let died = flow
            .as_mut()
            .is_some_and(|p| p.try_wait().is_ok_and(|s| s.is_some()));
        if died {
            flow = None;
            e.problems.push(format!(
                "edit {i}: the c->b:7000 flow ended before the edit that closes it"
            ));
        }
        let t0 = Instant::now();
        set_policy(mesh, "churn.toml", &churn_policy(i)).with_context(|| format!("edit {i}"))?;
        e.admin += t0.elapsed();
        e.applied += 1;
        if i.is_multiple_of(2) {
            let t1 = Instant::now();
            let opened = wait_until("c->b:7000 opens", Duration::from_secs(2), || {
                Ok(connects("0.5"))
            });
            e.open_wait += t1.elapsed();
            if opened.is_err() {
                e.problems
                    .push(format!("edit {i}: c->b:7000 did not open within 2 s"));
                continue;
            }
            e.opened += 1;
            let log = lab.log_dir().join(format!("churn-cb-{i}.flow"));
            let mut p = lab.spawn(
                "c",
                &format!("flow-cb-{i}"),
                &py(TCP_FLOW, &[b, "7000", arg(&log)?, "0.2", "30"]),
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
                let t1 = Instant::now();
                let cut = timed_wait("c->b flow cut", Duration::from_secs(2), || {
                    p.try_wait().is_ok_and(|s| s.is_some())
                });
                e.cut_wait += t1.elapsed();
                match cut {
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

//! The control group: the controller and a relay on one internet host (`infra`),
//! a flooding host on the internet (`flood`), agents a and b behind NATs that
//! drop UDP (so they meet only through the relay), and c and n behind an easy
//! NAT (c registers during the challenge flood, n tries cleartext). The cases
//! that restart or break the controller come last.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::py::{ACCEPT_LOG, CHALLENGE_FLOOD, HEALTH_PROBE, IDLE_CONNS, TOKEN_WRITER};
use super::util::{arg, last_json, lines, py, py_output, run_bounded, secs};
use super::{CaseResult, Tally};
use crate::mesh::{CONTROLLER_PORT, Mesh, NetworkSpec, RELAY_PORT, STUN_ALT_PORT, STUN_PORT};
use crate::{Lab, Nat, Net, Process, Topology, bin_path, timed_wait, wait_until};

pub(super) fn run(names: &[&str], progress: &mut dyn FnMut(&CaseResult)) -> Vec<CaseResult> {
    super::run_group(
        names,
        progress,
        &Topology::new()
            .host("infra", Net::Internet)
            .host("flood", Net::Internet)
            .router("ra", Net::Internet, Nat::UdpBlocked)
            .router("rb", Net::Internet, Nat::UdpBlocked)
            .router("rc", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("b", Net::lan("rb"))
            .host("c", Net::lan("rc"))
            .host("n", Net::lan("rc")),
        setup,
        |name, mesh, t| match name {
            "relay-restart" => relay_restart(mesh, t),
            "stream-flapping" => stream_flapping(mesh, t),
            "challenge-flood" => challenge_flood(mesh, t),
            "idle-connections" => idle_connections(mesh, t),
            "token-cleartext" => token_cleartext(mesh, t),
            "controller-sigkill" => controller_sigkill(mesh, t),
            "state-loss" => state_loss(mesh, t),
            other => bail!("case {other} is not in the control group"),
        },
    )
}

fn setup(lab: &Lab) -> anyhow::Result<Mesh<'_>> {
    let mut mesh = Mesh::start(lab, "infra", NetworkSpec::default())?;
    mesh.start_relay("infra")?;
    let token = mesh.token_file(2)?;
    mesh.start_agent("a", Some(&token))?;
    mesh.start_agent("b", Some(&token))?;
    mesh.wait_full_mesh(&["a", "b"], Duration::from_secs(30))?;
    Ok(mesh)
}

/// A file in the log directory whose existence tells a helper to stop.
fn stop_file(lab: &Lab, name: &str) -> PathBuf {
    lab.log_dir().join(format!("{name}.stop"))
}

/// Starts the Python program `script` on the flooding host as process `name`
/// with `args`, then the stop file `stop` and a 180 s limit (the flooders' last
/// two arguments).
fn spawn_in_flood(
    lab: &Lab,
    name: &str,
    script: &str,
    args: &[&str],
    stop: &Path,
) -> anyhow::Result<Process> {
    let mut all = args.to_vec();
    all.extend([arg(stop)?, "180"]);
    Ok(lab.spawn("flood", name, &py(script, &all))?)
}

fn touch(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, b"").with_context(|| format!("cannot create {}", path.display()))
}

/// Waits for a helper to exit and returns the JSON report it printed last.
fn report_of(p: &mut Process, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let status = p.wait_exit(timeout)?;
    last_json(&p.log()?).with_context(|| {
        format!(
            "{} printed no report ({status}): {}",
            p.name(),
            p.log_tail()
        )
    })
}

fn relay_restart(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let ip_b = mesh.overlay_ip("b")?;
    let path = mesh.path("a", "b").unwrap_or_default();
    if path != "relay" {
        bail!("a reaches b over `{path}`, not the relay");
    }
    wait_until("a pings b", Duration::from_secs(10), || lab.ping("a", ip_b))?;
    mesh.kill_relay()?;
    let down = lab.ping_once("a", ip_b);
    let start = Instant::now();
    mesh.restart_relay()?;
    let took = timed_wait(
        "a pings b through the restarted relay",
        Duration::from_secs(15),
        || lab.ping_once("a", ip_b),
    )
    .map(|_| start.elapsed());
    t.count(format!(
        "path before: relay; ping with the relay dead: {down}; pings again {} after the restart",
        took.as_ref()
            .map_or_else(|_| "never (15 s)".to_owned(), |d| secs(*d))
    ));
    t.require(took.is_ok(), "a does not ping b within 15 s of the restart");
    Ok(())
}

fn map_version(mesh: &Mesh<'_>, node: &str) -> Option<u64> {
    mesh.try_status(node)?.controller?.map_version
}

fn connected(mesh: &Mesh<'_>, node: &str) -> bool {
    mesh.try_status(node)
        .and_then(|s| s.controller)
        .is_some_and(|c| c.connected)
}

fn streams_opened(mesh: &Mesh<'_>, node: &str) -> usize {
    mesh.agents
        .get(node)
        .and_then(|a| a.process.as_ref())
        .and_then(|p| p.log().ok())
        .map_or(0, |l| l.matches("map stream open").count())
}

fn stream_flapping(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let infra = lab.addr("infra")?.to_string();
    const FLAPS: usize = 6;
    wait_until("a connected", Duration::from_secs(30), || {
        Ok(connected(mesh, "a"))
    })?;
    // Let the presence of a settle before counting.
    std::thread::sleep(Duration::from_secs(2));
    let v0 = map_version(mesh, "b").context("b has no map version")?;
    let opened0 = streams_opened(mesh, "a");
    let mut seen = BTreeSet::from([v0]);
    let start = Instant::now();
    let mut flaps = 0;
    for _ in 0..FLAPS {
        let (ok, text) = run_bounded(
            lab,
            "a",
            5,
            &[
                "ss",
                "-K",
                "dst",
                &infra,
                "dport",
                "=",
                &format!(":{CONTROLLER_PORT}"),
            ],
        )?;
        if !ok && !text.contains("ESTAB") {
            bail!("ss -K failed: {text}");
        }
        flaps += 1;
        let opened = opened0 + flaps;
        // Until a's stream is open again, watch b's version.
        let back = wait_until("a's stream back", Duration::from_secs(30), || {
            if let Some(v) = map_version(mesh, "b") {
                seen.insert(v);
            }
            Ok(streams_opened(mesh, "a") >= opened && connected(mesh, "a"))
        });
        if back.is_err() {
            t.problems.push(format!(
                "a's map stream did not come back after flap {flaps}"
            ));
            break;
        }
    }
    let flapping = start.elapsed();
    // The grace period after the last flap.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        if let Some(v) = map_version(mesh, "b") {
            seen.insert(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reopened = streams_opened(mesh, "a") - opened0;
    let changes = seen.len() - 1;
    t.count(format!(
        "{flaps} flaps in {}, a reopened its stream {reopened} times; b saw {changes} map version changes (versions {seen:?})",
        secs(flapping)
    ));
    t.require(
        reopened >= flaps,
        format!("a reopened {reopened} of {flaps}"),
    );
    t.require(
        changes == 0,
        format!("b's map moved {changes} times while a flapped"),
    );
    Ok(())
}

fn overlay_ip_within(mesh: &Mesh<'_>, node: &str, timeout: Duration) -> bool {
    wait_until("an overlay address", timeout, || {
        Ok(mesh
            .try_status(node)
            .is_some_and(|s| s.networks.first().is_some_and(|n| !n.addresses.is_empty())))
    })
    .is_ok()
}

fn challenge_flood(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let infra = lab.addr("infra")?.to_string();
    let stop = stop_file(lab, "flood");
    let mut flood = spawn_in_flood(
        lab,
        "challenge-flood",
        CHALLENGE_FLOOD,
        &[&infra, &CONTROLLER_PORT.to_string(), "4"],
        &stop,
    )?;
    flood.wait_for_log("flooding", Duration::from_secs(10))?;
    // Register once the flood has asked for more challenges than the old pool
    // held (65,536), or after 30 s.
    let answered = |p: &Process| {
        p.log()
            .ok()
            .and_then(|l| {
                l.lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("answered ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let _ = wait_until("70,000 challenge requests", Duration::from_secs(30), || {
        Ok(answered(&flood) >= 70_000)
    });
    let before_join = answered(&flood);
    let token = mesh.token_file(1)?;
    let start = Instant::now();
    let started = mesh.start_agent("c", Some(&token));
    let registered = started.is_ok() && overlay_ip_within(mesh, "c", Duration::from_secs(60));
    let took = start.elapsed();
    touch(&stop)?;
    let report = report_of(&mut flood, Duration::from_secs(30))?;
    let total: u64 = report["status"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    t.count(format!(
        "flood: {total} answered requests by status {}, {} errors ({before_join} before c started); c registered: {registered} after {}",
        report["status"],
        report["errors"],
        secs(took)
    ));
    started?;
    t.require(
        registered,
        format!(
            "c did not register within 60 s during the flood: {}",
            mesh.agent_log_tail("c")
        ),
    );
    t.require(total > 0, "the flood sent nothing");
    Ok(())
}

fn idle_connections(mesh: &Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let infra = lab.addr("infra")?.to_string();
    let ip_b = mesh.overlay_ip("b")?;
    let ctl = format!("{infra}:{CONTROLLER_PORT}");
    let targets = format!("{ctl},{infra}:{RELAY_PORT}");
    const N: u32 = 2000;
    let stop = stop_file(lab, "idle");
    let mut idle = spawn_in_flood(
        lab,
        "idle-conns",
        IDLE_CONNS,
        &[&targets, &N.to_string(), &ctl, "50"],
        &stop,
    )?;
    idle.wait_for_log("holding", Duration::from_secs(120))?;
    let mut worst_ms = 0.0f64;
    let (mut ok, mut failed) = (0, 0);
    let mut admin_ok = 0;
    let mut pings_ok = 0;
    // Three rounds over more than 30 s, long enough for a server's header
    // timeout (hyper's default is 30 s) to act on the slowloris.
    const ROUNDS: u32 = 3;
    for round in 0..ROUNDS {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(15));
        }
        let out = py_output(
            lab,
            "n",
            HEALTH_PROBE,
            &[&infra, &CONTROLLER_PORT.to_string(), "10"],
        )?;
        let v = last_json(&String::from_utf8_lossy(&out.stdout))
            .context("the health probe printed no report")?;
        ok += v["ok"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
        worst_ms = worst_ms.max(v["max_ms"].as_f64().unwrap_or(f64::MAX));
        if mesh.admin(&["network", "list"]).is_ok() {
            admin_ok += 1;
        }
        if lab.ping("a", ip_b)? {
            pings_ok += 1;
        }
    }
    touch(&stop)?;
    let report = report_of(&mut idle, Duration::from_secs(60))?;
    let relay = format!("{infra}:{RELAY_PORT}");
    let held = |key: &str, what: &str| report[key][what].as_u64().unwrap_or(0);
    t.count(format!(
        "controller: {} idle opened, {} open at the end; relay: {} opened, {} open at the end; slowloris: {} opened, {} open at the end ({} header lines); health {ok}/{} answered, slowest {worst_ms:.0} ms; admin {admin_ok}/{ROUNDS}; relayed ping {pings_ok}/{ROUNDS}",
        held(&ctl, "opened"),
        held(&ctl, "open_at_end"),
        held(&relay, "opened"),
        held(&relay, "open_at_end"),
        held("slowloris", "opened"),
        held("slowloris", "open_at_end"),
        held("slowloris", "header_lines"),
        ok + failed,
    ));
    t.require(
        held(&ctl, "opened") == u64::from(N) && held(&relay, "opened") == u64::from(N),
        format!("not all {N} idle connections opened"),
    );
    t.require(
        failed == 0 && worst_ms < 2000.0,
        format!("health: {failed} failed, slowest {worst_ms:.0} ms (bound 2000)"),
    );
    t.require(admin_ok == ROUNDS, "an admin command failed");
    t.require(pings_ok == ROUNDS, "a stopped pinging b through the relay");
    Ok(())
}

fn token_cleartext(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let infra = lab.addr("infra")?;
    let log = lab.log_dir().join("cleartext.accepted");
    let mut listener = lab.spawn(
        "infra",
        "plain-listener",
        &py(ACCEPT_LOG, &["8080", arg(&log)?, "120"]),
    )?;
    listener.wait_for_log("listening", Duration::from_secs(10))?;
    mesh.start_agent("n", None)?;
    let token = mesh.token_file(1)?;
    let socket = mesh
        .agents
        .get("n")
        .map(|a| a.socket.clone())
        .context("no agent in n")?;
    let weft = bin_path("weft")?;
    let url = format!("http://{infra}:8080");
    let (ok, text) = run_bounded(
        lab,
        "n",
        60,
        &[
            arg(&weft)?,
            "--socket",
            arg(&socket)?,
            "up",
            "--controller",
            &url,
            "--token-file",
            arg(&token)?,
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let accepted = lines(&log).len();
    let said = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let clear = text.contains("http") && (text.contains("cleartext") || text.contains("insecure"));
    t.count(format!(
        "weft up exit ok: {ok}, says: {said:?}; connections to {url}: {accepted}"
    ));
    t.require(!ok, "weft up exited 0");
    t.require(
        clear,
        format!("the error does not explain cleartext: {text}"),
    );
    t.require(
        accepted == 0,
        format!("{accepted} connections reached {url}"),
    );
    Ok(())
}

fn token_descriptions(mesh: &Mesh<'_>) -> anyhow::Result<BTreeSet<String>> {
    let json = mesh.admin(&["token", "list", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("token list --json")?;
    let list = v
        .get("tokens")
        .and_then(serde_json::Value::as_array)
        .or_else(|| v.as_array())
        .context("no token list in the output")?;
    Ok(list
        .iter()
        .filter_map(|t| t["description"].as_str().map(str::to_owned))
        .collect())
}

fn controller_sigkill(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let infra = lab.addr("infra")?.to_string();
    let acked_file = lab.log_dir().join("writes.acked");
    let stop = stop_file(lab, "writer");
    let admin_token = mesh.controller.data_dir.join("admin.token");
    let mut writer = spawn_in_flood(
        lab,
        "token-writer",
        TOKEN_WRITER,
        &[
            &infra,
            &CONTROLLER_PORT.to_string(),
            arg(&admin_token)?,
            &mesh.network.name,
            arg(&acked_file)?,
        ],
        &stop,
    )?;
    writer.wait_for_log("writing", Duration::from_secs(10))?;
    wait_until("150 acknowledged writes", Duration::from_secs(60), || {
        Ok(lines(&acked_file).len() >= 150)
    })?;
    mesh.kill_controller()?;
    let at_kill = lines(&acked_file).len();
    std::thread::sleep(Duration::from_millis(500));
    mesh.restart_controller()?;
    let after = wait_until(
        "30 more acknowledged writes",
        Duration::from_secs(60),
        || Ok(lines(&acked_file).len() >= at_kill + 30),
    );
    touch(&stop)?;
    let report = report_of(&mut writer, Duration::from_secs(30))?;
    let acked: BTreeSet<String> = lines(&acked_file).into_iter().collect();
    let present = token_descriptions(mesh)?;
    let lost: Vec<&String> = acked.difference(&present).collect();
    t.count(format!(
        "attempted {}, acked {} ({at_kill} before the kill), present {}, lost {}; errors during the outage {}",
        report["attempted"],
        acked.len(),
        acked.len() - lost.len(),
        lost.len(),
        report["errors"]
    ));
    t.require(
        lost.is_empty(),
        format!("acknowledged writes lost: {lost:?}"),
    );
    t.require(after.is_ok(), "writes did not resume after the restart");
    Ok(())
}

/// The command `Mesh` starts the controller with.
fn controller_cmd(mesh: &Mesh<'_>) -> anyhow::Result<Command> {
    let mut cmd = Command::new(bin_path("weft-controller")?);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&mesh.controller.data_dir)
        .args(["--listen", &format!("0.0.0.0:{CONTROLLER_PORT}")])
        .args([
            "--tls-san",
            &mesh.lab().addr(&mesh.controller.node)?.to_string(),
        ])
        .args(["--log", "info"]);
    Ok(cmd)
}

/// Copies (`cp -a`) a directory tree.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

fn restore(backup: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    copy_tree(backup, dir)
}

/// Starts `cmd` in `node` on a damaged data dir: whether it refused (exited
/// non-zero instead of listening on `port` within 20 s), whether its output
/// names `file`, and the line that says so (or its last line).
fn refuses(
    lab: &Lab,
    node: &str,
    name: &str,
    cmd: &Command,
    port: u16,
    file: &str,
) -> anyhow::Result<(bool, bool, String)> {
    let mut p = lab.spawn(node, name, cmd)?;
    let refused = match p.wait_for_tcp_listen(port, Duration::from_secs(20)) {
        Ok(()) => {
            let _ = p.kill();
            false
        }
        Err(_) => {
            let _ = p.kill();
            p.try_wait()?.is_some_and(|s| !s.success())
        }
    };
    let log = p.log()?;
    let named = log.contains(file);
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(file))
        .or_else(|| log.lines().find(|l| l.contains("fingerprint")))
        .or_else(|| log.lines().last())
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((refused, named, line))
}

/// The command `Mesh` starts the relay with.
fn relay_cmd(mesh: &Mesh<'_>) -> anyhow::Result<Command> {
    let r = mesh.relay.as_ref().context("no relay")?;
    let addr = mesh.lab().addr(&r.node)?;
    let mut cmd = Command::new(bin_path("weft-relay")?);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&r.data_dir)
        .args(["--listen", &format!("0.0.0.0:{RELAY_PORT}")])
        .args(["--stun-listen", &format!("0.0.0.0:{STUN_PORT}")])
        .args(["--stun-alt-port", &STUN_ALT_PORT.to_string()])
        .args(["--controller", &mesh.controller.url])
        .arg("--relay-token-file")
        .arg(&r.token_file)
        .args(["--pin-sha256", &mesh.controller.fingerprint])
        .args(["--tls-san", &addr.to_string()])
        .args(["--name", &r.name])
        .args(["--log", "info"]);
    Ok(cmd)
}

/// One damaged start, described for the counts.
fn damaged(what: &str, (refused, named, line): &(bool, bool, String)) -> String {
    format!("{what}: refused {refused}, names the file {named} ({line:?})")
}

fn state_loss(mesh: &mut Mesh<'_>, t: &mut Tally) -> anyhow::Result<()> {
    let lab = mesh.lab();
    let node = mesh.controller.node.clone();
    let dir = mesh.controller.data_dir.clone();
    let backup = dir.with_extension("backup");
    let fingerprint = mesh.controller.fingerprint.clone();
    let status = mesh.controller.process.stop(Duration::from_secs(10))?;
    if !status.success() {
        bail!("the controller exited with {status} on SIGTERM");
    }
    copy_tree(&dir, &backup)?;
    let cmd = controller_cmd(mesh)?;

    let key = dir.join("tls").join("key.pem");
    std::fs::remove_file(&key).with_context(|| format!("cannot remove {}", key.display()))?;
    let no_key = refuses(
        lab,
        &node,
        "controller-no-key",
        &cmd,
        CONTROLLER_PORT,
        "key.pem",
    )?;
    restore(&backup, &dir)?;

    let db = dir.join(DB_FILE);
    std::fs::write(&db, b"").with_context(|| format!("cannot truncate {}", db.display()))?;
    let empty_db = refuses(
        lab,
        &node,
        "controller-empty-db",
        &cmd,
        CONTROLLER_PORT,
        DB_FILE,
    )?;
    restore(&backup, &dir)?;

    let restarted = mesh.restart_controller();
    let same = restarted.is_ok() && mesh.controller.fingerprint == fingerprint;
    restarted.context("the restored controller did not start")?;

    // The relay's TLS key.
    let relay_cmd = relay_cmd(mesh)?;
    let (relay_node, relay_dir) = {
        let r = mesh.relay.as_mut().context("no relay")?;
        r.process.stop(Duration::from_secs(10))?;
        (r.node.clone(), r.data_dir.clone())
    };
    let relay_backup = relay_dir.with_extension("backup");
    copy_tree(&relay_dir, &relay_backup)?;
    let relay_key = relay_dir.join("tls").join("key.pem");
    std::fs::remove_file(&relay_key)
        .with_context(|| format!("cannot remove {}", relay_key.display()))?;
    let relay_no_key = refuses(
        lab,
        &relay_node,
        "relay-no-key",
        &relay_cmd,
        RELAY_PORT,
        "key.pem",
    )?;
    restore(&relay_backup, &relay_dir)?;
    let relay_back = mesh.restart_relay();

    t.count(format!(
        "{}; {}; {}; restored: controller started, same fingerprint {same}; relay started {}",
        damaged("controller tls/key.pem deleted", &no_key),
        damaged("controller.db truncated", &empty_db),
        damaged("relay tls/key.pem deleted", &relay_no_key),
        relay_back.is_ok()
    ));
    t.require(
        no_key.0 && no_key.1,
        "a deleted controller tls/key.pem was not refused with its name",
    );
    t.require(
        empty_db.0 && empty_db.1,
        "an empty controller.db was not refused with its name",
    );
    t.require(
        relay_no_key.0 && relay_no_key.1,
        "a deleted relay tls/key.pem was not refused with its name",
    );
    t.require(same, "the restored controller has another fingerprint");
    relay_back.context("the restored relay did not start")?;
    Ok(())
}

/// The controller's database file in its data dir.
const DB_FILE: &str = "controller.db";

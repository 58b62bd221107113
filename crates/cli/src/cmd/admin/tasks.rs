//! `weft admin task create|list|show|cancel`: remote tasks. A task runs a
//! built-in action, a script or an approved hook on a node, on every node
//! with a tag, or on every member of a network; the controller checks its
//! limits before any node can lease it, and keeps every run's result.

mod firewall;

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Subcommand};
use weft_api_client::Client;
use weft_proto::task::{
    ACTION_NAMES, Action, CreateTaskRequest, INTERPRETERS, MAX_OUTPUT_CAP, MAX_SCRIPT_BYTES,
    RunState, TaskKind, TaskRunView, TaskStatus, TaskTarget, TaskView,
};
use weft_proto::text::escape_for_display;

use super::print_json;
use crate::clock::unix_ms;
use crate::cmd::format::{datetime, out, parse_duration, safe, table};

const CREATE_EXAMPLES: &str = "Examples:
  weft admin task create --tag web --script check.sh --wait
  weft admin task create --node db1 --action ping web1
  weft admin task create --network lab --action diagnostics --output-cap 262144
  weft admin task create --node db1 --hook rotate-logs --timeout 5m
  weft admin task create --node db1 --action firewall-allow 'tcp:8080 from=10.0.0.0/8 for=2h comment=deploy'
  weft admin task create --node db1 --action firewall-revoke task-0123456789ab";

/// `weft admin task …`.
#[derive(Debug, Subcommand)]
pub(super) enum TaskCmd {
    /// Create a task: one run per target node, resolved now. Nodes online get
    /// it at once, the others when they reconnect (until its deadline).
    ///
    /// Nodes run scripts only with `weftd --allow-exec`, and only the actions
    /// `--allow-actions` lists (ping, netcheck, diagnostics by default); a
    /// node that will not run a task answers `refused` with the reason.
    #[command(after_long_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// List tasks, newest first.
    List {
        /// Only tasks with a run on this node (name or key).
        #[arg(allow_hyphen_values = true, long)]
        node: Option<String>,
        /// Only tasks with a run in this state: pending, leased, done,
        /// cancelled, expired.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show a task with every run's result (exit code, signal, duration,
    /// stdout, stderr, and whether they were cut at the cap).
    Show {
        /// The task id (`tsk_…`).
        id: String,
    },
    /// Cancel the runs of a task that have no result yet (a run already
    /// leased may still finish on its node; its result is then refused).
    Cancel {
        /// The task id (`tsk_…`).
        id: String,
    },
}

/// `weft admin task create` options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["node", "tag", "network"])))]
#[command(group(ArgGroup::new("what").required(true).args(["action", "script", "hook"])))]
pub(super) struct CreateArgs {
    /// Run on this node (name or key).
    #[arg(allow_hyphen_values = true, long)]
    node: Option<String>,
    /// Run on every enabled node with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Run on every enabled member of this network.
    #[arg(long)]
    network: Option<String>,
    /// A built-in action and its argument: ping PEER, netcheck, diagnostics,
    /// reconcile, rotate-key, restart-dataplane, flush-dns,
    /// firewall-allow 'PROTO[:PORTS] [from=CIDR,...] for=DURATION
    /// [comment=TEXT]' (opens the node's host firewall until it expires, at
    /// most 30d; `comment=` takes the rest), firewall-revoke task-ID.
    #[arg(long, num_args = 1..=2, value_names = ["NAME", "ARG"])]
    action: Option<Vec<String>>,
    /// A script file to run (`-`: standard input), at most 64 KiB.
    #[arg(long)]
    script: Option<PathBuf>,
    /// The script's interpreter: sh (the default), bash, python3 or node.
    #[arg(long)]
    interpreter: Option<String>,
    /// A hook from the nodes' hooks directory; it runs only if its sha256 is
    /// approved (`weft admin hook approve NAME SHA256`).
    #[arg(long)]
    hook: Option<String>,
    /// Kill the run (its whole process group) after this long (30s, 5m; at
    /// most 10m). Default 30s.
    #[arg(long)]
    timeout: Option<String>,
    /// Bytes kept of stdout and of stderr each (at most 262144). Default 65536.
    #[arg(long)]
    output_cap: Option<u32>,
    /// Give up on nodes that have not run it after this long (1h, 7d; at most
    /// 30d). Default 24h.
    #[arg(long)]
    deadline: Option<String>,
    /// Wait until every run has ended, print the results, and exit 1 unless
    /// every run completed (exit code 0).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits (the task goes on after it). Default 15m.
    #[arg(long, default_value = "15m", requires = "wait")]
    wait_timeout: String,
}

/// Not every run of a waited-for task completed: the results are printed,
/// the command exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct NotAllCompleted(String);

pub(super) async fn run(c: &Client, cmd: TaskCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Create(a) => create(c, a, json).await,
        TaskCmd::List { node, state, limit } => {
            let state = state
                .map(|s| {
                    RunState::parse(&s).with_context(|| {
                        format!("--state {s:?}: use pending, leased, done, cancelled or expired")
                    })
                })
                .transpose()?;
            let list = c.list_tasks(node.as_deref(), state, Some(limit)).await?;
            if json {
                return print_json(&list);
            }
            if list.tasks.is_empty() {
                out("no tasks\n");
                return Ok(());
            }
            out(&list_table(&list.tasks));
            Ok(())
        }
        TaskCmd::Show { id } => {
            let t = c.show_task(&id).await?;
            if json {
                return print_json(&t);
            }
            out(&render(&t));
            Ok(())
        }
        TaskCmd::Cancel { id } => {
            let t = c.cancel_task(&id).await?;
            if json {
                return print_json(&t);
            }
            let n = t
                .runs
                .iter()
                .filter(|r| r.state == RunState::Cancelled)
                .count();
            out(&format!("task {} cancelled ({n} runs)\n", t.id));
            Ok(())
        }
    }
}

/// Seconds from a duration flag, within `max`.
fn secs(flag: &str, s: &str, max: u64) -> anyhow::Result<u64> {
    let v = parse_duration(s).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    if v == 0 || v > max {
        bail!("{flag} must be between 1 s and {max} s, got {v} s");
    }
    Ok(v)
}

fn read_script(path: &PathBuf) -> anyhow::Result<String> {
    let limit = MAX_SCRIPT_BYTES as u64 + 1;
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .context("reading the script from standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(limit)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if buf.len() > MAX_SCRIPT_BYTES {
        bail!(
            "{} is larger than {MAX_SCRIPT_BYTES} bytes, the most a task script may be",
            path.display()
        );
    }
    String::from_utf8(buf).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

fn action(words: &[String]) -> anyhow::Result<Action> {
    let (name, arg) = match words {
        [name] => (name.as_str(), None),
        [name, arg] => (name.as_str(), Some(arg.clone())),
        _ => bail!("--action takes a name and at most one argument"),
    };
    let a = match (name, arg) {
        ("ping", Some(peer)) => Action::Ping { peer },
        ("ping", None) => bail!("--action ping needs the peer: --action ping PEER"),
        ("firewall-allow", Some(rule)) => Action::FirewallAllow(firewall::parse(&rule)?),
        ("firewall-allow", None) => bail!("{}", firewall::FORM),
        ("firewall-revoke", Some(id)) => {
            let a = Action::FirewallRevoke { id };
            a.check()?;
            a
        }
        ("firewall-revoke", None) => {
            bail!(
                "--action firewall-revoke needs the rule id: --action firewall-revoke task-ID (weft status on the node lists them)"
            )
        }
        (_, Some(arg)) if ACTION_NAMES.contains(&name) => {
            bail!("--action {name} takes no argument (got {arg:?})")
        }
        ("netcheck", None) => Action::Netcheck,
        ("diagnostics", None) => Action::Diagnostics,
        ("reconcile", None) => Action::Reconcile,
        ("rotate-key", None) => Action::RotateKey,
        ("restart-dataplane", None) => Action::RestartDataplane,
        ("flush-dns", None) => Action::FlushDns,
        _ => bail!(
            "unknown action {name:?}; actions: {}",
            ACTION_NAMES.join(", ")
        ),
    };
    Ok(a)
}

fn request(a: &CreateArgs) -> anyhow::Result<CreateTaskRequest> {
    let target = match (&a.node, &a.tag, &a.network) {
        (Some(n), _, _) => TaskTarget::Node(n.clone()),
        (_, Some(t), _) => TaskTarget::Tag(t.clone()),
        (_, _, Some(n)) => TaskTarget::Network(n.clone()),
        _ => bail!("give one of --node, --tag, --network"),
    };
    if a.interpreter.is_some() && a.script.is_none() {
        bail!("--interpreter goes with --script");
    }
    let kind = match (&a.action, &a.script, &a.hook) {
        (Some(words), _, _) => TaskKind::Action(action(words)?),
        (_, Some(path), _) => {
            let interpreter = a.interpreter.as_deref().unwrap_or("sh");
            if !INTERPRETERS.contains(&interpreter) {
                bail!(
                    "--interpreter {interpreter:?} is not allowed; use one of {}",
                    INTERPRETERS.join(", ")
                );
            }
            TaskKind::Script {
                interpreter: interpreter.to_owned(),
                body: read_script(path)?,
            }
        }
        (_, _, Some(name)) => TaskKind::Hook {
            name: name.clone(),
            approved_sha256: Vec::new(),
        },
        _ => bail!("give one of --action, --script, --hook"),
    };
    let timeout_secs = a
        .timeout
        .as_deref()
        .map(|t| {
            secs(
                "--timeout",
                t,
                u64::from(weft_proto::task::MAX_TIMEOUT_SECS),
            )
        })
        .transpose()?
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX));
    if let Some(cap) = a.output_cap
        && !(1..=MAX_OUTPUT_CAP).contains(&cap)
    {
        bail!("--output-cap must be 1 to {MAX_OUTPUT_CAP} bytes, got {cap}");
    }
    let deadline_secs = a
        .deadline
        .as_deref()
        .map(|d| secs("--deadline", d, weft_proto::task::MAX_DEADLINE_SECS))
        .transpose()?;
    let req = CreateTaskRequest {
        target,
        kind,
        timeout_secs,
        output_cap_bytes: a.output_cap,
        deadline_secs,
    };
    req.check()?;
    Ok(req)
}

async fn create(c: &Client, a: CreateArgs, json: bool) -> anyhow::Result<()> {
    let req = request(&a)?;
    let wait_for = secs("--wait-timeout", &a.wait_timeout, 30 * 24 * 3600)?;
    let t = c.create_task(&req).await?;
    if !a.wait {
        if json {
            return print_json(&t);
        }
        let nodes: Vec<String> = t.runs.iter().map(|r| safe(&r.node).into_owned()).collect();
        out(&format!(
            "task {} created: {} on {} node{} ({})\nfollow it: weft admin task show {}\n",
            t.id,
            t.label,
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" },
            nodes.join(", "),
            t.id
        ));
        return Ok(());
    }
    let until = unix_ms().saturating_add(wait_for.saturating_mul(1000));
    let t = loop {
        let now = c.task_progress(&t.id).await?;
        if now.finished() {
            break c.show_task(&t.id).await?;
        }
        if unix_ms() >= until {
            let now = c.show_task(&t.id).await?;
            if json {
                print_json(&now)?;
            } else {
                out(&render(&now));
            }
            return Err(NotAllCompleted(format!(
                "task {} still has runs after --wait-timeout {}; it goes on: weft admin task show {}",
                t.id, a.wait_timeout, t.id
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if json {
        print_json(&t)?;
    } else {
        out(&render(&t));
    }
    let bad: Vec<String> = t
        .runs
        .iter()
        .filter(|r| r.status != Some(TaskStatus::Completed))
        .map(|r| format!("{} {}", safe(&r.node), run_outcome(r)))
        .collect();
    if !bad.is_empty() {
        return Err(NotAllCompleted(format!(
            "{} of {} runs did not complete: {}",
            bad.len(),
            t.runs.len(),
            bad.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// `completed`, `failed (exit 2)`, `timed_out`, `refused`, `expired`, ….
fn run_outcome(r: &TaskRunView) -> String {
    match (r.status, &r.result) {
        (Some(s), Some(res)) => match (res.exit_code, res.signal) {
            (_, Some(sig)) if s != TaskStatus::Completed => format!("{s} (signal {sig})"),
            (Some(code), _) if s == TaskStatus::Failed => format!("{s} (exit {code})"),
            _ => s.to_string(),
        },
        (Some(s), None) => s.to_string(),
        (None, _) => r.state.to_string(),
    }
}

fn list_table(tasks: &[TaskView]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let done = t.runs.iter().filter(|r| r.state == RunState::Done).count();
            let ok = t
                .runs
                .iter()
                .filter(|r| r.status == Some(TaskStatus::Completed))
                .count();
            let state = if t.cancelled_at_ms.is_some() {
                "cancelled"
            } else if t.finished() {
                "finished"
            } else {
                "running"
            };
            vec![
                t.id.clone(),
                datetime(t.created_at_ms),
                safe(&t.label).into_owned(),
                safe(&t.target.to_string()).into_owned(),
                format!("{done}/{} done, {ok} ok", t.runs.len()),
                state.into(),
            ]
        })
        .collect();
    table(&["ID", "CREATED", "WHAT", "TARGET", "RUNS", "STATE"], &rows)
}

/// Output from a node, as a terminal should show it: line by line, with
/// characters that could spoof the display escaped.
fn block(title: &str, text: &str, cut: bool, cap: u32) -> String {
    if text.is_empty() && !cut {
        return String::new();
    }
    let mut s = format!(
        "  {title}{}:\n",
        if cut {
            format!(" (cut at {cap} bytes)")
        } else {
            String::new()
        }
    );
    for line in text.lines() {
        s.push_str("    ");
        s.push_str(&escape_for_display(line));
        s.push('\n');
    }
    s
}

fn render(t: &TaskView) -> String {
    let mut s = format!(
        "task {}\n  created {} by {}\n  what    {}\n  target  {}\n  limits  timeout {} s, output cap {} bytes per stream\n  deadline {}\n",
        t.id,
        datetime(t.created_at_ms),
        safe(&t.created_by),
        safe(&t.label),
        safe(&t.target.to_string()),
        t.limits.timeout_secs,
        t.limits.output_cap_bytes,
        datetime(t.deadline_ms),
    );
    if let Some(at) = t.cancelled_at_ms {
        s.push_str(&format!("  cancelled {}\n", datetime(at)));
    }
    for r in &t.runs {
        s.push_str(&format!(
            "\n{} ({}): {}",
            safe(&r.node),
            r.state,
            run_outcome(r)
        ));
        if let Some(res) = &r.result {
            s.push_str(&format!(", {} ms, lease {}", res.duration_ms, res.lease_id));
        } else if let Some(l) = &r.lease_id {
            s.push_str(&format!(", lease {l}"));
        }
        s.push('\n');
        if let Some(res) = &r.result {
            s.push_str(&block(
                "stdout",
                &res.stdout,
                res.stdout_truncated,
                t.limits.output_cap_bytes,
            ));
            s.push_str(&block(
                "stderr",
                &res.stderr,
                res.stderr_truncated,
                t.limits.output_cap_bytes,
            ));
            if let Some(e) = &res.error {
                s.push_str(&format!("  error: {}\n", escape_for_display(e)));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TaskCmd,
    }

    fn create_args(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let argv = ["t", "create"].iter().chain(args).copied();
        match Cli::try_parse_from(argv)?.cmd {
            TaskCmd::Create(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn firewall_actions_take_one_argument() {
        let a = create_args(&[
            "--node",
            "db1",
            "--action",
            "firewall-allow",
            "tcp:8080 from=10.0.0.0/8 for=2h comment=deploy",
        ])
        .unwrap();
        match request(&a).unwrap().kind {
            TaskKind::Action(Action::FirewallAllow(r)) => {
                assert_eq!((r.for_secs, r.comment.as_str()), (7200, "deploy"));
            }
            other => panic!("{other:?}"),
        }
        let a =
            create_args(&["--node", "db1", "--action", "firewall-revoke", "task-ab12"]).unwrap();
        assert_eq!(
            request(&a).unwrap().kind,
            TaskKind::Action(Action::FirewallRevoke {
                id: "task-ab12".into()
            })
        );
        for (args, says) in [
            (
                &["--node", "a", "--action", "firewall-allow"][..],
                "PROTO[:PORTS]",
            ),
            (
                &["--node", "a", "--action", "firewall-allow", "tcp:80"],
                "for= is required",
            ),
            (
                &["--node", "a", "--action", "firewall-revoke"],
                "needs the rule id",
            ),
            (
                &["--node", "a", "--action", "firewall-revoke", "dyn:3"],
                "not a task-made rule id",
            ),
        ] {
            let e = format!("{:#}", request(&create_args(args).unwrap()).unwrap_err());
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn create_needs_one_target_and_one_thing_to_run() {
        assert!(create_args(&["--action", "netcheck"]).is_err());
        assert!(create_args(&["--node", "a"]).is_err());
        assert!(create_args(&["--node", "a", "--tag", "b", "--action", "netcheck"]).is_err());
        assert!(create_args(&["--node", "a", "--hook", "h", "--action", "netcheck"]).is_err());
        let a = create_args(&["--tag", "web", "--action", "ping", "web1"]).unwrap();
        let r = request(&a).unwrap();
        assert_eq!(r.target, TaskTarget::Tag("web".into()));
        assert_eq!(
            r.kind,
            TaskKind::Action(Action::Ping {
                peer: "web1".into()
            })
        );
    }

    #[test]
    fn bad_actions_and_limits_are_refused_before_anything_is_sent() {
        let req = |args: &[&str]| request(&create_args(args).unwrap());
        for (args, want) in [
            (&["--node", "a", "--action", "ping"][..], "needs the peer"),
            (
                &["--node", "a", "--action", "netcheck", "x"],
                "takes no argument",
            ),
            (&["--node", "a", "--action", "reboot"], "unknown action"),
            (
                &["--node", "a", "--action", "netcheck", "--timeout", "11m"],
                "--timeout",
            ),
            (
                &["--node", "a", "--action", "netcheck", "--timeout", "0"],
                "--timeout",
            ),
            (
                &[
                    "--node",
                    "a",
                    "--action",
                    "netcheck",
                    "--output-cap",
                    "262145",
                ],
                "--output-cap",
            ),
            (
                &["--node", "a", "--action", "netcheck", "--deadline", "31d"],
                "--deadline",
            ),
        ] {
            let e = req(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let ok = req(&[
            "--node",
            "a",
            "--action",
            "netcheck",
            "--timeout",
            "10m",
            "--output-cap",
            "262144",
        ])
        .unwrap();
        assert_eq!(
            (ok.timeout_secs, ok.output_cap_bytes),
            (Some(600), Some(262_144))
        );
    }

    #[test]
    fn scripts_are_read_bounded_and_the_interpreter_checked() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at.sh");
        std::fs::write(&at, "x".repeat(MAX_SCRIPT_BYTES)).unwrap();
        let over = dir.path().join("over.sh");
        std::fs::write(&over, "x".repeat(MAX_SCRIPT_BYTES + 1)).unwrap();
        let p = |f: &PathBuf| f.to_str().unwrap().to_owned();
        let r = request(&create_args(&["--node", "a", "--script", &p(&at)]).unwrap()).unwrap();
        assert!(
            matches!(r.kind, TaskKind::Script { ref interpreter, ref body } if interpreter == "sh" && body.len() == MAX_SCRIPT_BYTES)
        );
        let e =
            request(&create_args(&["--node", "a", "--script", &p(&over)]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let a =
            create_args(&["--node", "a", "--script", &p(&at), "--interpreter", "perl"]).unwrap();
        assert!(request(&a).unwrap_err().to_string().contains("not allowed"));
        let a =
            create_args(&["--node", "a", "--action", "netcheck", "--interpreter", "sh"]).unwrap();
        assert!(
            request(&a)
                .unwrap_err()
                .to_string()
                .contains("goes with --script")
        );
    }

    #[test]
    fn outputs_are_shown_line_by_line_with_spoofing_characters_escaped() {
        let b = block("stdout", "ok\nnode-\u{202e}gnp.exe\n", true, 10);
        assert_eq!(
            b,
            "  stdout (cut at 10 bytes):\n    ok\n    node-\\u{202e}gnp.exe\n"
        );
        assert_eq!(block("stderr", "", false, 10), "");
    }
}

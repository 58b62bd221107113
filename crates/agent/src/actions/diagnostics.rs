//! `diagnostics`: one bounded bundle of what a support engineer asks for
//! first: `weft status` (JSON), the agent's recent log lines (the in-memory
//! ring, `crate::logring`), the routing tables (`ip route show table all`) and
//! weft's nftables table (`nft list table inet weft`). Each part is cut to its
//! share of the task's output cap, so the whole bundle fits the cap; a cut part
//! says how much it lost, and the result is flagged truncated.

use std::time::Duration;

use weft_proto::task::cut_at_char_boundary;

use super::{ActionContext, Done, Request};
use crate::logring;

/// How long each command may run.
const COMMAND_WAIT: Duration = Duration::from_secs(5);
/// Bytes kept of a command's output at most, whatever the cap.
const COMMAND_OUTPUT_MAX: usize = 1024 * 1024;
/// Room kept in a cut part for its note.
const NOTE_ROOM: usize = 48;

/// A part of the bundle.
struct Part {
    title: String,
    body: String,
    /// Keep the end when cutting (log lines: the newest matter).
    keep_tail: bool,
}

pub(super) async fn bundle(ctx: &ActionContext, cap: usize) -> Done {
    let status = match ctx.ask(Request::Status).await {
        Ok(s) => serde_json::to_string_pretty(&s).unwrap_or_else(|e| format!("(status: {e})")),
        Err(e) => format!("(status unavailable: {e})"),
    };
    // Every log line the ring holds; the part is cut to its share below.
    let (lines, older) = logring::recent(logring::MAX_BYTES);
    let mut log = lines.join("\n");
    if !log.is_empty() {
        log.push('\n');
    }
    let parts = vec![
        Part {
            title: "weft status".into(),
            body: status + "\n",
            keep_tail: false,
        },
        Part {
            title: format!(
                "agent log (last {} lines in memory{})",
                lines.len(),
                if older > 0 {
                    format!("; {older} older not kept")
                } else {
                    String::new()
                }
            ),
            body: log,
            keep_tail: true,
        },
        Part {
            title: "ip route show table all".into(),
            body: command("ip", &["route", "show", "table", "all"]).await,
            keep_tail: false,
        },
        Part {
            title: "nft list table inet weft".into(),
            body: command("nft", &["list", "table", "inet", "weft"]).await,
            keep_tail: false,
        },
    ];
    let (text, cut) = assemble(parts, cap);
    Done {
        ok: true,
        stdout: text,
        cut,
        refused: false,
        error: None,
    }
}

/// The bundle: each part under a `== title ==` line, cut so that the whole fits
/// in `cap` bytes (the space a short part leaves goes to the longer ones);
/// whether anything was cut.
fn assemble(parts: Vec<Part>, cap: usize) -> (String, bool) {
    let headers: Vec<String> = parts
        .iter()
        .map(|p| format!("== {} ==\n", p.title))
        .collect();
    let mut left = cap.saturating_sub(headers.iter().map(String::len).sum());
    // Shares: the shortest parts first take what they need, up to an equal
    // split of what is left.
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|i| parts[*i].body.len());
    let mut shares = vec![0; parts.len()];
    for (n, i) in order.iter().enumerate() {
        let fair = left / (parts.len() - n);
        shares[*i] = parts[*i].body.len().min(fair);
        left -= shares[*i];
    }
    let mut out = String::new();
    let mut cut = false;
    for ((part, header), share) in parts.iter().zip(&headers).zip(shares) {
        out.push_str(header);
        let (body, was_cut) = fit(&part.body, share, part.keep_tail);
        cut |= was_cut;
        out.push_str(&body);
    }
    // Headers alone may not fit a tiny cap.
    let (kept, over) = cut_at_char_boundary(&out, cap);
    (kept.to_owned(), cut || over)
}

/// `body` in at most `max` bytes: whole, or its head (tail) with a note of what
/// was cut.
fn fit(body: &str, max: usize, keep_tail: bool) -> (String, bool) {
    if body.len() <= max {
        return (body.to_owned(), false);
    }
    let room = max.saturating_sub(NOTE_ROOM);
    let kept = if keep_tail {
        let mut start = body.len() - room;
        while !body.is_char_boundary(start) {
            start += 1;
        }
        &body[start..]
    } else {
        cut_at_char_boundary(body, room).0
    };
    let note = format!("[... {} bytes cut]\n", body.len() - kept.len());
    let text = if keep_tail {
        format!("{note}{kept}")
    } else if kept.ends_with('\n') || kept.is_empty() {
        format!("{kept}{note}")
    } else {
        format!("{kept}\n{note}")
    };
    // The note fits NOTE_ROOM unless `max` itself is smaller.
    (cut_at_char_boundary(&text, max).0.to_owned(), true)
}

/// A command's stdout (and its stderr and exit status when it failed), bounded
/// in time and size; a command that cannot run says why.
async fn command(program: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(COMMAND_WAIT, cmd.output()).await {
        Err(_) => format!(
            "({program} did not finish within {} s)\n",
            COMMAND_WAIT.as_secs()
        ),
        Ok(Err(e)) => format!("(cannot run {program}: {e})\n"),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                text.push_str(&format!(
                    "({program} failed: {}; {})\n",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            cut_at_char_boundary(&text, COMMAND_OUTPUT_MAX).0.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(title: &str, body: String, keep_tail: bool) -> Part {
        Part {
            title: title.into(),
            body,
            keep_tail,
        }
    }

    fn parts(sizes: [usize; 4]) -> Vec<Part> {
        vec![
            part("status", "s".repeat(sizes[0]), false),
            part(
                "log",
                (0..sizes[1])
                    .map(|i| if i % 10 == 9 { '\n' } else { 'l' })
                    .collect(),
                true,
            ),
            part("routes", "r".repeat(sizes[2]), false),
            part("nft", "é".repeat(sizes[3] / 2), false),
        ]
    }

    #[test]
    fn the_bundle_fits_the_cap_at_under_and_over_its_size() {
        let whole = assemble(parts([100, 200, 300, 400]), usize::MAX).0;
        let size = whole.len();
        // At and over: nothing cut.
        assert_eq!(
            assemble(parts([100, 200, 300, 400]), size),
            (whole.clone(), false)
        );
        assert!(!assemble(parts([100, 200, 300, 400]), size + 1).1);
        // Just under, and far under: cut, flagged, within the cap, valid UTF-8.
        for cap in [size - 1, size / 2, 300, 100, 10, 1, 0] {
            let (text, cut) = assemble(parts([100, 200, 300, 400]), cap);
            assert!(cut, "cap {cap}");
            assert!(text.len() <= cap, "cap {cap}: {} bytes", text.len());
        }
    }

    #[test]
    fn a_short_part_leaves_its_room_to_the_long_ones_and_cut_parts_say_so() {
        let (text, cut) = assemble(parts([10, 5000, 10, 5000]), 2000);
        assert!(cut);
        assert!(text.len() <= 2000 && text.len() > 1900, "{}", text.len());
        // The short parts are whole.
        assert!(text.contains(&format!("== status ==\n{}== log", "s".repeat(10))));
        assert!(text.contains(&format!("== routes ==\n{}== nft", "r".repeat(10))));
        // The log keeps its newest lines after the note; nft its head before it.
        let log = text.split("== log ==\n").nth(1).unwrap();
        assert!(log.starts_with("[... "), "{log:.60}");
        assert!(text.trim_end().ends_with("bytes cut]"));
    }
}

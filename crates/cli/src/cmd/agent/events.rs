//! `weft events`: the anomaly events this node's agent raised lately (a
//! bounded ring), and how they are rendered (`weft admin events` too).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use weft_proto::events::{AnomalyEvent, Baseline};
use weft_proto::local::{LocalRequest, LocalResponse};

use super::{SocketArg, call};
use crate::CodedError;
use crate::cmd::format::{datetime, out, safe};

/// `weft events`: prints the events, oldest first; with `--json`, the
/// agent's answer (`events`, `pending_upload`, `dropped`).
pub fn events(sock: &SocketArg, json: bool) -> anyhow::Result<ExitCode> {
    let resp = call(&sock.socket, &LocalRequest::Events)?;
    let (events, pending_upload, dropped) = match resp {
        LocalResponse::Events {
            events,
            pending_upload,
            dropped,
        } => (events, pending_upload, dropped),
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not keep anomaly events (upgrade weftd)"),
    };
    if json {
        out(&format!(
            "{}\n",
            serde_json::json!({
                "events": events,
                "pending_upload": pending_upload,
                "dropped": dropped,
            })
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        out("no anomaly events\n");
    }
    for e in &events {
        out(&render(None, e));
    }
    if pending_upload > 0 || dropped > 0 {
        out(&format!(
            "{pending_upload} waiting to be uploaded to the controller; {dropped} dropped unsent\n"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// One event in three lines: when, what and where; the evidence against its
/// baseline; the sentence. `node`: whose event (the controller's log).
pub(crate) fn render(node: Option<&str>, e: &AnomalyEvent) -> String {
    let mut o = String::new();
    let _ = write!(o, "{}  {}", datetime(e.at_ms), e.kind);
    if let Some(n) = node {
        let _ = write!(o, "  node {}", safe(n));
    }
    if let Some(p) = &e.peer {
        let _ = write!(o, "  peer {}", safe(p));
    }
    if let Some(t) = &e.target {
        let _ = write!(o, "  target {}", safe(t));
    }
    let window = if e.window_secs > 0 {
        format!(" in {} s", e.window_secs)
    } else {
        String::new()
    };
    let evidence = match e.baseline {
        Baseline::Ewma {
            mean,
            stddev,
            zscore,
        } => format!(
            "baseline {} ± {} {}, z-score {zscore:.1}",
            num(mean),
            num(stddev),
            safe(&e.unit)
        ),
        Baseline::Threshold { threshold, ratio } => {
            format!("threshold {}, {ratio:.1}x", num(threshold))
        }
        Baseline::Expected => "expected none (what the admin expects or approved)".into(),
    };
    let _ = writeln!(
        o,
        "\n  observed {} {}{window}; {evidence}",
        num(e.observed),
        safe(&e.unit)
    );
    for (k, v) in &e.details {
        let _ = write!(o, "  {}={}", safe(k), safe(v));
    }
    if !e.details.is_empty() {
        o.push('\n');
    }
    let _ = writeln!(o, "  {}", safe(&e.summary));
    o
}

/// A number without needless decimals.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::events::AnomalyKind;

    #[test]
    fn an_event_shows_its_evidence_and_escapes_what_it_carries() {
        let e = AnomalyEvent {
            id: 1,
            at_ms: 1_700_000_000_000,
            kind: AnomalyKind::Scan,
            peer: Some("b".into()),
            peer_key: None,
            target: Some("b (100.64.0.3)".into()),
            observed: 200.0,
            unit: "distinct ports".into(),
            baseline: Baseline::Threshold {
                threshold: 20.0,
                ratio: 10.0,
            },
            window_secs: 10,
            details: [("direction".to_owned(), "egress".to_owned())].into(),
            summary: "a scan\u{202e}".into(),
        };
        let s = render(Some("a"), &e);
        assert!(
            s.starts_with("2023-11-14T22:13:20Z  scan  node a  peer b  target b (100.64.0.3)"),
            "{s}"
        );
        assert!(
            s.contains("observed 200 distinct ports in 10 s; threshold 20, 10.0x"),
            "{s}"
        );
        assert!(s.contains("direction=egress"), "{s}");
        assert!(s.contains("a scan\\u{202e}"), "{s}");
    }
}

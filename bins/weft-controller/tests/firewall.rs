//! The host firewall against the real controller and `weft admin firewall`:
//! a file refused with its lines, a file that reaches exactly the nodes it
//! selects as a map delta, a dynamic rule that expires by itself (the sweep
//! removes it and tells only its node), revoke, audit, and a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use weft_proto::hostfw::{ChainPolicy, HostFirewallSpec};
use weft_proto::netmap::{MapChange, MapEvent, NetworkMap};

const IDLE: Duration = Duration::from_secs(10);

/// The next host firewall change on `s` within `wait`, applied to `map`.
async fn next_firewall(
    s: &mut weft_api_client::MapStream,
    map: &mut NetworkMap,
    wait: Duration,
) -> Option<Option<HostFirewallSpec>> {
    next_change(s, map, wait, |c| match c {
        MapChange::HostFirewall { spec } => Some(spec.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewall_file_and_dynamic_rules_reach_exactly_their_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    admin
        .create_network(&network("lab", "100.64.0.0/24", 8))
        .await
        .unwrap();
    let mut web = token_req(&["lab"], None, 3600);
    web.tags = vec!["web".into()];
    let web_tok = admin.create_token(&web).await.unwrap().token;
    let plain_tok = token_for(&admin, &["lab"]).await;
    let c = ctl.client();
    let (a, x) = (identity(8), identity(8));
    let ra = register(&c, &web_tok, &a).await.unwrap();
    let rx = register(&c, &plain_tok, &x).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();
    let cx = c.with_bearer(&rx.credential).unwrap();
    let mut sa = ca.map_stream(None, IDLE).await.unwrap();
    let mut sx = cx.map_stream(None, IDLE).await.unwrap();
    let MapEvent::Snapshot(mut ma) = next_event(&mut sa).await else {
        panic!("first event must be a snapshot")
    };
    let MapEvent::Snapshot(mut mx) = next_event(&mut sx).await else {
        panic!("first event must be a snapshot")
    };
    assert_eq!(ma.host_firewall, None);

    // A file with mistakes: every one with its line, nothing stored.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[firewall]]\nnodes = [\"tag:web\"]\ninput = \"dorp\"\n\n[[firewall.rule]]\nport = 80\n",
    )
    .unwrap();
    let bad_s = bad.to_str().unwrap();
    for cmd in ["set", "check"] {
        let (ok, _, err) = ctl.cli(&["firewall", cmd, bad_s]);
        assert!(!ok, "{cmd} of a bad file succeeded");
        assert!(
            err.contains(&format!("{bad_s}:3:9: unknown chain policy")),
            "{err}"
        );
        assert!(err.contains(&format!("{bad_s}:6:")), "{err}");
    }
    let (ok, out, _) = ctl.cli(&["--json", "firewall", "set", bad_s]);
    assert!(!ok);
    assert!(out.contains("\"firewall_invalid\""), "{out}");
    // The controller refuses it too (not only the CLI).
    let e = admin
        .set_firewall(&weft_proto::hostfw::SetFirewallRequest {
            text: "[[firewall]]\nnodes = \"*\"\noutput = \"x\"\n".into(),
            expect_version: None,
        })
        .await
        .unwrap_err();
    let (status, code, msg) = refused::<()>(Err(e));
    assert_eq!((status, code.as_str()), (400, "firewall_invalid"));
    assert!(msg.contains("firewall:3:10"), "{msg}");

    // A file selecting tag web: a receives it, x does not.
    let good = dir.path().join("fw.toml");
    std::fs::write(
        &good,
        "# web servers\n[[firewall]]\nnodes = [\"tag:web\"]\nmanagement = [\"10.9.0.0/16\"]\n\n[[firewall.rule]]\nproto = \"tcp\"\nport = \"80,443\"\ncomment = \"web\"\n",
    )
    .unwrap();
    let good_s = good.to_str().unwrap();
    let (ok, out, err) = ctl.cli(&["firewall", "check", good_s]);
    assert!(ok, "{err}");
    assert!(out.contains("ok; it would give 1 node(s)"), "{out}");
    assert!(out.contains(&ra.name), "{out}");
    let (ok, out, err) = ctl.cli(&["firewall", "set", good_s]);
    assert!(ok, "{err}");
    assert!(
        out.contains("host firewall version 1 set by admin: 1 node(s)"),
        "{out}"
    );
    let spec = next_firewall(&mut sa, &mut ma, Duration::from_secs(5))
        .await
        .expect("a receives its firewall")
        .expect("a spec, not a removal");
    assert_eq!(spec.input, ChainPolicy::Drop);
    assert_eq!(spec.rules.len(), 1);
    assert_eq!(spec.rules[0].id, "line:6");
    assert_eq!(ma.host_firewall.as_ref(), Some(&spec));
    assert_eq!(
        next_firewall(&mut sx, &mut mx, Duration::from_millis(500)).await,
        None,
        "x is not selected and hears nothing"
    );
    let (ok, out, _) = ctl.cli(&["firewall", "show"]);
    assert!(ok);
    assert_eq!(out, std::fs::read_to_string(&good).unwrap());
    let (ok, out, _) = ctl.cli(&["firewall", "show", "--nodes"]);
    assert!(ok);
    assert!(out.contains(&ra.name) && !out.contains(&rx.name), "{out}");

    // A dynamic rule for 2 s: a receives it, then its removal once it
    // expired (the sweep), x hears nothing.
    let (ok, _, err) = ctl.cli(&["firewall", "allow", &rx.name, "--port", "8080"]);
    assert!(!ok && err.contains("has no host firewall"), "{err}");
    let (ok, out, err) = ctl.cli(&[
        "firewall",
        "allow",
        &ra.name,
        "--port",
        "8080",
        "--from",
        "192.0.2.0/24",
        "--comment",
        "deploy",
        "--for",
        "2s",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "rule dyn:1 on {}: in tcp/8080 from 192.0.2.0/24 until",
            ra.name
        )),
        "{out}"
    );
    let spec = next_firewall(&mut sa, &mut ma, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let dynamic = spec.rules.last().unwrap();
    assert_eq!(dynamic.id, "dyn:1");
    assert!(dynamic.expires_at_ms.is_some());
    let (ok, out, _) = ctl.cli(&["firewall", "rules"]);
    assert!(
        ok && out.contains("dyn:1") && out.contains("deploy"),
        "{out}"
    );
    let spec = next_firewall(&mut sa, &mut ma, Duration::from_secs(6))
        .await
        .expect("the expired rule's removal reaches a")
        .unwrap();
    assert!(spec.rules.iter().all(|r| r.id != "dyn:1"));
    let (ok, out, _) = ctl.cli(&["firewall", "rules"]);
    assert!(ok && out.contains("no dynamic firewall rules"), "{out}");
    assert_eq!(
        next_firewall(&mut sx, &mut mx, Duration::from_millis(300)).await,
        None
    );

    // A rule until revoked, kept across a restart, then revoked.
    let (ok, _, err) = ctl.cli(&[
        "firewall", "allow", &ra.name, "--proto", "udp", "--port", "53",
    ]);
    assert!(ok, "{err}");
    ctl.sigterm(Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let c = ctl.client();
    let ma = c.with_bearer(&ra.credential).unwrap().map().await.unwrap();
    let spec = ma.host_firewall.unwrap();
    assert_eq!(spec.rules.last().unwrap().id, "dyn:2");
    let mx = c.with_bearer(&rx.credential).unwrap().map().await.unwrap();
    assert_eq!(mx.host_firewall, None);
    let (ok, out, err) = ctl.cli(&["firewall", "revoke", "dyn:2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("rule dyn:2") && out.contains("revoked"),
        "{out}"
    );
    let (ok, _, err) = ctl.cli(&["firewall", "revoke", "dyn:2"]);
    assert!(!ok && err.contains("no dynamic firewall rule"), "{err}");
    let ma = c.with_bearer(&ra.credential).unwrap().map().await.unwrap();
    assert!(
        ma.host_firewall
            .unwrap()
            .rules
            .iter()
            .all(|r| r.id != "dyn:2")
    );

    // Audit: set, allow, expire, allow, revoke.
    let audit = ctl.admin().audit(100, None, None).await.unwrap().entries;
    let mut actions: Vec<&str> = audit
        .iter()
        .map(|e| e.action.as_str())
        .filter(|a| a.starts_with("firewall."))
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        vec![
            "firewall.set",
            "firewall.allow",
            "firewall.expire",
            "firewall.allow",
            "firewall.revoke"
        ]
    );
    let expire = audit
        .iter()
        .find(|e| e.action == "firewall.expire")
        .unwrap();
    assert_eq!(expire.actor, "system");
}

#![allow(clippy::unwrap_used, reason = "test code")]

use serde_json::Value;

use super::*;
use crate::exec::{Executor, FakeKernel};
use crate::{Action, DesiredState, TeardownScope, plan_at, reconcile_once, teardown};

fn rule(chain: Chain, accept: bool, id: &str) -> HostFwRule {
    HostFwRule {
        chain,
        accept,
        proto: Some(L4::Tcp),
        ports: vec![(80, 80), (8000, 8080)],
        addrs: Vec::new(),
        sets: Vec::new(),
        iface: None,
        sport: Vec::new(),
        no_syn: false,
        comment: format!("weft:{id}"),
        expires_at_ms: None,
    }
}

fn fw(rules: Vec<HostFwRule>) -> HostFirewall {
    HostFirewall {
        input_drop: true,
        output_drop: false,
        forward_drop: false,
        log_drops: true,
        management: vec!["10.0.0.0/8".parse().unwrap()],
        management_ports: vec![22],
        rules,
        sets: BTreeMap::new(),
    }
}

fn json(fw: &HostFirewall, now_ms: u64) -> Value {
    serde_json::to_value(render(fw, now_ms)).unwrap()
}

/// `(command, kind, object)` of every entry of a rendered batch.
fn entries(v: &Value) -> Vec<(String, String, Value)> {
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let (cmd, inner) = e.as_object().unwrap().iter().next().unwrap();
            let (kind, obj) = inner.as_object().unwrap().iter().next().unwrap();
            (cmd.clone(), kind.clone(), obj.clone())
        })
        .collect()
}

fn comments(v: &Value, chain: &str) -> Vec<String> {
    entries(v)
        .into_iter()
        .filter(|(_, k, o)| k == "rule" && o["chain"] == chain)
        .map(|(_, _, o)| o["comment"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_table_is_replaced_in_one_batch_base_then_drops_then_accepts() {
    let v = json(
        &fw(vec![
            rule(Chain::Input, true, "line:4"),
            rule(Chain::Input, false, "line:9"),
        ]),
        0,
    );
    let e = entries(&v);
    let head: Vec<(&str, &str)> = e[..3]
        .iter()
        .map(|(c, k, _)| (c.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        head,
        [("add", "table"), ("delete", "table"), ("add", "table")]
    );
    assert_eq!(e[0].2["name"], HOST_TABLE);
    assert_eq!(e[0].2["family"], "inet");
    let chains: Vec<(String, String)> = e
        .iter()
        .filter(|(_, k, _)| k == "chain")
        .map(|(_, _, o)| {
            (
                o["name"].as_str().unwrap().to_owned(),
                o["policy"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            ("input".to_owned(), "drop".to_owned()),
            ("output".to_owned(), "accept".to_owned()),
            ("forward".to_owned(), "accept".to_owned())
        ]
    );
    let input = comments(&v, "input");
    let names: Vec<&str> = input
        .iter()
        .map(|c| c.rsplit_once(' ').map_or(c.as_str(), |(a, _)| a))
        .collect();
    assert_eq!(
        names,
        [
            "weft:base:lo",
            "weft:base:established",
            "weft:base:icmp",
            "weft:base:icmpv6",
            "weft:base:mgmt",
            "weft:line:9",
            "weft:line:4",
            "weft:base:log",
            "weft:base:drop"
        ]
    );
    // Policy accept chains get no base and no final drop.
    assert!(comments(&v, "output").is_empty());
    let text = v.to_string();
    assert!(
        text.contains(r#"{"limit":{"burst":20,"per":"second","rate":10}}"#),
        "{text}"
    );
    assert!(text.contains("weft-host drop: "), "{text}");
    assert!(text.contains("nd-neighbor-solicit"), "{text}");
    // Ports as an anonymous set with a range; the drop rule counted.
    assert!(
        text.contains(r#"{"set":[80,{"range":[8000,8080]}]}"#),
        "{text}"
    );
}

#[test]
fn output_drop_adds_outbound_dns_https_ntp_and_no_log_without_log_drops() {
    let mut f = fw(Vec::new());
    f.output_drop = true;
    f.log_drops = false;
    let v = json(&f, 0);
    let out = comments(&v, "output");
    assert_eq!(
        out,
        [
            "weft:base:lo",
            "weft:base:established",
            "weft:base:icmp",
            "weft:base:icmpv6",
            "weft:base:out-udp",
            "weft:base:out-tcp",
            "weft:base:drop"
        ]
    );
    assert!(!v.to_string().contains("\"log\""));
}

#[test]
fn a_rule_expands_per_family_and_per_set_with_one_comment() {
    let mut r = rule(Chain::Output, true, "line:2");
    r.addrs = vec![
        "192.0.2.0/24".parse().unwrap(),
        "198.51.100.7/32".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    r.sets = vec!["d4_1".to_owned(), "d6_1".to_owned()];
    r.iface = Some("eth*".to_owned());
    let mut f = fw(vec![r]);
    f.sets
        .insert("d4_1".to_owned(), ["203.0.113.5".parse().unwrap()].into());
    let v = json(&f, 0);
    let out = comments(&v, "output");
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(out.windows(2).all(|w| w[0] == w[1]));
    let text = v.to_string();
    assert!(text.contains(r#""right":"@d6_1""#), "{text}");
    assert!(
        text.contains(r#"{"prefix":{"addr":"192.0.2.0","len":24}}"#),
        "{text}"
    );
    assert!(text.contains(r#""right":"eth*""#), "{text}");
    // Both domain sets exist (d6_1 empty), typed by their names.
    let sets: Vec<(String, String)> = entries(&v)
        .into_iter()
        .filter(|(_, k, _)| k == "set")
        .map(|(_, _, o)| {
            (
                o["name"].as_str().unwrap().to_owned(),
                o["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sets,
        [
            ("d4_1".to_owned(), "ipv4_addr".to_owned()),
            ("d6_1".to_owned(), "ipv6_addr".to_owned())
        ]
    );
}

#[test]
fn a_changed_rule_under_the_same_id_gets_another_comment() {
    let a = ObservedHostFirewall::expected(&fw(vec![rule(Chain::Input, true, "line:4")]), 0);
    let mut changed = rule(Chain::Input, true, "line:4");
    changed.ports = vec![(81, 81)];
    let b = ObservedHostFirewall::expected(&fw(vec![changed]), 0);
    assert_ne!(a, b);
    assert_eq!(
        a,
        ObservedHostFirewall::expected(&fw(vec![rule(Chain::Input, true, "line:4")]), 0)
    );
}

#[test]
fn an_expiring_rule_is_guarded_by_a_timing_out_element_and_left_out_once_expired() {
    let mut r = rule(Chain::Input, true, "dyn:3");
    r.expires_at_ms = Some(10_500);
    let f = fw(vec![rule(Chain::Input, true, "line:1"), r]);
    let v = json(&f, 1_000);
    let guard = entries(&v)
        .into_iter()
        .find(|(_, k, o)| k == "set" && o["name"] == "x_1")
        .unwrap()
        .2;
    assert_eq!(guard["type"], "inet_proto");
    assert_eq!(guard["flags"], serde_json::json!(["timeout"]));
    // 9.5 s left: rounded up to 10 s, never early by more than a second.
    assert_eq!(guard["elem"].as_array().unwrap().len(), 1);
    assert_eq!(guard["elem"][0]["elem"]["val"], 6);
    assert_eq!(guard["elem"][0]["elem"]["timeout"], 10);
    assert!(v.to_string().contains(r#""right":"@x_1""#));
    assert_eq!(f.next_expiry(1_000), Some(10_500));
    assert_eq!(f.next_expiry(10_500), None);
    let later = json(&f, 10_500);
    assert_eq!(
        comments(&later, "input")
            .iter()
            .filter(|c| c.contains("dyn:3"))
            .count(),
        0
    );
    assert!(!later.to_string().contains("x_1"));
    // Any protocol: every protocol number times out.
    let mut any = rule(Chain::Input, true, "dyn:4");
    any.proto = None;
    any.ports.clear();
    any.expires_at_ms = Some(2_000);
    let v = json(&fw(vec![any]), 1_999);
    let guard = entries(&v)
        .into_iter()
        .find(|(_, k, o)| k == "set" && o["name"] == "x_0")
        .unwrap()
        .2;
    assert_eq!(guard["elem"].as_array().unwrap().len(), 256);
    assert_eq!(guard["elem"][0]["elem"]["timeout"], 1);
}

#[test]
fn a_listing_reads_policies_weft_comments_and_domain_sets() {
    // As `nft -j list table inet weft_host` (nft 1.0.6) prints it.
    let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "weft_host", "handle": 1}}, {"set": {"family": "inet", "name": "d4_1", "table": "weft_host", "type": "ipv4_addr", "handle": 2, "elem": ["192.0.2.1", "192.0.2.2"]}}, {"set": {"family": "inet", "name": "x_0", "table": "weft_host", "type": "inet_proto", "handle": 3, "flags": ["timeout"], "elem": [{"elem": {"val": "tcp", "timeout": 3600, "expires": 3599}}]}}, {"chain": {"family": "inet", "table": "weft_host", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "weft_host", "chain": "input", "handle": 4, "comment": "weft:base:lo", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "weft_host", "chain": "input", "handle": 5, "comment": "weft:dyn:1 0000abcd", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "@x_0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "weft_host", "chain": "input", "handle": 6, "comment": "weft:base:drop", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "weft_host", "chain": "input", "handle": 7, "comment": "someone else", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}]}"#;
    let got = parse_listing(listing).unwrap();
    assert_eq!(got.policies, [("input".to_owned(), true)].into());
    let rules: Vec<(&str, &str)> = got
        .rules
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("input", ""),
            ("input", "weft:base:drop"),
            ("input", "weft:base:lo"),
            ("input", "weft:dyn:1 0000abcd")
        ]
    );
    assert_eq!(
        got.sets,
        [(
            "d4_1".to_owned(),
            ["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into()
        )]
        .into()
    );
    assert!(parse_listing("not json").is_err());
    assert!(parse_listing(r#"{"nftables":[{"set":{"family":"inet","name":"d4_1","table":"t","type":"ipv4_addr","elem":["nope"]}}]}"#).is_err());
}

#[test]
fn named_set_updates_flush_then_add_in_one_batch() {
    let v = serde_json::to_value(update_sets(
        nftables::types::NfFamily::INet,
        "filter",
        "web4",
        Some("web6"),
        &["192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap()].into(),
        &BTreeSet::new(),
    ))
    .unwrap();
    let e = entries(&v);
    let kinds: Vec<(&str, &str, &str)> = e
        .iter()
        .map(|(c, k, o)| (c.as_str(), k.as_str(), o["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("flush", "set", "web4"),
            ("add", "element", "web4"),
            ("flush", "set", "web6")
        ]
    );
    assert_eq!(
        e[1].2["elem"],
        serde_json::json!(["192.0.2.1", "192.0.2.2"])
    );
    assert_eq!(e[1].2["table"], "filter");
}

fn desired(f: HostFirewall) -> DesiredState {
    DesiredState {
        host_firewall: Some(f),
        ..DesiredState::default()
    }
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

#[test]
fn the_reconciler_applies_repairs_a_flush_and_deletes() {
    let mut k = FakeKernel::new();
    let want = desired(fw(vec![rule(Chain::Input, true, "line:4")]));
    let report = reconcile_once(&mut k, &want);
    assert!(report.converged);
    assert_eq!(
        lines(&report.applied),
        [
            "set nftables table inet weft_host: input drop, output accept, forward accept, 1 rules, 0 sets"
        ]
    );
    assert!(reconcile_once(&mut k, &want).applied.is_empty());
    assert!(k.flush_host_table());
    let report = reconcile_once(&mut k, &want);
    assert_eq!(report.applied.len(), 1, "drift repaired");
    assert!(report.converged);
    // A domain set changed behind weft's back is restored too.
    let mut with_set = fw(vec![]);
    with_set
        .sets
        .insert("d4_1".to_owned(), ["192.0.2.1".parse().unwrap()].into());
    assert!(reconcile_once(&mut k, &desired(with_set.clone())).converged);
    assert!(
        reconcile_once(&mut k, &desired(with_set))
            .applied
            .is_empty()
    );
    // None: the table goes.
    let report = reconcile_once(&mut k, &DesiredState::default());
    assert_eq!(
        lines(&report.applied),
        ["delete nftables table inet weft_host"]
    );
    assert!(k.host_table().is_none());
    assert!(k.observe().unwrap().is_clean());
}

#[test]
fn expiry_is_planned_at_the_given_time_and_teardown_removes_the_table() {
    let mut k = FakeKernel::new();
    let mut r = rule(Chain::Input, true, "dyn:1");
    let far = 1_000_000;
    k.set_wall_ms(far - 500);
    r.expires_at_ms = Some(far);
    let want = desired(fw(vec![r]));
    assert!(reconcile_once(&mut k, &want).converged);
    let observed = k.observe().unwrap();
    assert!(plan_at(&want, &observed, far - 1).is_empty());
    let at_expiry = plan_at(&want, &observed, far);
    assert_eq!(
        lines(&at_expiry.actions),
        [
            "set nftables table inet weft_host: input drop, output accept, forward accept, 0 rules, 0 sets"
        ]
    );
    // Leaving one network leaves the host firewall alone; weft down removes it.
    assert!(
        teardown(&mut k, &TeardownScope::Links(["weft0".to_owned()].into()))
            .applied
            .is_empty()
    );
    let report = teardown(&mut k, &TeardownScope::All);
    assert_eq!(
        lines(&report.applied),
        ["delete nftables table inet weft_host"]
    );
    assert!(report.converged);
}

/// The reconciler wakes at the next expiry by itself (not only at the 2 s
/// drift check).
#[test]
fn the_reconciler_wakes_at_the_next_expiry() {
    #[expect(clippy::disallowed_methods, reason = "a test needs some base instant")]
    let start = std::time::Instant::now();
    let mut k = FakeKernel::new();
    k.set_wall_ms(1_000_000);
    let mut r = rule(Chain::Input, true, "dyn:8");
    r.expires_at_ms = Some(1_000_600);
    let mut rec = crate::Reconciler::new(crate::ReconcilerConfig::default(), 1);
    rec.set_desired(desired(fw(vec![r])), start);
    assert!(rec.handle_timeout(&mut k, start).unwrap().converged);
    let (due, why) = rec.poll_timeout().unwrap();
    assert_eq!(why, "reconcile: host firewall rule expires");
    assert_eq!(due, start + std::time::Duration::from_millis(600));
    k.set_wall_ms(1_000_600);
    let report = rec.handle_timeout(&mut k, due).unwrap();
    assert_eq!(report.applied.len(), 1, "the expired rule leaves the table");
    assert_eq!(k.host_table().unwrap().rules.len(), 0);
    assert_eq!(rec.poll_timeout().unwrap().1, "reconcile: drift check");
}

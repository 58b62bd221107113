use super::*;

const FILE: &str = r#"# web servers: default drop in, SSH from the office
[[firewall]]
nodes = ["tag:web", "db1"]
management = ["10.0.0.0/8", "2001:db8::1"]

[[firewall.rule]]
proto = "tcp"
port = "80,443,8000-8080"
comment = "public web"

[[firewall.rule]]
direction = "out"
action = "drop"
to = ["192.0.2.0/24", "domain:Bad.Example.com"]

[[firewall]]
nodes = "*"
input = "accept"
output = "drop"
log_drops = false
management_ports = [22, 2222]
"#;

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_file_parses_into_profiles_with_line_ids_and_defaults() {
    let f = parse_firewall(FILE).unwrap();
    assert_eq!(f.profiles.len(), 2);
    let web = &f.profiles[0];
    assert_eq!(web.line, 2);
    assert_eq!(
        web.nodes,
        vec![
            NodeSelector::Tag("web".into()),
            NodeSelector::Node("db1".into())
        ]
    );
    assert_eq!(web.input, ChainPolicy::Drop);
    assert_eq!(web.output, ChainPolicy::Accept);
    assert_eq!(web.forward, ChainPolicy::Accept);
    assert_eq!(web.management_ports, vec![22]);
    assert!(web.log_drops);
    assert_eq!(
        web.management[1],
        "2001:db8::1/128".parse::<IpNet>().unwrap()
    );
    assert_eq!(web.rules.len(), 2);
    let r = &web.rules[0];
    assert_eq!(r.id, "line:6");
    assert_eq!(r.direction, Direction::In);
    assert_eq!(r.action, RuleAction::Accept);
    assert_eq!(
        r.ports,
        vec![
            PortRange { start: 80, end: 80 },
            PortRange {
                start: 443,
                end: 443
            },
            PortRange {
                start: 8000,
                end: 8080
            }
        ]
    );
    assert_eq!(r.comment, "public web");
    let r = &web.rules[1];
    assert_eq!(r.id, "line:11");
    assert_eq!(r.action, RuleAction::Drop);
    assert_eq!(
        r.peers[1],
        HostAddr::Domain("bad.example.com".into()),
        "domains are lowercased"
    );
    let all = &f.profiles[1];
    assert_eq!(all.line, 16);
    assert_eq!(all.nodes, vec![NodeSelector::All]);
    assert_eq!(all.output, ChainPolicy::Drop);
    assert!(!all.log_drops);
    assert_eq!(all.management_ports, vec![22, 2222]);
}

#[test]
fn mistakes_are_reported_with_their_lines() {
    let cases: &[(&str, u32, &str)] = &[
        ("[[firewall]]\ninput = \"drop\"\n", 1, "missing nodes"),
        (
            "[[firewall]]\nnodes = [\"*\"]\ninput = \"dorp\"\n",
            3,
            "unknown chain policy \"dorp\"",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n\n[[firewall.rule]]\nproto = \"tcp\"\nport = \"80,0\"\n",
            6,
            "invalid port",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\nport = 80\n",
            4,
            "port needs proto",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\nfrom = [\"10.0.0.1/8\"]\n",
            4,
            "host bits",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\nto = [\"10.0.0.0/8\"]\n",
            4,
            "needs direction = \"out\"",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\ndirection = \"out\"\nfrom = [\"10.0.0.0/8\"]\n",
            5,
            "needs direction = \"in\"",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\nfrom = [\"domain:nodot\"]\n",
            4,
            "not a domain name",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\nproto = \"tpc\"\n",
            4,
            "unknown proto",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n[[firewall.rule]]\ncomment = \"tab\\there\"\n",
            4,
            "printable ASCII",
        ),
        (
            "[[firewall]]\nnodes = [\"Web_1\"]\n",
            2,
            "invalid node name",
        ),
        (
            "[[firewall]]\nnodes = [\"group:x\"]\n",
            2,
            "unknown node selector",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\nmanagement_ports = [\"20-22\"]\n",
            3,
            "one port number",
        ),
        (
            "[[firewall]]\nnodes = [\"*\"]\n\n\n[[firewall.rule]]\nports = 80\n",
            6,
            "unknown field",
        ),
        ("[[firewall]]\nnodes = [\n", 2, "unclosed array"),
    ];
    for (text, line, want) in cases {
        let e = parse_firewall(text).expect_err(text);
        let first = e.first();
        assert_eq!(first.line, *line, "{text}: {e}");
        assert!(first.to_string().contains(want), "{text}: {e}");
    }
    // Every mistake, not only the first.
    let e = parse_firewall(
        "[[firewall]]\nnodes = [\"*\"]\ninput = \"x\"\noutput = \"y\"\n[[firewall.rule]]\nproto = \"q\"\n",
    )
    .unwrap_err();
    let lines: Vec<u32> = e.errors().iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4, 6]);
    // Rendered with the offending line and a caret.
    let text = "[[firewall]]\nnodes = [\"*\"]\ninput = \"dorp\"\n";
    let shown = parse_firewall(text).unwrap_err().render("firewall", text);
    assert!(
        shown.starts_with("firewall:3:9: unknown chain policy"),
        "{shown}"
    );
    assert!(shown.contains("3 | input = \"dorp\""), "{shown}");
}

#[test]
fn bounds_are_refused() {
    let big = "#".repeat(MAX_FIREWALL_BYTES + 1);
    assert!(parse_firewall(&big).is_err());
    let peers: Vec<String> = (0..=MAX_PEERS_PER_RULE)
        .map(|i| format!("\"10.0.{}.{}\"", i / 250, i % 250))
        .collect();
    let text = format!(
        "[[firewall]]\nnodes = \"*\"\n[[firewall.rule]]\nfrom = [{}]\n",
        peers.join(",")
    );
    let e = parse_firewall(&text).unwrap_err();
    assert!(e.to_string().contains("too many addresses"), "{e}");
    let at: Vec<String> = (1..=MAX_PORTS_PER_RULE).map(|p| p.to_string()).collect();
    let text = format!(
        "[[firewall]]\nnodes = \"*\"\n[[firewall.rule]]\nproto = \"udp\"\nport = \"{}\"\n",
        at.join(",")
    );
    assert!(parse_firewall(&text).is_ok());
    let text = text.replace("\"\n", ",999\"\n");
    assert!(parse_firewall(&text).is_err());
}

#[test]
fn the_first_profile_that_selects_a_node_wins_and_others_have_none() {
    let f = parse_firewall(
        "[[firewall]]\nnodes = [\"tag:web\"]\n[[firewall.rule]]\nproto = \"tcp\"\nport = 80\n\n[[firewall]]\nnodes = [\"db1\", \"node:db2\"]\ninput = \"accept\"\n",
    )
    .unwrap();
    let dynamic = vec![HostRule {
        id: "dyn:7".into(),
        direction: Direction::In,
        action: RuleAction::Accept,
        proto: Proto::Tcp,
        ports: vec![PortRange {
            start: 8080,
            end: 8080,
        }],
        peers: vec![],
        comment: "task".into(),
        expires_at_ms: Some(5_000),
    }];
    let web = compile_firewall(&f, "db1", &tags(&["web"]), &dynamic, 9).unwrap();
    assert_eq!(web.version, 9);
    assert_eq!(web.input, ChainPolicy::Drop, "tag:web is first");
    let ids: Vec<&str> = web.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["line:3", "dyn:7"], "declared, then dynamic");
    assert_eq!(web.check(), Ok(()));
    let db2 = compile_firewall(&f, "db2", &[], &[], 9).unwrap();
    assert_eq!(db2.input, ChainPolicy::Accept);
    assert!(db2.rules.is_empty());
    assert_eq!(db2.management_ports, vec![22]);
    assert_eq!(
        compile_firewall(&f, "cache", &tags(&["db"]), &dynamic, 9),
        None,
        "opt-in: no profile, no firewall, dynamic rules or not"
    );
    assert_eq!(
        compile_firewall(&HostFirewallFile::default(), "db1", &[], &[], 1),
        None
    );
}

#[test]
fn cli_values_parse() {
    assert_eq!(
        parse_ports("443, 80,80,1000-2000").unwrap(),
        vec![
            PortRange { start: 80, end: 80 },
            PortRange {
                start: 443,
                end: 443
            },
            PortRange {
                start: 1000,
                end: 2000
            }
        ]
    );
    assert!(parse_ports("70000").is_err());
    assert!(parse_ports("").is_err());
    assert_eq!(
        host_addr("192.0.2.7").unwrap(),
        HostAddr::Cidr("192.0.2.7/32".parse().unwrap())
    );
    assert!(host_addr("domain:a").is_err());
    assert_eq!(parse_proto("udp"), Some(Proto::Udp));
    assert_eq!(parse_proto("sctp"), None);
}

use super::*;
use crate::model::Service;

fn errs(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("should fail")
        .errors()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn one_err(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}

const EXAMPLE: &str = r#"
# who may talk to the databases
[groups]
backend = ["tag:db", "node:cache1"]
ops = ["group:backend", "node:laptop"]

[[rule]]
name = "web to db"
action = "allow"
from = ["tag:web"]
to = ["group:backend"]
proto = "tcp"
ports = [5432, "6379-6380"]

[[rule]]
name = "no ssh to db"
action = "deny"
from = "*"
to = "tag:db"
proto = "tcp"
ports = 22

[[rule]]
action = "allow"
from = ["cidr:100.64.0.0/10", "subnet:10.1.0.0/16", "network:office"]
to = ["*"]
proto = "icmp"

[[test]]
name = "web reaches db"
from = "node:web1"
to = "node:db1"
proto = "tcp"
port = 5432
expect = "allow"

[[test]]
from = "tag:db"
to = "tag:web"
proto = "icmp"
expect = "deny"
"#;

#[test]
fn parses_the_example() {
    let p = parse(EXAMPLE).unwrap();
    assert_eq!(p.groups.len(), 2);
    assert_eq!(p.groups["backend"].line, 4);
    assert_eq!(
        p.groups["ops"].members,
        vec![
            Selector::Group("backend".into()),
            Selector::Node("laptop".into())
        ]
    );
    assert_eq!(p.rules.len(), 3);
    let r = &p.rules[0];
    assert_eq!(r.name.as_deref(), Some("web to db"));
    assert_eq!(r.line, 7);
    assert_eq!(r.action, Action::Allow);
    assert_eq!(r.proto, Proto::Tcp);
    assert_eq!(
        r.ports,
        vec![
            PortRange::single(5432),
            PortRange {
                first: 6379,
                last: 6380
            }
        ]
    );
    assert_eq!(p.rules[1].from, vec![Selector::Any]);
    assert_eq!(p.rules[1].ports, vec![PortRange::single(22)]);
    assert_eq!(p.rules[2].name, None);
    assert_eq!(p.rules[2].proto, Proto::Icmp);
    assert_eq!(p.tests.len(), 2);
    assert_eq!(p.tests[0].service, Service::Tcp(5432));
    assert_eq!(p.tests[0].line, 29);
    assert_eq!(p.tests[1].expect, Expect::Deny);
}

#[test]
fn empty_text_is_an_empty_policy() {
    assert_eq!(parse("").unwrap(), Policy::default());
    assert_eq!(parse("# nothing\n").unwrap(), Policy::default());
}

#[test]
fn to_text_round_trips() {
    let p = parse(EXAMPLE).unwrap();
    let text = p.to_text();
    let q = parse(&text).unwrap();
    assert_eq!(q.to_text(), text);
    assert_eq!(strip_lines(p), strip_lines(q));
}

fn strip_lines(mut p: Policy) -> Policy {
    for g in p.groups.values_mut() {
        g.line = 0;
    }
    for r in &mut p.rules {
        r.line = 0;
    }
    for t in &mut p.tests {
        t.line = 0;
    }
    p
}

#[test]
fn default_policy_is_visible_text() {
    let text = Policy::default_for_network("office").to_text();
    assert!(text.contains("from = [\"network:office\"]"), "{text}");
    assert!(text.contains("name = \"members of office may reach each other\""));
    let p = parse(&text).unwrap();
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].line, 4);
    // The block alone appends cleanly to an existing policy.
    let appended = format!("{EXAMPLE}\n{}", render_rule(&Rule::network_members("lab")));
    assert_eq!(parse(&appended).unwrap().rules.len(), 4);
}

#[test]
fn unknown_selector_points_at_it() {
    let text = "[[rule]]\naction = \"allow\"\nfrom = [\"tag:web\", \"tg:web\"]\nto = [\"*\"]\n";
    assert_eq!(
        one_err(text),
        "3:21: unknown selector \"tg:web\" (expected node:, tag:, group:, network:, cidr:, subnet:, service:, or *)"
    );
    let e = parse(text).unwrap_err();
    assert_eq!(
        e.first().with_source("policy.toml"),
        "policy.toml:3:21: unknown selector \"tg:web\" (expected node:, tag:, group:, network:, cidr:, subnet:, service:, or *)"
    );
}

#[test]
fn syntax_errors_have_positions() {
    assert_eq!(
        one_err("[[rule]]\naction = \"allow\"\nfrom = [\"*\"]\nto = [\"*\"]\nprot = \"tcp\"\n"),
        "5:1: unknown field `prot`, expected one of `name`, `action`, `from`, `to`, `proto`, `ports`"
    );
    assert!(one_err("[[rules]]\n").starts_with("1:3: unknown field `rules`"));
    assert!(one_err("[[rule]]\naction = allow\n").starts_with("2:10:"));
    assert!(one_err("[groups]\na = [\"*\"]\na = [\"*\"]\n").starts_with("3:1:"));
    assert!(one_err("[[rule]]\nfrom = 5\n").starts_with("2:8:"));
}

#[test]
fn missing_keys_point_at_the_rule() {
    let e = errs("x = 1\n");
    assert_eq!(e.len(), 1);
    let e = errs("\n\n[[rule]]\nname = \"r\"\n");
    assert_eq!(
        e,
        vec![
            "3:1: missing action = \"allow\" or \"deny\"",
            "3:1: missing from",
            "3:1: missing to",
        ]
    );
}

#[test]
fn bad_values_each_reported() {
    let text = r#"[[rule]]
action = "permit"
from = []
to = ["node:Web1"]
proto = "tpc"

[[rule]]
action = "allow"
from = ["cidr:10.0.0.1/8"]
to = ["subnet:10.0.0.0/33"]
proto = "icmp"
ports = [22]

[[rule]]
action = "deny"
from = ["*"]
to = ["*"]
proto = "tcp"
ports = [0, "2000-1000", 70000, "ssh", "1-2-3"]
"#;
    assert_eq!(
        errs(text),
        vec![
            "2:10: unknown action \"permit\" (expected \"allow\" or \"deny\")",
            "3:8: from is empty: list at least one selector",
            "4:8: invalid node name \"Web1\" (use 1 to 63 lowercase letters, digits or '-', not starting or ending with '-')",
            "5:9: unknown proto \"tpc\" (expected \"any\", \"tcp\", \"udp\" or \"icmp\")",
            "9:10: invalid prefix \"10.0.0.1/8\": host bits are set; did you mean 10.0.0.0/8?",
            "10:8: invalid prefix \"10.0.0.0/33\": expected ADDRESS/PREFIX, for example 10.1.0.0/16",
            "12:9: ports need proto = \"tcp\" or \"udp\" (this one has proto = \"icmp\")",
            "19:10: invalid port \"0\" (expected a port 1-65535 or a range like \"1000-2000\")",
            "19:13: invalid port \"2000-1000\" (expected a port 1-65535 or a range like \"1000-2000\")",
            "19:26: invalid port \"70000\" (expected a port 1-65535 or a range like \"1000-2000\")",
            "19:33: invalid port \"ssh\" (expected a port 1-65535 or a range like \"1000-2000\")",
            "19:40: invalid port \"1-2-3\" (expected a port 1-65535 or a range like \"1000-2000\")",
        ]
    );
}

#[test]
fn render_shows_the_line_and_a_caret_and_nothing_else() {
    let text = "# a comment\n[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tpc\"\n# more\n";
    let e = parse(text).unwrap_err();
    assert_eq!(
        e.render("policy.toml", text),
        "policy.toml:6:9: unknown proto \"tpc\" (expected \"any\", \"tcp\", \"udp\" or \"icmp\")\n\
         6 | proto = \"tpc\"\n\
         \x20 |         ^"
    );
    // A tab before the column stays a tab under it; two-digit lines widen the gutter.
    let mut text = "\n".repeat(9);
    text.push_str("[[rule]]\n\taction = \"permit\"\nfrom = \"*\"\nto = \"*\"\n");
    let e = parse(&text).unwrap_err();
    assert_eq!(
        e.render("p", &text),
        "p:11:11: unknown action \"permit\" (expected \"allow\" or \"deny\")\n\
         11 | \taction = \"permit\"\n\
         \x20  | \t         ^"
    );
    // TOML syntax errors too, and several errors are separated by a blank line.
    let text = "[[rule]]\naction = allow\n";
    let r = parse(text).unwrap_err().render("x.toml", text);
    assert!(r.starts_with("x.toml:2:10: "), "{r}");
    assert!(r.ends_with("\n2 | action = allow\n  |          ^"), "{r}");
    assert!(!r.contains("[[rule]]"), "only the offending line: {r}");
    let text = "[[rule]]\naction = \"x\"\nfrom = []\nto = \"*\"\n";
    let r = parse(text).unwrap_err().render("y", text);
    assert_eq!(r.matches("\n\ny:").count(), 1, "{r}");
    // No position: the message alone.
    let e = PolicyError {
        line: 0,
        column: 0,
        kind: PolicyErrorKind::Missing("from"),
    };
    assert_eq!(e.render("z", "anything"), "z:0:0: missing from");
}

#[test]
fn ports_with_proto_any_is_an_error() {
    assert_eq!(
        one_err("[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nports = [\"80\"]\n"),
        "5:9: ports need proto = \"tcp\" or \"udp\" (this one has proto = \"any\")"
    );
    assert_eq!(
        one_err(
            "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tcp\"\nports = []\n"
        ),
        "6:9: ports is empty: omit ports to mean every port"
    );
}

#[test]
fn unknown_groups_and_cycles() {
    let text = r#"[groups]
backend = ["tag:db", "group:frontend"]
frontend = ["group:backend"]
solo = ["group:solo"]
ops = ["node:laptop"]

[[rule]]
action = "allow"
from = ["group:opz"]
to = ["group:nothing"]
"#;
    assert_eq!(
        errs(text),
        vec![
            "2:1: group cycle: backend -> frontend -> backend",
            "9:10: unknown group \"opz\" (did you mean \"ops\"?)",
            "10:8: unknown group \"nothing\"",
        ]
    );
    // A self-cycle alone.
    assert_eq!(
        one_err("[groups]\nsolo = [\"group:solo\"]\n"),
        "2:1: group cycle: solo -> solo"
    );
    assert_eq!(
        one_err("[groups]\nBad = [\"*\"]\n"),
        "2:1: invalid group name \"Bad\" (use 1 to 63 of a-z 0-9 - _)"
    );
    assert_eq!(
        one_err("[groups]\nempty = []\n"),
        "2:9: group is empty: list at least one member"
    );
}

#[test]
fn duplicate_rule_names() {
    let text = "[[rule]]\nname = \"a\"\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n\n[[rule]]\nname = \"a\"\naction = \"deny\"\nfrom = \"*\"\nto = \"*\"\n";
    assert_eq!(
        one_err(text),
        "8:8: duplicate rule name \"a\" (first used on line 1)"
    );
}

#[test]
fn test_block_errors() {
    let text = r#"[[test]]
from = "node:web1"
to = "node:db1"
proto = "tcp"
expect = "allow"

[[test]]
from = "node:web1"
to = "node:db1"
proto = "icmp"
port = 7
expect = "maybe"

[[test]]
from = "node:web1"
to = "grp:x"
proto = "any"
port = 99999
expect = "deny"
"#;
    assert_eq!(
        errs(text),
        vec![
            "4:9: a tcp test needs a port",
            "11:8: ports need proto = \"tcp\" or \"udp\" (this one has proto = \"icmp\")",
            "12:10: unknown expect \"maybe\" (expected \"allow\" or \"deny\")",
            "16:7: unknown selector \"grp:x\" (expected node:, tag:, group:, network:, cidr:, subnet:, service:, or *)",
            "18:8: invalid port \"99999\" (expected a port 1-65535 or a range like \"1000-2000\")",
        ]
    );
}

#[test]
fn bounded_input() {
    let big = "#".repeat(MAX_POLICY_BYTES + 1);
    assert_eq!(
        one_err(&big),
        format!("1:1: policy is larger than {MAX_POLICY_BYTES} bytes")
    );
    let many: String = (0..MAX_LIST + 1)
        .map(|i| format!("\"node:n{i}\","))
        .collect();
    let text = format!("[[rule]]\naction = \"allow\"\nfrom = [{many}]\nto = \"*\"\n");
    assert!(one_err(&text).contains("too many entries"));
    let rules: String = (0..MAX_RULES + 1)
        .map(|_| "[[rule]]\naction=\"deny\"\nfrom=\"*\"\nto=\"*\"\n")
        .collect();
    assert_eq!(
        one_err(&rules),
        format!("1:1: too many rules (at most {MAX_RULES})")
    );
}

#[test]
fn columns_count_characters() {
    assert_eq!(position("ab\ncdé", 6), (2, 4));
    assert_eq!(position("", 0), (1, 1));
    assert_eq!(position("a\n", 99), (2, 1));
}

#[test]
fn validate_matches_parse_for_code_built_policies() {
    let mut p = Policy::default_for_network("office");
    assert!(p.validate().is_ok());
    p.rules[0].ports = vec![PortRange::single(22)];
    let e = p.validate().unwrap_err();
    assert!(matches!(
        e.first().kind,
        PolicyErrorKind::PortsNeedTcpOrUdp(Proto::Any)
    ));
    p.rules[0].proto = Proto::Tcp;
    p.rules[0].to = vec![Selector::Group("nope".into())];
    assert!(matches!(
        p.validate().unwrap_err().first().kind,
        PolicyErrorKind::UnknownGroup(..)
    ));
}

const SERVICES: &str = r#"[[rule]]
name = "web uses db"
action = "allow"
from = "tag:web"
to = ["service:db", "node:cache1"]
proto = "tcp"

[[ssh]]
name = "ops"
from = ["tag:ops", "node:laptop"]
to = "tag:db"
users = ["deploy", "*"]

[[ssh]]
from = "*"
to = "node:db1"
users = "postgres"

[[test]]
from = "node:web1"
to = "service:db"
proto = "tcp"
port = 5432
expect = "allow"
"#;

#[test]
fn parses_service_selectors_and_ssh_rules() {
    let p = parse(SERVICES).unwrap();
    assert_eq!(
        p.rules[0].to,
        vec![
            Selector::Service("db".into()),
            Selector::Node("cache1".into())
        ]
    );
    assert_eq!(p.ssh.len(), 2);
    let s = &p.ssh[0];
    assert_eq!(s.name.as_deref(), Some("ops"));
    assert_eq!(s.line, 8);
    assert_eq!(
        s.from,
        vec![Selector::Tag("ops".into()), Selector::Node("laptop".into())]
    );
    assert_eq!(s.users, vec!["deploy".to_string(), "*".to_string()]);
    assert_eq!(p.ssh[1].users, vec!["postgres".to_string()]);
    assert_eq!(p.ssh[1].line, 14);
    assert_eq!(p.tests[0].to, Selector::Service("db".into()));
    // Rendering round-trips.
    let q = parse(&p.to_text()).unwrap();
    assert_eq!(q.to_text(), p.to_text());
    assert_eq!(q.ssh.len(), 2);
    assert_eq!(q.ssh[0].users, p.ssh[0].users);
    assert!(p.validate().is_ok());
}

#[test]
fn service_selectors_are_refused_where_they_mean_nothing() {
    let e = one_err("[[rule]]\naction = \"allow\"\nfrom = \"service:db\"\nto = \"*\"\n");
    assert!(
        e.starts_with("3:9: service:db cannot be used in from"),
        "{e}"
    );
    let e = one_err("[groups]\ng = [\"tag:a\", \"service:db\"]\n");
    assert!(
        e.starts_with("2:16: service:db cannot be used in a group"),
        "{e}"
    );
    let e = one_err("[[ssh]]\nfrom = \"*\"\nto = [\"service:db\"]\nusers = \"*\"\n");
    assert!(
        e.starts_with("3:8: service:db cannot be used in an [[ssh]] rule"),
        "{e}"
    );
    let e = one_err(
        "[[test]]\nfrom = \"service:db\"\nto = \"*\"\nproto = \"icmp\"\nexpect = \"deny\"\n",
    );
    assert!(
        e.starts_with("2:9: service:db cannot be used in from"),
        "{e}"
    );
    let e = one_err("[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"service:Db\"\n");
    assert!(e.starts_with("4:7: invalid service name \"Db\""), "{e}");
    // A policy built in code is checked the same way.
    let mut p = parse("[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n").unwrap();
    p.rules[0].from = vec![Selector::Service("db".into())];
    let e = p.validate().unwrap_err();
    assert!(matches!(
        e.first().kind,
        PolicyErrorKind::ServiceNotHere(_, "from")
    ));
}

#[test]
fn ssh_rule_errors_name_their_line() {
    let e = one_err("\n[[ssh]]\nfrom = \"*\"\nto = \"*\"\nusers = [\"deploy\", \"Root!\"]\n");
    assert!(e.starts_with("5:21: invalid ssh user \"Root!\""), "{e}");
    let e = one_err("[[ssh]]\nfrom = \"*\"\nto = \"*\"\nusers = []\n");
    assert!(e.starts_with("4:9: users is empty"), "{e}");
    let e = one_err("[[ssh]]\nfrom = \"*\"\nto = \"*\"\n");
    assert!(e.starts_with("1:1: missing users"), "{e}");
    let e = one_err("[[ssh]]\nfrom = \"*\"\nusers = \"*\"\n");
    assert!(e.starts_with("1:1: missing to"), "{e}");
    let e = one_err("[[ssh]]\nfrom = \"*\"\nto = \"*\"\nusers = \"*\"\nport = 22\n");
    assert!(e.contains("unknown field `port`"), "{e}");
    let e = one_err(
        "[[rule]]\nname = \"x\"\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n\n\
         [[ssh]]\nname = \"x\"\nfrom = \"*\"\nto = \"*\"\nusers = \"*\"\n",
    );
    assert!(
        e.starts_with("8:8: duplicate rule name \"x\" (first used on line 1)"),
        "{e}"
    );
}

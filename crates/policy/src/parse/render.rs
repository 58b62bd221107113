//! Writing a policy back in the text format.

use crate::model::{Policy, Proto, Rule, Selector};

/// Renders `policy` in the text format (see [`Policy::to_text`]).
pub(crate) fn render(policy: &Policy) -> String {
    let mut out = String::from(
        "# weft policy. Default deny: a packet passes only if an allow rule matches it\n\
         # and no deny rule does (a matching deny always wins).\n",
    );
    if !policy.groups.is_empty() {
        out.push_str("\n[groups]\n");
        for (name, group) in &policy.groups {
            out.push_str(&key(name));
            out.push_str(" = ");
            out.push_str(&selector_list(&group.members));
            out.push('\n');
        }
    }
    for rule in &policy.rules {
        out.push('\n');
        out.push_str(&render_rule(rule));
    }
    for ssh in &policy.ssh {
        out.push_str("\n[[ssh]]\n");
        if let Some(name) = &ssh.name {
            out.push_str(&format!("name = {}\n", string(name)));
        }
        out.push_str(&format!("from = {}\n", selector_list(&ssh.from)));
        out.push_str(&format!("to = {}\n", selector_list(&ssh.to)));
        let users: Vec<String> = ssh.users.iter().map(|u| string(u)).collect();
        out.push_str(&format!("users = [{}]\n", users.join(", ")));
    }
    for test in &policy.tests {
        out.push_str("\n[[test]]\n");
        if let Some(name) = &test.name {
            out.push_str(&format!("name = {}\n", string(name)));
        }
        out.push_str(&format!("from = {}\n", string(&test.from.to_string())));
        out.push_str(&format!("to = {}\n", string(&test.to.to_string())));
        out.push_str(&format!("proto = \"{}\"\n", test.service.proto()));
        if let Some(p) = test.service.port() {
            out.push_str(&format!("port = {p}\n"));
        }
        out.push_str(&format!("expect = \"{}\"\n", test.expect));
    }
    out
}

/// One `[[rule]]` block in the text format, to append to a policy's text (the
/// controller adds a new network's default rule this way, keeping comments).
pub fn render_rule(rule: &Rule) -> String {
    let mut out = String::from("[[rule]]\n");
    if let Some(name) = &rule.name {
        out.push_str(&format!("name = {}\n", string(name)));
    }
    out.push_str(&format!("action = \"{}\"\n", rule.action));
    out.push_str(&format!("from = {}\n", selector_list(&rule.from)));
    out.push_str(&format!("to = {}\n", selector_list(&rule.to)));
    if rule.proto != Proto::Any {
        out.push_str(&format!("proto = \"{}\"\n", rule.proto));
    }
    if !rule.ports.is_empty() {
        let ports: Vec<String> = rule
            .ports
            .iter()
            .map(|p| {
                if p.first == p.last {
                    p.first.to_string()
                } else {
                    format!("\"{p}\"")
                }
            })
            .collect();
        out.push_str(&format!("ports = [{}]\n", ports.join(", ")));
    }
    out
}

fn selector_list(list: &[Selector]) -> String {
    let items: Vec<String> = list.iter().map(|s| string(&s.to_string())).collect();
    format!("[{}]", items.join(", "))
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        string(k)
    }
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

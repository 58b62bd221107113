//! The policy text format (TOML) and its errors.
//!
//! [`parse()`] reads text into a [`Policy`], collecting every mistake it can find
//! with the line and column it is on; [`render`] (via [`Policy::to_text`]) writes
//! the same format back. The format is described in the crate docs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, IntoDeserializer};
use toml::Spanned;

use crate::model::{
    Action, Expect, Group, MAX_GROUPS, MAX_LIST, MAX_POLICY_BYTES, MAX_RULES, MAX_SSH_RULES,
    MAX_TESTS, Place, Policy, PolicyTest, PortRange, Proto, Rule, Selector, Service, SshRule,
    check_group_name, check_place, check_rule_name, check_ssh_user, parse_port_range,
};

mod errors;
mod render;
#[cfg(test)]
mod tests;

use errors::MAX_ERRORS;
pub(crate) use errors::suggest;
pub use errors::{PolicyError, PolicyErrorKind, PolicyErrors};
pub(crate) use render::render;
pub use render::render_rule;

/// Parses policy text, reporting every mistake with its line and column.
pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyErrors::one(
            1,
            1,
            PolicyErrorKind::TooLarge(MAX_POLICY_BYTES),
        ));
    }
    let doc: RawDoc = from_toml(text)?;
    let mut cx = Cx {
        text,
        errors: Vec::new(),
        groups: doc.groups.keys().map(|k| k.get_ref().clone()).collect(),
    };
    let policy = cx.build(doc);
    if cx.errors.len() > MAX_ERRORS {
        cx.errors.sort_by_key(|e| (e.line, e.column));
        let more = cx.errors.len() - MAX_ERRORS;
        cx.errors.truncate(MAX_ERRORS);
        let last = cx.errors.last().map_or(1, |e| e.line);
        cx.errors.push(PolicyError {
            line: last,
            column: 1,
            kind: PolicyErrorKind::Syntax(format!("... and {more} more errors")),
        });
    }
    PolicyErrors::from_vec(cx.errors)?;
    Ok(policy)
}

/// `text` deserialized as TOML into `T`; a syntax or shape error with its
/// line and column.
pub(crate) fn from_toml<T: de::DeserializeOwned>(text: &str) -> Result<T, PolicyErrors> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| position(text, s.start));
        PolicyErrors::one(
            line,
            column,
            PolicyErrorKind::Syntax(e.message().to_string()),
        )
    })
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn position(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(default)]
    groups: BTreeMap<Spanned<String>, Spanned<List<String>>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    test: Vec<Spanned<RawTest>>,
    #[serde(default)]
    ssh: Vec<Spanned<RawSsh>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    name: Option<Spanned<String>>,
    from: Option<Spanned<List<String>>>,
    to: Option<Spanned<List<String>>>,
    users: Option<Spanned<List<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    from: Option<Spanned<List<String>>>,
    to: Option<Spanned<List<String>>>,
    proto: Option<Spanned<String>>,
    ports: Option<Spanned<List<PortSpec>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    expect: Option<Spanned<String>>,
}

/// A value written either as one item or as an array of items. Items of an array
/// keep their own spans; a single item has none (the caller uses the outer span).
pub(crate) struct List<T>(pub(crate) Vec<(T, Option<Range<usize>>)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or an array of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let item = T::deserialize(v.into_deserializer())?;
                Ok(List(vec![(item, None)]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let item = T::deserialize(v.into_deserializer())?;
                Ok(List(vec![(item, None)]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<T>>()? {
                    if out.len() == MAX_LIST {
                        return Err(de::Error::custom(format!(
                            "too many entries (at most {MAX_LIST})"
                        )));
                    }
                    let span = item.span();
                    out.push((item.into_inner(), Some(span)));
                }
                Ok(List(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A port written as a number (`22`) or a string (`"22"`, `"1000-2000"`).
pub(crate) enum PortSpec {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a string like \"1000-2000\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse context: the text (for positions), the errors so far, the group names.
struct Cx<'a> {
    text: &'a str,
    errors: Vec<PolicyError>,
    groups: BTreeSet<String>,
}

impl Cx<'_> {
    fn err(&mut self, span: &Range<usize>, kind: PolicyErrorKind) {
        let (line, column) = position(self.text, span.start);
        self.errors.push(PolicyError { line, column, kind });
    }

    fn line(&self, span: &Range<usize>) -> u32 {
        position(self.text, span.start).0
    }

    fn build(&mut self, doc: RawDoc) -> Policy {
        let mut policy = Policy::default();
        let whole = 0..0;
        if doc.groups.len() > MAX_GROUPS {
            self.err(&whole, PolicyErrorKind::TooMany("groups", MAX_GROUPS));
        }
        if doc.rule.len() > MAX_RULES {
            self.err(&whole, PolicyErrorKind::TooMany("rules", MAX_RULES));
        }
        if doc.test.len() > MAX_TESTS {
            self.err(&whole, PolicyErrorKind::TooMany("tests", MAX_TESTS));
        }
        if doc.ssh.len() > MAX_SSH_RULES {
            self.err(&whole, PolicyErrorKind::TooMany("ssh rules", MAX_SSH_RULES));
        }
        let mut group_spans = BTreeMap::new();
        for (name, members) in doc.groups {
            let name_span = name.span();
            if let Err(e) = check_group_name(name.get_ref()) {
                self.err(&name_span, e);
            }
            let list_span = members.span();
            let members = self.selectors(members.into_inner(), &list_span, "group", Place::Group);
            let line = self.line(&name_span);
            group_spans.insert(name.get_ref().clone(), name_span);
            policy
                .groups
                .insert(name.into_inner(), Group { members, line });
        }
        if let Some((_, cycle)) = policy_group_cycle(&policy)
            && let Some(span) = group_spans.get(&cycle[0])
        {
            let span = span.clone();
            self.err(&span, PolicyErrorKind::GroupCycle(cycle));
        }
        let mut names: BTreeMap<String, u32> = BTreeMap::new();
        for raw in doc.rule {
            let span = raw.span();
            let line = self.line(&span);
            if let Some(rule) = self.rule(raw.into_inner(), &span, line, &mut names) {
                policy.rules.push(rule);
            }
        }
        for raw in doc.ssh {
            let span = raw.span();
            let line = self.line(&span);
            if let Some(ssh) = self.ssh(raw.into_inner(), &span, line, &mut names) {
                policy.ssh.push(ssh);
            }
        }
        for raw in doc.test {
            let span = raw.span();
            let line = self.line(&span);
            if let Some(test) = self.test(raw.into_inner(), &span, line) {
                policy.tests.push(test);
            }
        }
        policy
    }

    fn rule(
        &mut self,
        raw: RawRule,
        span: &Range<usize>,
        line: u32,
        names: &mut BTreeMap<String, u32>,
    ) -> Option<Rule> {
        let name = self.rule_name(raw.name, line, names);
        let action = match raw.action {
            None => {
                self.err(
                    span,
                    PolicyErrorKind::Missing("action = \"allow\" or \"deny\""),
                );
                None
            }
            Some(a) => match a.get_ref().as_str() {
                "allow" => Some(Action::Allow),
                "deny" => Some(Action::Deny),
                other => {
                    self.err(
                        &a.span(),
                        PolicyErrorKind::BadAction(other.chars().take(40).collect()),
                    );
                    None
                }
            },
        };
        let from = self.side(raw.from, span, "from", Place::RuleFrom);
        let to = self.side(raw.to, span, "to", Place::RuleTo);
        let proto = match raw.proto {
            None => Some(Proto::Any),
            Some(p) => match p.get_ref().parse::<Proto>().map_err(PolicyErrorKind::from) {
                Ok(proto) => Some(proto),
                Err(e) => {
                    self.err(&p.span(), e);
                    None
                }
            },
        };
        let mut ports = Vec::new();
        if let Some(list) = raw.ports {
            let list_span = list.span();
            if let Some(p) = proto
                && !matches!(p, Proto::Tcp | Proto::Udp)
            {
                self.err(&list_span, PolicyErrorKind::PortsNeedTcpOrUdp(p));
            }
            let items = list.into_inner().0;
            if items.is_empty() {
                self.err(&list_span, PolicyErrorKind::EmptyList("ports"));
            }
            for (spec, item_span) in items {
                let s = item_span.unwrap_or_else(|| list_span.clone());
                let parsed = match spec {
                    PortSpec::Text(t) => parse_port_range(&t),
                    PortSpec::Number(n) => match u16::try_from(n) {
                        Ok(p) if p > 0 => Ok(PortRange::single(p)),
                        _ => Err(PolicyErrorKind::BadPort(n.to_string())),
                    },
                };
                match parsed {
                    Ok(r) => ports.push(r),
                    Err(e) => self.err(&s, e),
                }
            }
        }
        if from.is_empty() || to.is_empty() {
            return None;
        }
        Some(Rule {
            name,
            action: action?,
            from,
            to,
            proto: proto?,
            ports,
            line,
        })
    }

    /// A rule's or ssh rule's name: valid and unique among both.
    fn rule_name(
        &mut self,
        name: Option<Spanned<String>>,
        line: u32,
        names: &mut BTreeMap<String, u32>,
    ) -> Option<String> {
        let n = name?;
        let s = n.span();
        if let Err(e) = check_rule_name(n.get_ref()) {
            self.err(&s, e);
            return None;
        }
        if let Some(&first) = names.get(n.get_ref()) {
            self.err(
                &s,
                PolicyErrorKind::DuplicateName(n.get_ref().clone(), first),
            );
        } else {
            names.insert(n.get_ref().clone(), line);
        }
        Some(n.into_inner())
    }

    /// A `from`/`to` list (an error on the block's header when it is missing).
    fn side(
        &mut self,
        list: Option<Spanned<List<String>>>,
        span: &Range<usize>,
        key: &'static str,
        place: Place,
    ) -> Vec<Selector> {
        match list {
            None => {
                self.err(span, PolicyErrorKind::Missing(key));
                Vec::new()
            }
            Some(l) => {
                let s = l.span();
                self.selectors(l.into_inner(), &s, key, place)
            }
        }
    }

    fn ssh(
        &mut self,
        raw: RawSsh,
        span: &Range<usize>,
        line: u32,
        names: &mut BTreeMap<String, u32>,
    ) -> Option<SshRule> {
        let name = self.rule_name(raw.name, line, names);
        let from = self.side(raw.from, span, "from", Place::Ssh);
        let to = self.side(raw.to, span, "to", Place::Ssh);
        let mut users = Vec::new();
        match raw.users {
            None => self.err(
                span,
                PolicyErrorKind::Missing("users = [\"LOGIN\", ...] (or \"*\")"),
            ),
            Some(list) => {
                let list_span = list.span();
                let items = list.into_inner().0;
                if items.is_empty() {
                    self.err(&list_span, PolicyErrorKind::EmptyList("users"));
                }
                for (u, item_span) in items {
                    let s = item_span.unwrap_or_else(|| list_span.clone());
                    match check_ssh_user(&u) {
                        Ok(()) => users.push(u),
                        Err(e) => self.err(&(s.start + 1..s.end), e),
                    }
                }
            }
        }
        if from.is_empty() || to.is_empty() || users.is_empty() {
            return None;
        }
        Some(SshRule {
            name,
            from,
            to,
            users,
            line,
        })
    }

    fn test(&mut self, raw: RawTest, span: &Range<usize>, line: u32) -> Option<PolicyTest> {
        let name = raw.name.and_then(|n| match check_rule_name(n.get_ref()) {
            Ok(()) => Some(n.into_inner()),
            Err(e) => {
                self.err(&n.span(), e);
                None
            }
        });
        let mut one = |s: Option<Spanned<String>>, key: &'static str, place| match s {
            None => {
                self.err(span, PolicyErrorKind::Missing(key));
                None
            }
            Some(s) => self.selector(s.get_ref(), &s.span(), place),
        };
        let from = one(raw.from, "from", Place::TestFrom);
        let to = one(raw.to, "to", Place::TestTo);
        let expect = match raw.expect {
            None => {
                self.err(
                    span,
                    PolicyErrorKind::Missing("expect = \"allow\" or \"deny\""),
                );
                None
            }
            Some(e) => match e.get_ref().as_str() {
                "allow" => Some(Expect::Allow),
                "deny" => Some(Expect::Deny),
                other => {
                    self.err(
                        &e.span(),
                        PolicyErrorKind::BadExpect(other.chars().take(40).collect()),
                    );
                    None
                }
            },
        };
        let proto = match raw.proto {
            None => {
                self.err(span, PolicyErrorKind::TestProto);
                None
            }
            Some(p) => match p.get_ref().parse::<Proto>().map_err(PolicyErrorKind::from) {
                Ok(proto) => Some((proto, p.span())),
                Err(e) => {
                    self.err(&p.span(), e);
                    None
                }
            },
        };
        let port = match raw.port {
            None => None,
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(n) if n > 0 => Some((n, p.span())),
                _ => {
                    self.err(&p.span(), PolicyErrorKind::BadPort(p.get_ref().to_string()));
                    return None;
                }
            },
        };
        let service = match proto {
            None => None,
            Some((proto, proto_span)) => {
                let err_span = match (&port, proto) {
                    (Some((_, s)), Proto::Icmp) => s.clone(),
                    _ => proto_span,
                };
                match Service::new(proto, port.map(|(p, _)| p)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.err(&err_span, e);
                        None
                    }
                }
            }
        };
        Some(PolicyTest {
            name,
            from: from?,
            to: to?,
            service: service?,
            expect: expect?,
            line,
        })
    }

    fn selectors(
        &mut self,
        list: List<String>,
        list_span: &Range<usize>,
        what: &'static str,
        place: Place,
    ) -> Vec<Selector> {
        if list.0.is_empty() {
            self.err(list_span, PolicyErrorKind::EmptyList(what));
        }
        let mut out = Vec::new();
        for (text, span) in list.0 {
            let span = span.unwrap_or_else(|| list_span.clone());
            if let Some(sel) = self.selector(&text, &span, place) {
                out.push(sel);
            }
        }
        out
    }

    fn selector(&mut self, text: &str, span: &Range<usize>, place: Place) -> Option<Selector> {
        // Point inside the string, past the opening quote.
        let inner = span.start + 1..span.end;
        match text
            .parse::<Selector>()
            .and_then(|s| check_place(&s, place).map(|()| s))
        {
            Ok(Selector::Group(g)) if !self.groups.contains(&g) => {
                let hint = suggest(&g, self.groups.iter().map(String::as_str));
                self.err(&inner, PolicyErrorKind::UnknownGroup(g, hint));
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                self.err(&inner, e);
                None
            }
        }
    }
}

fn policy_group_cycle(policy: &Policy) -> Option<(u32, Vec<String>)> {
    policy.validate().err().and_then(|errs| {
        errs.errors().iter().find_map(|e| match &e.kind {
            PolicyErrorKind::GroupCycle(c) => Some((e.line, c.clone())),
            _ => None,
        })
    })
}

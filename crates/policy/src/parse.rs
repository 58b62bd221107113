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
    Action, Expect, Group, MAX_GROUPS, MAX_LIST, MAX_POLICY_BYTES, MAX_RULES, MAX_TESTS, Policy,
    PolicyTest, PortRange, Proto, Rule, Selector, Service, check_group_name, check_rule_name,
};

/// Most errors reported for one text; the rest are summarised.
const MAX_ERRORS: usize = 50;

/// What is wrong with a policy. Each variant's message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyErrorKind {
    /// The text is not valid TOML or does not have the policy's shape (unknown or
    /// missing key, wrong type); the message is the TOML parser's.
    #[error("{0}")]
    Syntax(String),
    /// The text is longer than [`MAX_POLICY_BYTES`].
    #[error("policy is larger than {0} bytes")]
    TooLarge(usize),
    /// More entries of a kind than the limit allows.
    #[error("too many {0} (at most {1})")]
    TooMany(&'static str, usize),
    /// A selector with an unknown `kind:` prefix (often a typo).
    #[error(
        "unknown selector {0:?} (expected node:, tag:, group:, network:, cidr:, subnet:, or *)"
    )]
    UnknownSelector(String),
    /// A node, network, tag, group or rule name with characters or a length the
    /// controller would never accept.
    #[error("invalid {0} name {1:?} (use {2})")]
    BadName(&'static str, String, &'static str),
    /// A `group:` reference to a group that is not defined; with a suggestion
    /// when a defined group has a similar name.
    #[error("unknown group {0:?}{hint}", hint = suggestion(.1))]
    UnknownGroup(String, Option<String>),
    /// Groups that include themselves, directly or through other groups.
    #[error("group cycle: {path}", path = .0.join(" -> "))]
    GroupCycle(Vec<String>),
    /// A `cidr:`/`subnet:` prefix that does not parse or has host bits set.
    #[error("invalid prefix {0:?}: {1}")]
    BadCidr(String, String),
    /// A port that is not 1 to 65535 or a range whose first port is above its last.
    #[error("invalid port {0:?} (expected a port 1-65535 or a range like \"1000-2000\")")]
    BadPort(String),
    /// `ports`/`port` given for a protocol that has none.
    #[error("ports need proto = \"tcp\" or \"udp\" (this one has proto = \"{0}\")")]
    PortsNeedTcpOrUdp(Proto),
    /// A tcp/udp test without a `port`.
    #[error("a {0} test needs a port")]
    MissingPort(Proto),
    /// A test without a concrete protocol.
    #[error("a test needs proto = \"tcp\", \"udp\" or \"icmp\"")]
    TestProto,
    /// A check of every protocol (`--proto any`) without a port: tcp and udp
    /// need one.
    #[error("proto any checks tcp and udp too, which need a port: give a port (or proto icmp)")]
    AnyNeedsPort,
    /// An unknown protocol name.
    #[error("unknown proto {0:?} (expected \"any\", \"tcp\", \"udp\" or \"icmp\")")]
    BadProto(String),
    /// An unknown rule action.
    #[error("unknown action {0:?} (expected \"allow\" or \"deny\")")]
    BadAction(String),
    /// An unknown test expectation.
    #[error("unknown expect {0:?} (expected \"allow\" or \"deny\")")]
    BadExpect(String),
    /// A required key is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An empty `from`/`to`/`ports` list or group.
    #[error("{0} is empty{hint}", hint = empty_hint(.0))]
    EmptyList(&'static str),
    /// Two rules share a name (explanations would be ambiguous).
    #[error("duplicate rule name {0:?} (first used on line {1})")]
    DuplicateName(String, u32),
}

fn suggestion(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

fn empty_hint(what: &str) -> &'static str {
    match what {
        "ports" => ": omit ports to mean every port",
        "group" => ": list at least one member",
        _ => ": list at least one selector",
    }
}

/// One mistake, with where it is: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {kind}")]
pub struct PolicyError {
    /// 1-based line (0 when the policy was built in code and has no position).
    pub line: u32,
    /// 1-based column in characters.
    pub column: u32,
    /// What is wrong.
    pub kind: PolicyErrorKind,
}

impl PolicyError {
    /// The error prefixed by a source name, `policy.toml:12:5: ...`.
    pub fn with_source(&self, source: &str) -> String {
        format!("{source}:{self}")
    }
}

/// Every mistake found in one policy, in text order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(Vec<PolicyError>);

impl PolicyErrors {
    pub(crate) fn from_vec(mut errors: Vec<PolicyError>) -> Result<(), PolicyErrors> {
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        Err(PolicyErrors(errors))
    }

    fn one(line: u32, column: u32, kind: PolicyErrorKind) -> PolicyErrors {
        PolicyErrors(vec![PolicyError { line, column, kind }])
    }

    /// The errors, in text order.
    pub fn errors(&self) -> &[PolicyError] {
        &self.0
    }

    /// The first error.
    pub fn first(&self) -> &PolicyError {
        // Never empty: built only by `from_vec` (non-empty) and `one`.
        &self.0[0]
    }

    /// All errors, one per line, each prefixed by `source:`.
    pub fn with_source(&self, source: &str) -> String {
        let mut out = String::new();
        for e in &self.0 {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&e.with_source(source));
        }
        out
    }
}

impl PolicyError {
    /// The error as compilers show one: `source:line:column: message`, then the
    /// offending line of `text` and a caret under the column. An error without a
    /// position (line 0, or past the end of `text`) is the first line alone.
    pub fn render(&self, source: &str, text: &str) -> String {
        let mut out = self.with_source(source);
        let Some(line) = (self.line as usize)
            .checked_sub(1)
            .and_then(|i| text.lines().nth(i))
        else {
            return out;
        };
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        // Shown as it is, except control characters (a tab stays a tab, so the
        // caret line below keeps the same alignment).
        let shown: String = line
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        let pad: String = shown
            .chars()
            .take(self.column.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("\n{number} | {shown}\n{gutter} | {pad}^"));
        out
    }
}

impl PolicyErrors {
    /// Every error rendered by [`PolicyError::render`], in text order, blank
    /// lines between them.
    pub fn render(&self, source: &str, text: &str) -> String {
        let all: Vec<String> = self.0.iter().map(|e| e.render(source, text)).collect();
        all.join("\n\n")
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Parses policy text, reporting every mistake with its line and column.
pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyErrors::one(
            1,
            1,
            PolicyErrorKind::TooLarge(MAX_POLICY_BYTES),
        ));
    }
    let doc: RawDoc = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| position(text, s.start));
        PolicyErrors::one(
            line,
            column,
            PolicyErrorKind::Syntax(e.message().to_string()),
        )
    })?;
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

/// 1-based line and character column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (u32, u32) {
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

/// The candidate closest to `name` by edit distance, if close enough to be a typo.
pub(crate) fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .filter_map(|c| {
            let d = edit_distance(name, c);
            (d <= limit).then_some((d, c))
        })
        .min()
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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
struct List<T>(Vec<(T, Option<Range<usize>>)>);

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
enum PortSpec {
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
        let mut group_spans = BTreeMap::new();
        for (name, members) in doc.groups {
            let name_span = name.span();
            if let Err(e) = check_group_name(name.get_ref()) {
                self.err(&name_span, e);
            }
            let list_span = members.span();
            let members = self.selectors(members.into_inner(), &list_span, "group");
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
        let name = raw.name.and_then(|n| {
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
        });
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
        let mut side = |list: Option<Spanned<List<String>>>, key: &'static str| match list {
            None => {
                self.err(span, PolicyErrorKind::Missing(key));
                Vec::new()
            }
            Some(l) => {
                let s = l.span();
                self.selectors(l.into_inner(), &s, key)
            }
        };
        let from = side(raw.from, "from");
        let to = side(raw.to, "to");
        let proto = match raw.proto {
            None => Some(Proto::Any),
            Some(p) => match p.get_ref().parse::<Proto>() {
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
                    PortSpec::Text(t) => t.parse::<PortRange>(),
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

    fn test(&mut self, raw: RawTest, span: &Range<usize>, line: u32) -> Option<PolicyTest> {
        let name = raw.name.and_then(|n| match check_rule_name(n.get_ref()) {
            Ok(()) => Some(n.into_inner()),
            Err(e) => {
                self.err(&n.span(), e);
                None
            }
        });
        let mut one = |s: Option<Spanned<String>>, key: &'static str| match s {
            None => {
                self.err(span, PolicyErrorKind::Missing(key));
                None
            }
            Some(s) => self.selector(s.get_ref(), &s.span()),
        };
        let from = one(raw.from, "from");
        let to = one(raw.to, "to");
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
            Some(p) => match p.get_ref().parse::<Proto>() {
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
    ) -> Vec<Selector> {
        if list.0.is_empty() {
            self.err(list_span, PolicyErrorKind::EmptyList(what));
        }
        let mut out = Vec::new();
        for (text, span) in list.0 {
            let span = span.unwrap_or_else(|| list_span.clone());
            if let Some(sel) = self.selector(&text, &span) {
                out.push(sel);
            }
        }
        out
    }

    fn selector(&mut self, text: &str, span: &Range<usize>) -> Option<Selector> {
        // Point inside the string, past the opening quote.
        let inner = span.start + 1..span.end;
        match text.parse::<Selector>() {
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

#[cfg(test)]
mod tests {
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
            "3:21: unknown selector \"tg:web\" (expected node:, tag:, group:, network:, cidr:, subnet:, or *)"
        );
        let e = parse(text).unwrap_err();
        assert_eq!(
            e.first().with_source("policy.toml"),
            "policy.toml:3:21: unknown selector \"tg:web\" (expected node:, tag:, group:, network:, cidr:, subnet:, or *)"
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
                "16:7: unknown selector \"grp:x\" (expected node:, tag:, group:, network:, cidr:, subnet:, or *)",
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
}

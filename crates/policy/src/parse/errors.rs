//! The parser's errors: what is wrong with a policy, where, and how to fix it.

use std::fmt;

use weft_proto::policy::UnknownProto;

use crate::model::Proto;

/// Most errors reported for one text; the rest are summarised.
pub(super) const MAX_ERRORS: usize = 50;

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
        "unknown selector {0:?} (expected node:, tag:, group:, network:, cidr:, subnet:, service:, or *)"
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
    #[error(transparent)]
    BadProto(#[from] UnknownProto),
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
    /// A `service:` selector where it cannot mean anything: it selects
    /// destinations (with their ports), so only a rule's or a test's `to` takes it.
    #[error(
        "service:{0} cannot be used in {1}: it selects destinations on the service's ports, \
         so write it in a rule's (or test's) `to`"
    )]
    ServiceNotHere(String, &'static str),
    /// An `[[ssh]]` user that is neither `*` nor a valid login name.
    #[error(
        "invalid ssh user {0:?} (a login name: lowercase letters, digits, '_' or '-', \
         starting with a letter or '_'; or \"*\" for any user but root)"
    )]
    BadUser(String),
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

    pub(crate) fn one(line: u32, column: u32, kind: PolicyErrorKind) -> PolicyErrors {
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

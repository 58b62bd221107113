//! Input validation: names, tags, domains. Every limit here bounds what a client
//! can make the controller store or send to every peer.

use weft_proto::NodeKey;
use weft_proto::text::{escape_for_display, find_spoofing_char, is_spoofing_char, spoofing_kind};

use crate::error::ApiError;

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;
/// Longest DNS name.
pub const MAX_DOMAIN: usize = 253;
/// Most tags per node or token.
pub const MAX_TAGS: usize = 32;
/// Most endpoints a node may report.
pub const MAX_ENDPOINTS: usize = 32;
/// Most networks per token.
pub const MAX_TOKEN_NETWORKS: usize = 64;
/// Longest token description.
pub const MAX_DESCRIPTION: usize = 256;

/// Whether `s` is a DNS label: 1 to 63 of `a-z`, `0-9`, `-`, not starting or
/// ending with `-`.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `s` for an error message: at most 70 characters, with control,
/// bidirectional and zero-width characters escaped.
fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(70).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    escape_for_display(&t).into_owned()
}

/// Where `s` first breaks `allowed`, in words: "character 4 (U+202E, a
/// bidirectional control)", or `None`.
fn first_bad(s: &str, allowed: impl Fn(char) -> bool) -> Option<String> {
    let (i, c) = s.chars().enumerate().find(|(_, c)| !allowed(*c))?;
    let kind = if is_spoofing_char(c) {
        format!(", {}", spoofing_kind(c))
    } else {
        String::new()
    };
    Some(format!(
        "character {} (U+{:04X}{kind}) is not allowed",
        i + 1,
        u32::from(c)
    ))
}

/// `problem` with the first character `allowed` refuses named, if there is one.
fn with_bad_char(problem: String, s: &str, allowed: impl Fn(char) -> bool) -> String {
    match first_bad(s, allowed) {
        Some(bad) => format!("{problem} ({bad})"),
        None => problem,
    }
}

fn label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// Validates a node or network name (a DNS label). Node names also must not
/// look like a node key, so `nodes/{key-or-name}` is never ambiguous.
pub fn name(kind: &str, s: &str) -> Result<(), ApiError> {
    if !is_label(s) {
        return Err(ApiError::invalid(
            "invalid_name",
            with_bad_char(
                format!(
                    "{kind} name \"{}\" is not valid: use 1 to {MAX_LABEL} lowercase letters, digits or '-', not starting or ending with '-'",
                    shown(s)
                ),
                s,
                label_char,
            ),
        ));
    }
    if s.len() == NodeKey::TEXT_LEN && s.parse::<NodeKey>().is_ok() {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{kind} name must not look like a node key"),
        ));
    }
    Ok(())
}

/// Validates a tag: like a label, plus `:` `_` `.` (for `role:db` style tags).
pub fn tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "invalid_tag",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    let tag_char = |c: char| label_char(c) || matches!(c, '_' | ':' | '.');
    for t in tags {
        let ok = !t.is_empty() && t.len() <= MAX_LABEL && t.chars().all(tag_char);
        if !ok {
            return Err(ApiError::invalid(
                "invalid_tag",
                with_bad_char(
                    format!(
                        "tag \"{}\" is not valid: use 1 to {MAX_LABEL} of a-z 0-9 - _ : .",
                        shown(t)
                    ),
                    t,
                    tag_char,
                ),
            ));
        }
    }
    Ok(())
}

/// Validates a DNS domain: dot-separated labels, at most 253 characters.
pub fn domain(s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty() && s.len() <= MAX_DOMAIN && s.split('.').all(is_label);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_domain",
            with_bad_char(
                format!(
                    "DNS domain \"{}\" is not valid: use dot-separated DNS labels",
                    shown(s)
                ),
                s,
                |c| label_char(c) || c == '.',
            ),
        ))
    }
}

/// Validates a reported host name (informational free text, shown to admins):
/// at most 253 bytes, any script, but no control, bidirectional or zero-width
/// character (they could make it display as something else).
pub fn hostname(s: &str) -> Result<(), ApiError> {
    free_text("invalid_hostname", "hostname", s, MAX_DOMAIN)
}

/// Validates a node's host facts: every text at most
/// [`weft_proto::facts::MAX_FACT_TEXT`] bytes without control, bidirectional
/// or zero-width characters, the binary hash 64 lowercase hex digits
/// (`400 invalid_facts`, naming the field).
pub fn facts(f: &weft_proto::facts::HostFacts) -> Result<(), ApiError> {
    f.check().map_err(|e| {
        ApiError::invalid(
            "invalid_facts",
            format!("host facts refused: {e} (weftd sanitizes what it sends: is it an old or a modified weftd?)"),
        )
    })
}

/// Validates free text an admin reads (a host name, a token description): at
/// most `max` bytes, without control, bidirectional or zero-width characters.
/// The error names the first such character and its position.
pub fn free_text(code: &'static str, what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.len() > max {
        return Err(ApiError::invalid(
            code,
            format!("{what} is too long: at most {max} bytes"),
        ));
    }
    if let Some((pos, c)) = find_spoofing_char(s) {
        return Err(ApiError::invalid(
            code,
            format!(
                "{what} \"{}\" has {} (U+{:04X}) at character {pos}: control, bidirectional and zero-width characters could make it display as something else",
                shown(s),
                spoofing_kind(c),
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Derives a node name from a host name or, failing that, the key: lowercased,
/// other characters mapped to `-`, first label only, trimmed to 40 characters so
/// a collision suffix still fits.
pub fn derive_node_name(hostname: Option<&str>, key: &NodeKey) -> String {
    let from = |s: &str| -> String {
        let first = s.split('.').next().unwrap_or_default();
        let mapped: String = first
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        mapped.trim_matches('-').to_owned()
    };
    let candidate = hostname.map(from).unwrap_or_default();
    if is_label(&candidate) && name("node", &candidate).is_ok() {
        return candidate;
    }
    let key_part: String = from(&key.to_string()).chars().take(8).collect();
    let n = format!("node-{}", key_part.trim_matches('-'));
    n.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels() {
        assert!(is_label("lab-1"));
        assert!(!is_label("-lab"));
        assert!(!is_label("Lab"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(domain("weft.internal").is_ok());
        assert!(domain("weft..internal").is_err());
        assert!(tags(&["role:db".into()]).is_ok());
        assert!(tags(&["Role".into()]).is_err());
        let key = NodeKey::from_bytes([0; 32]);
        assert!(
            name("node", &key.to_string().to_lowercase()).is_err()
                || key.to_string() != key.to_string().to_lowercase()
        );
    }

    #[test]
    fn spoofing_characters_are_refused_with_their_position() {
        let msg = |r: Result<(), ApiError>| r.unwrap_err().to_string();
        // Names: DNS labels; the error names the character and where it is.
        let m = msg(name("node", "web\u{202e}gnp"));
        assert!(
            m.contains("character 4 (U+202E, a bidirectional control)"),
            "{m}"
        );
        assert!(
            m.contains("web\\u{202e}gnp") && !m.contains('\u{202e}'),
            "{m}"
        );
        let m = msg(name("network", "la\u{200b}b"));
        assert!(
            m.contains("character 3 (U+200B, a zero-width character)"),
            "{m}"
        );
        let m = msg(name("relay", "Relay"));
        assert!(m.contains("character 1 (U+0052)"), "{m}");
        let m = msg(tags(&["role:\u{2066}db".into()]));
        assert!(
            m.contains("character 6 (U+2066, a bidirectional control)"),
            "{m}"
        );
        let m = msg(domain("weft.\u{feff}internal"));
        assert!(
            m.contains("character 6 (U+FEFF, a zero-width character)"),
            "{m}"
        );
        // Free text: any script, but no spoofing characters.
        assert!(hostname("büro-pc.local").is_ok());
        assert!(hostname("host 1").is_ok());
        for (h, pos, cp) in [
            ("evil\u{202e}cod.exe", 5, "U+202E"),
            ("\u{2067}x", 1, "U+2067"),
            ("ab\u{200f}", 3, "U+200F"),
            ("a\u{061c}", 2, "U+061C"),
            ("zw\u{200d}j", 3, "U+200D"),
            ("bom\u{feff}", 4, "U+FEFF"),
            ("wj\u{2060}", 3, "U+2060"),
            ("esc\u{1b}[31m", 4, "U+001B"),
        ] {
            let m = msg(hostname(h));
            assert!(
                m.contains(&format!("({cp}) at character {pos}")),
                "{h:?}: {m}"
            );
            assert!(!m.chars().any(is_spoofing_char), "{m:?}");
        }
        assert!(msg(hostname(&"a".repeat(254))).contains("too long"));
        assert!(free_text("invalid_description", "description", "ok", 10).is_ok());
    }

    proptest! {
        #[test]
        fn derived_names_are_always_valid(h in proptest::option::of(".{0,80}"), k in any::<[u8; 32]>()) {
            let n = derive_node_name(h.as_deref(), &NodeKey::from_bytes(k));
            prop_assert!(name("node", &n).is_ok(), "{n:?}");
            prop_assert!(n.len() <= 40);
        }
    }
}

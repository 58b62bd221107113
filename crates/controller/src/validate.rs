//! Input validation: names, tags, domains. Every limit here bounds what a client
//! can make the controller store or send to every peer.

use weft_proto::NodeKey;

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

fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(70).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Validates a node or network name (a DNS label). Node names also must not
/// look like a node key, so `nodes/{key-or-name}` is never ambiguous.
pub fn name(kind: &str, s: &str) -> Result<(), ApiError> {
    if !is_label(s) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!(
                "{kind} name {:?} is not valid: use 1 to {MAX_LABEL} lowercase letters, digits or '-', not starting or ending with '-'",
                shown(s)
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
    for t in tags {
        let ok = !t.is_empty()
            && t.len() <= MAX_LABEL
            && t.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b':' | b'.')
            });
        if !ok {
            return Err(ApiError::invalid(
                "invalid_tag",
                format!(
                    "tag {:?} is not valid: use 1 to {MAX_LABEL} of a-z 0-9 - _ : .",
                    shown(t)
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
            format!(
                "DNS domain {:?} is not valid: use dot-separated DNS labels",
                shown(s)
            ),
        ))
    }
}

/// Validates a reported host name (informational; bounded and printable).
pub fn hostname(s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_DOMAIN || s.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(
            "invalid_hostname",
            "hostname is too long or has control characters",
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

    proptest! {
        #[test]
        fn derived_names_are_always_valid(h in proptest::option::of(".{0,80}"), k in any::<[u8; 32]>()) {
            let n = derive_node_name(h.as_deref(), &NodeKey::from_bytes(k));
            prop_assert!(name("node", &n).is_ok(), "{n:?}");
            prop_assert!(n.len() <= 40);
        }
    }
}

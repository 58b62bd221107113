//! Names of everything a lab run creates. Every namespace is `wl-<run id>-<name>`
//! so concurrent runs never collide and a sweep can tell runs apart; interfaces
//! live inside those namespaces, so their short fixed names (`eth0`, `p3`, `br0`)
//! only need to be unique per namespace.

use std::io::Read as _;

use crate::error::{LabError, Result};

/// The prefix of every namespace a lab creates.
pub const NETNS_PREFIX: &str = "wl-";

/// Length of a run id in hex characters.
pub const RUN_ID_LEN: usize = 8;

/// The kernel's limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The longest node or LAN name accepted (keeps namespace and log names readable).
pub const NODE_NAME_MAX: usize = 24;

/// The name of the internet segment (and of its switch namespace).
pub const INTERNET: &str = "internet";

/// The prefix of a LAN's switch namespace (after the run prefix).
pub(crate) const LAN_NS_PREFIX: &str = "lan-";

/// Makes a fresh random run id: 8 lowercase hex characters.
pub fn new_run_id() -> String {
    let mut bytes = [0_u8; 4];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Not expected on Linux; fall back to pid and clock, still unique enough per host.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "only the low bits are wanted"
        )]
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u32);
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The namespace name of `name` (a node, `internet`, or `lan-<lan>`) in run `run_id`.
pub fn netns_name(run_id: &str, name: &str) -> String {
    format!("{NETNS_PREFIX}{run_id}-{name}")
}

/// The run id encoded in a lab namespace name, if it is one.
pub fn run_id_of_netns(netns: &str) -> Option<&str> {
    let rest = netns.strip_prefix(NETNS_PREFIX)?;
    let (id, name) = rest.split_once('-')?;
    (is_run_id(id) && !name.is_empty()).then_some(id)
}

/// Whether `s` looks like a run id.
pub fn is_run_id(s: &str) -> bool {
    s.len() == RUN_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a node or LAN name: 1..=24 characters of `[a-z0-9-]`, not starting or
/// ending with `-`, and not one of the reserved names.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > NODE_NAME_MAX
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(LabError::Topology(format!(
            "name `{name}` must be 1-{NODE_NAME_MAX} characters of a-z, 0-9 and '-' (not at either end)"
        )));
    }
    if name == INTERNET || name.starts_with(LAN_NS_PREFIX) {
        return Err(LabError::Topology(format!(
            "name `{name}` is reserved (`{INTERNET}` and `{LAN_NS_PREFIX}*` name the lab's switches)"
        )));
    }
    Ok(())
}

/// Checks an interface name against the kernel's 15-character limit.
pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', ':']) {
        return Err(LabError::Topology(format!(
            "interface name `{name}` must be 1-{IFNAME_MAX} characters without '/', ':' or spaces"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_8_hex_and_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert!(is_run_id(&a), "{a}");
        assert!(is_run_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn netns_names_round_trip_their_run_id() {
        let ns = netns_name("0123abcd", "home-router");
        assert_eq!(ns, "wl-0123abcd-home-router");
        assert_eq!(run_id_of_netns(&ns), Some("0123abcd"));
        assert_eq!(run_id_of_netns("wl-0123abcd-"), None);
        assert_eq!(run_id_of_netns("wl-XYZ-a"), None);
        assert_eq!(run_id_of_netns("other-0123abcd-a"), None);
        assert_eq!(run_id_of_netns("wl-0123abcde-a"), None);
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "controller", "nat-easy", "h1", "x-isp"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "internet",
            "lan-x",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames_fit_in_15_chars() {
        validate_ifname("eth0").unwrap();
        validate_ifname("p123456789abcde").unwrap();
        assert!(validate_ifname("p123456789abcdef").is_err());
        assert!(validate_ifname("").is_err());
    }
}

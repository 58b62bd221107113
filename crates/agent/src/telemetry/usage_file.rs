//! The sidecar bridge (`weftd --usage-file PATH`): a proxy that counts its own
//! users writes
//!
//! ```json
//! {"core_uptime_sec": 3600, "user_bytes": {"alice": 123456, "bob": 42}}
//! ```
//!
//! and the agent reads it once per usage interval and uploads it with its own
//! node identity: the node comes from the agent's credential, never from the
//! file (a `node`/`node_id` field, or any other field, is ignored). Counters are
//! the sidecar's own monotonic totals; the controller diffs them (a smaller
//! `core_uptime_sec` is a sidecar restart).
//!
//! Refused, as a whole, with a reason that names the problem: a file larger
//! than [`MAX_USAGE_FILE`] (1 MiB), one that is not a regular file or cannot be
//! read, malformed JSON, a missing field, a negative or fractional counter or
//! uptime, an empty (or blank) user id, one longer than [`MAX_USER_ID`] bytes or
//! with a control character, more than [`MAX_USERS`] users.
//!
//! [`MAX_USER_ID`]: weft_proto::usage::MAX_USER_ID

use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;
use weft_proto::usage::{MAX_USAGE_FILE, MAX_USERS, SidecarUsage, check_user_id};

/// Why a usage file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UsageFileError {
    /// It could not be opened or read.
    #[error("cannot read it: {0}")]
    Read(String),
    /// It is not a regular file.
    #[error("it is not a regular file")]
    NotAFile,
    /// It is over the limit.
    #[error("it is larger than {MAX_USAGE_FILE} bytes (1 MiB): {0} bytes")]
    TooLarge(u64),
    /// It does not parse as the expected JSON object.
    #[error(
        "malformed JSON (expected {{\"core_uptime_sec\": N, \"user_bytes\": {{\"user\": N, ...}}}}): {0}"
    )]
    Malformed(String),
    /// A number is negative.
    #[error("{0} is negative")]
    Negative(String),
    /// A number is not a whole number in 0..=2^64-1.
    #[error("{0} is not a whole number from 0 to 18446744073709551615")]
    NotWhole(String),
    /// A user id is refused.
    #[error("{0}")]
    BadUser(String),
    /// Too many users.
    #[error("it names {0} users; at most {MAX_USERS}")]
    TooManyUsers(usize),
}

/// The file's shape; numbers kept as JSON numbers so a negative or fractional
/// one is named, not merely "invalid type".
#[derive(Deserialize)]
struct Raw {
    core_uptime_sec: serde_json::Number,
    user_bytes: serde_json::Map<String, serde_json::Value>,
}

/// Reads and checks the usage file at `path` (at most [`MAX_USAGE_FILE`]
/// bytes are read, even when it grows while being read).
pub(crate) fn read(path: &Path) -> Result<SidecarUsage, UsageFileError> {
    let f = std::fs::File::open(path).map_err(|e| UsageFileError::Read(e.to_string()))?;
    let meta = f
        .metadata()
        .map_err(|e| UsageFileError::Read(e.to_string()))?;
    if !meta.is_file() {
        return Err(UsageFileError::NotAFile);
    }
    if meta.len() > MAX_USAGE_FILE {
        return Err(UsageFileError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(MAX_USAGE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UsageFileError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_USAGE_FILE {
        return Err(UsageFileError::TooLarge(bytes.len() as u64));
    }
    parse(&bytes)
}

/// Checks the contents of a usage file.
pub(crate) fn parse(bytes: &[u8]) -> Result<SidecarUsage, UsageFileError> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| UsageFileError::Malformed(e.to_string()))?;
    let core_uptime_sec = counter("core_uptime_sec", &raw.core_uptime_sec)?;
    if raw.user_bytes.len() > MAX_USERS {
        return Err(UsageFileError::TooManyUsers(raw.user_bytes.len()));
    }
    let mut user_bytes = std::collections::BTreeMap::new();
    for (user, value) in &raw.user_bytes {
        check_user_id(user).map_err(|why| UsageFileError::BadUser(format!("user_bytes: {why}")))?;
        let what = format!("user_bytes[{user:?}]");
        let serde_json::Value::Number(n) = value else {
            return Err(UsageFileError::NotWhole(what));
        };
        user_bytes.insert(user.clone(), counter(&what, n)?);
    }
    Ok(SidecarUsage {
        core_uptime_sec,
        user_bytes,
    })
}

fn counter(what: &str, n: &serde_json::Number) -> Result<u64, UsageFileError> {
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
        return Err(UsageFileError::Negative(what.to_owned()));
    }
    Err(UsageFileError::NotWhole(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::usage::MAX_USER_ID;

    fn ok(text: &str) -> SidecarUsage {
        parse(text.as_bytes()).unwrap()
    }

    fn refused(text: &str) -> UsageFileError {
        parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_valid_file_is_read() {
        let u = ok(r#"{"core_uptime_sec": 3600, "user_bytes": {"alice": 123456, "bob": 0}}"#);
        assert_eq!(u.core_uptime_sec, 3600);
        assert_eq!(u.user_bytes["alice"], 123_456);
        assert_eq!(u.user_bytes["bob"], 0);
        let max = ok(r#"{"core_uptime_sec": 0, "user_bytes": {"a": 18446744073709551615}}"#);
        assert_eq!(max.user_bytes["a"], u64::MAX);
        assert!(
            ok(r#"{"core_uptime_sec": 1, "user_bytes": {}}"#)
                .user_bytes
                .is_empty()
        );
    }

    #[test]
    fn the_node_comes_from_the_agent_never_from_the_file() {
        // A node field (or any other) is ignored: nothing in SidecarUsage can
        // carry it, and the upload is attributed to the agent's credential.
        let u = ok(
            r#"{"node_id": "someone-else", "node": "x", "core_uptime_sec": 5, "user_bytes": {"alice": 1}}"#,
        );
        let json = serde_json::to_string(&u).unwrap();
        assert!(!json.contains("someone-else"), "{json}");
        assert_eq!(u.user_bytes.len(), 1);
    }

    #[test]
    fn negative_counters_are_refused() {
        assert_eq!(
            refused(r#"{"core_uptime_sec": 5, "user_bytes": {"alice": -1}}"#),
            UsageFileError::Negative("user_bytes[\"alice\"]".into())
        );
        assert_eq!(
            refused(r#"{"core_uptime_sec": -5, "user_bytes": {}}"#),
            UsageFileError::Negative("core_uptime_sec".into())
        );
        assert_eq!(
            refused(r#"{"core_uptime_sec": 5, "user_bytes": {"a": -1e30}}"#),
            UsageFileError::Negative("user_bytes[\"a\"]".into())
        );
    }

    #[test]
    fn fractions_strings_and_overflowing_numbers_are_refused() {
        for bad in [
            r#"{"core_uptime_sec": 5, "user_bytes": {"a": 1.5}}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": {"a": "12"}}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": {"a": null}}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": {"a": 18446744073709551616}}"#,
            r#"{"core_uptime_sec": 1.5, "user_bytes": {}}"#,
        ] {
            assert!(
                matches!(refused(bad), UsageFileError::NotWhole(_)),
                "{bad}: {:?}",
                parse(bad.as_bytes())
            );
        }
    }

    #[test]
    fn empty_blank_long_and_control_user_ids_are_refused() {
        for bad in [
            r#"{"core_uptime_sec": 5, "user_bytes": {"": 1}}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": {"   ": 1}}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": {"a\nb": 1}}"#,
        ] {
            let e = refused(bad);
            assert!(matches!(e, UsageFileError::BadUser(_)), "{bad}: {e:?}");
        }
        let long = format!(
            r#"{{"core_uptime_sec": 5, "user_bytes": {{"{}": 1}}}}"#,
            "a".repeat(MAX_USER_ID + 1)
        );
        assert!(refused(&long).to_string().contains("longer than 128"));
        assert!(
            refused(r#"{"core_uptime_sec": 5, "user_bytes": {"": 1}}"#)
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn malformed_json_and_missing_fields_are_refused() {
        for bad in [
            "",
            "{",
            "not json",
            "[]",
            r#"{"user_bytes": {}}"#,
            r#"{"core_uptime_sec": 5}"#,
            r#"{"core_uptime_sec": 5, "user_bytes": []}"#,
        ] {
            let e = refused(bad);
            assert!(matches!(e, UsageFileError::Malformed(_)), "{bad:?}: {e:?}");
            assert!(e.to_string().starts_with("malformed JSON"), "{e}");
        }
    }

    #[test]
    fn too_many_users_are_refused() {
        let users: Vec<String> = (0..=MAX_USERS).map(|i| format!("\"u{i}\": 1")).collect();
        let text = format!(
            r#"{{"core_uptime_sec": 5, "user_bytes": {{{}}}}}"#,
            users.join(",")
        );
        assert_eq!(refused(&text), UsageFileError::TooManyUsers(MAX_USERS + 1));
    }

    #[test]
    fn files_are_read_up_to_one_mib_and_must_be_regular() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.json");
        std::fs::write(&p, r#"{"core_uptime_sec": 5, "user_bytes": {"alice": 7}}"#).unwrap();
        assert_eq!(read(&p).unwrap().user_bytes["alice"], 7);
        // Exactly 1 MiB (padding is whitespace) is read; one byte more is not.
        let body = r#"{"core_uptime_sec": 5, "user_bytes": {"alice": 7}}"#;
        let pad = MAX_USAGE_FILE as usize - body.len();
        std::fs::write(&p, format!("{body}{}", " ".repeat(pad))).unwrap();
        assert!(read(&p).is_ok());
        std::fs::write(&p, format!("{body}{}", " ".repeat(pad + 1))).unwrap();
        assert_eq!(
            read(&p).unwrap_err(),
            UsageFileError::TooLarge(MAX_USAGE_FILE + 1)
        );
        assert!(read(&p).unwrap_err().to_string().contains("1 MiB"));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(UsageFileError::Read(_))
        ));
        assert_eq!(read(dir.path()).unwrap_err(), UsageFileError::NotAFile);
    }
}

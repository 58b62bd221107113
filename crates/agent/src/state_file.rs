//! Small JSON files in the state directory that weftd keeps for itself
//! (consumers, task-made firewall rules, the last firewall rollback): read at
//! start, where a missing file means "nothing kept" and a damaged one is an
//! error naming the file and what to do (the caller shows it in `weft status`
//! and never writes over it), and written whole, 0600, atomically.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The value kept in `path`; `Ok(None)`: no file. A file that cannot be read
/// or does not parse is an error: `"{path} is damaged ({why}): {what_to_do}"`
/// for a parse error, and the read error otherwise.
pub(crate) fn load<T: DeserializeOwned>(
    path: &Path,
    what_to_do: &str,
) -> Result<Option<T>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| damaged(path, &e.to_string(), what_to_do))
}

/// `"{path} is damaged ({why}): {what_to_do}"`, for checks a caller makes on
/// a value that parsed.
pub(crate) fn damaged(path: &Path, why: &str, what_to_do: &str) -> String {
    format!("{} is damaged ({why}): {what_to_do}", path.display())
}

/// Writes `value` to `path` (0600, atomically; blocking: call off the async
/// runtime).
pub(crate) fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    crate::state::write_private(path, &bytes).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn missing_is_none_damaged_is_named_and_saved_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert_eq!(load::<Vec<u32>>(&path, "fix it"), Ok(None));
        save(&path, &vec![1u32, 2]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path, "fix it"), Ok(Some(vec![1, 2])));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, b"[1,").unwrap();
        let err = load::<Vec<u32>>(&path, "fix it").unwrap_err();
        assert!(
            err.contains("x.json is damaged (") && err.ends_with("): fix it"),
            "{err}"
        );
    }
}

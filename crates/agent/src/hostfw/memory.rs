//! What the rollback guard remembers across restarts: the last rollback
//! (`STATE_DIR/firewall-rollback.json`). A weftd restarted with a cached map
//! that still asks for the rolled-back version must not apply it again: at
//! start the controller may be unreachable (that version is why), and then no
//! self-check could judge it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use weft_proto::hostfw::HostFirewallSpec;
use weft_proto::local::RollbackStatus;

/// The file, in the state directory.
pub(crate) const FILE: &str = "firewall-rollback.json";

/// The last rollback and the firewall it restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Remembered {
    /// The rollback.
    pub(crate) rollback: RollbackStatus,
    /// The firewall it restored (`None`: none), back in force at start while
    /// the map still asks for the refused version.
    pub(crate) restored: Option<HostFirewallSpec>,
}

/// The remembered rollback; `Ok(None)`: none. A damaged file is an error
/// naming the file and what to do (the caller shows it; nothing is refused
/// from it then).
pub(crate) fn load(dir: &Path) -> Result<Option<Remembered>, String> {
    crate::state_file::load(
        &dir.join(FILE),
        "the host firewall version it refused may be applied again; delete the file once \
         `weft status` shows the firewall you want",
    )
}

/// Remembers `rb` (0600, written atomically).
pub(crate) fn save(dir: &Path, rb: &Remembered) -> Result<(), String> {
    crate::state_file::save(&dir.join(FILE), rb)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_rollback_is_remembered_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let rb = Remembered {
            rollback: RollbackStatus {
                version: 8,
                restored: None,
                at_ms: 5,
                reason: "no answer".into(),
            },
            restored: None,
        };
        save(dir.path(), &rb).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(rb)));
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("firewall-rollback.json is damaged"), "{err}");
    }
}

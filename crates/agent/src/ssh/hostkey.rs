//! The SSH server's host key: `STATE_DIR/ssh_host_ed25519_key`, an OpenSSH
//! private key file (mode 0600), made once on the first `weftd --ssh` and
//! kept. Its public half is published in the maps of the nodes that may log
//! in, so a client pins it: a damaged or unreadable file is never silently
//! replaced (that would change the key every client trusts); the server does
//! not start, and `weft status` names the file and says how to recover.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

/// The host key file in the state directory.
pub(crate) const FILE: &str = "ssh_host_ed25519_key";
/// Longest host key file read (an Ed25519 OpenSSH key is about 400 bytes).
const MAX_FILE: u64 = 16 * 1024;

/// Loads the host key from `dir`, or makes and writes one when there is no
/// file. An error is a sentence for `weft status` naming the file and what to
/// do.
pub(crate) fn load_or_create(dir: &Path) -> Result<PrivateKey, String> {
    let path = dir.join(FILE);
    let shown = path.display();
    let recover = "weftd does not replace it, since clients pin the published key: restore \
                   the file from a backup (mode 0600), or delete it to have weftd make a new key \
                   on its next start (published in the map then)";
    match fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(format!(
                    "the SSH host key {shown} is readable by other users (mode {:o}); \
                     run chmod 600 {shown} and restart weftd",
                    meta.permissions().mode() & 0o777
                ));
            }
            if meta.len() > MAX_FILE {
                return Err(format!(
                    "the SSH host key {shown} is damaged (larger than {MAX_FILE} bytes); {recover}"
                ));
            }
            let text = fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the SSH host key {shown}: {e}"))?;
            let key = PrivateKey::from_openssh(text.as_bytes())
                .map_err(|e| format!("the SSH host key {shown} is damaged ({e}); {recover}"))?;
            if key.algorithm() != Algorithm::Ed25519 {
                return Err(format!(
                    "the SSH host key {shown} is not an Ed25519 key ({}); {recover}",
                    key.algorithm()
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
                .map_err(|e| format!("cannot make an SSH host key: {e}"))?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| format!("cannot encode the SSH host key: {e}"))?;
            crate::state::write_private(&path, text.as_bytes())
                .map_err(|e| format!("cannot write the SSH host key: {e:#}"))?;
            tracing::info!(file = %shown, "made a new SSH host key");
            Ok(key)
        }
        Err(e) => Err(format!("cannot read the SSH host key {shown}: {e}")),
    }
}

/// The key's public half as one OpenSSH line without comment
/// (`ssh-ed25519 AAAA...`).
pub(crate) fn public_line(key: &PrivateKey) -> Result<String, String> {
    let mut public = key.public_key().clone();
    public.set_comment("");
    public
        .to_openssh()
        .map_err(|e| format!("cannot encode the SSH host key's public half: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(public_line(&a).unwrap(), public_line(&b).unwrap());
        assert!(public_line(&a).unwrap().starts_with("ssh-ed25519 AAAA"));
        assert_eq!(public_line(&a).unwrap().split(' ').count(), 2);
    }

    #[test]
    fn a_damaged_key_is_refused_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        crate::state::write_private(&path, b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n")
            .unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("damaged") && e.contains("delete it"), "{e}");
        assert!(
            fs::read(&path).unwrap().ends_with(b"garbage\n"),
            "not replaced"
        );
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }
}

//! The local API server on a Unix socket (see `weft_proto::local` for framing).
//!
//! Access control is the socket's mode: 0660 with group `weft` when that group
//! exists, else 0600 (root only). The socket's directory is created 0755.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use weft_proto::local::{LocalRequest, LocalResponse, MAX_REQUEST_LEN};

/// A request from a client with the channel for its answer.
pub(crate) type ApiCall = (LocalRequest, oneshot::Sender<LocalResponse>);

/// Binds the socket, replacing a stale one left by a crashed agent (but refusing to
/// steal the socket of a running one).
pub(crate) async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another weftd is already serving {} (stop it, or use --socket for a second agent)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding local API socket {}", path.display()))?;
    let mode = match weft_group() {
        Some(gid) => {
            if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
                tracing::warn!(error = %e, "could not give the socket to group weft");
            }
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    tracing::info!(socket = %path.display(), mode = format!("{mode:04o}"), "local API listening");
    Ok(listener)
}

/// Serves clients until the task is aborted.
pub(crate) async fn serve(listener: UnixListener, calls: mpsc::Sender<ApiCall>) {
    use weft_relay_client::{OutageLog, OutageNote};
    // A full fd table fails every accept: one line when it starts, one when
    // it ends (it was a WARN every 100 ms).
    let mut outage = OutageLog::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(OutageNote::Back { after, failures }) =
                    outage.recovered(crate::clock::now())
                {
                    tracing::info!(
                        failed_accepts = failures,
                        "local API accepting again after {:.1} s",
                        after.as_secs_f64()
                    );
                }
                let calls = calls.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, calls).await {
                        tracing::debug!(error = %e, "local API connection failed");
                    }
                });
            }
            Err(e) => {
                match outage.failed(crate::clock::now()) {
                    Some(OutageNote::Down) => tracing::warn!(
                        error = %e,
                        "local API accept failing (too many open files?); retrying"
                    ),
                    Some(OutageNote::StillDown { for_, failures }) => tracing::warn!(
                        error = %e,
                        failed_accepts = failures,
                        "local API accept still failing after {:.0} s",
                        for_.as_secs_f64()
                    ),
                    _ => {}
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ApiCall>) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST_LEN as u64 + 1));
    reader.read_line(&mut line).await?;
    let response = if line.len() > MAX_REQUEST_LEN {
        error("too_large", "request exceeds 64 KiB")
    } else {
        match serde_json::from_str::<LocalRequest>(line.trim_end()) {
            Err(e) => error("bad_request", &format!("malformed request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    error("shutting_down", "the agent is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| error("shutting_down", "the agent is shutting down"))
                }
            }
        }
    };
    let mut bytes = serde_json::to_vec(&response)?;
    bytes.push(b'\n');
    wr.write_all(&bytes).await?;
    wr.shutdown().await?;
    Ok(())
}

pub(crate) fn error(code: &str, message: &str) -> LocalResponse {
    LocalResponse::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// The gid of group `weft`, if it exists.
fn weft_group() -> Option<u32> {
    group_gid("weft")
}

/// A group's gid through the system's group lookup (NSS: /etc/group, but also
/// LDAP, sssd, systemd's dynamic groups), not by reading /etc/group.
fn group_gid(name: &str) -> Option<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(group = name, error = %e, "looking up a group failed");
            None
        }
    }
}

/// Removes the socket file on shutdown.
pub(crate) fn unlink(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_are_looked_up_through_nss() {
        assert_eq!(super::group_gid("root"), Some(0));
        assert_eq!(super::group_gid("no-such-group-weft-test"), None);
    }
}

//! `weftd --selfcheck-controlplane --controller URL`: one unauthenticated
//! `GET /healthz`, with the same URL policy and trust settings as a normal
//! start (`--ca-file`, `--pin-sha256`; cleartext `http://` only to loopback
//! unless `--allow-insecure-http`). It reads nothing from the state directory
//! and sends no credential: it can run before a node has ever joined, or
//! beside a running agent.

use anyhow::Context as _;
use weft_proto::api::Health;

use crate::ctl::{self, TrustSettings};

/// How to reach the controller for the check.
#[derive(Debug, Clone, Default)]
pub struct Selfcheck {
    /// The controller's base URL, or its replicas' comma-separated (the
    /// check passes when one of them answers).
    pub controller: String,
    /// PEM CA file for its certificate.
    pub ca_file: Option<String>,
    /// Its certificate's SHA-256 fingerprint.
    pub pin_sha256: Option<String>,
    /// Allow cleartext `http://` to a non-loopback controller.
    pub allow_insecure_http: bool,
}

/// The controller's health when `GET /healthz` answered 200; any other
/// answer, a refused URL, a failed connection or TLS handshake is an error
/// that says which.
pub async fn selfcheck_controlplane(check: &Selfcheck) -> anyhow::Result<Health> {
    let trust = TrustSettings {
        ca_file: check.ca_file.clone(),
        pin_sha256: check.pin_sha256.clone(),
        allow_insecure_http: check.allow_insecure_http,
    };
    let client = ctl::client(&check.controller, &trust, None)?;
    client
        .health()
        .await
        .with_context(|| format!("GET /healthz on {}", check.controller))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[tokio::test]
    async fn remote_cleartext_is_refused_without_connecting() {
        // 192.0.2.0/24 is TEST-NET-1: nothing is sent there, the URL is refused first.
        let check = Selfcheck {
            controller: "http://192.0.2.1:8080".into(),
            ..Selfcheck::default()
        };
        let err = format!("{:#}", selfcheck_controlplane(&check).await.unwrap_err());
        assert!(err.contains("refusing cleartext http://"), "{err}");
        let err = format!(
            "{:#}",
            selfcheck_controlplane(&Selfcheck {
                controller: "https://127.0.0.1:1".into(),
                pin_sha256: Some("sha256:12".into()),
                ..Selfcheck::default()
            })
            .await
            .unwrap_err()
        );
        assert!(err.contains("not a SHA-256 fingerprint"), "{err}");
    }
}

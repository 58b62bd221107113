//! How `weft admin …` and `weft policy …` reach the controller's admin API:
//! one set of connection flags, resolved to one admin-token client.
//!
//! In order of precedence:
//! - URL: `--controller`, `$WEFT_CONTROLLER_URL`, else `DIR/controller.url`
//!   of `--data-dir` (`$WEFT_CONTROLLER_DATA_DIR`).
//! - Admin token: `--token-file`, `$WEFT_ADMIN_TOKEN`, else `DIR/admin.token`.
//! - Trust: `--pin-sha256` or `--ca-file`, else the certificate in
//!   `DIR/tls/cert.pem` pinned by fingerprint, else the system roots.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_proto::api::{ADMIN_TOKEN_FILE, CONTROLLER_URL_FILE};

/// The spellings of `--pin-sha256` kept as hidden aliases for one release.
pub(crate) const DEPRECATED_PIN_FLAGS: &[&str] = &["--fingerprint"];

/// How to reach the controller's admin API.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Controller URL, for example `https://controller.example.net:8443`.
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL")]
    controller: Option<String>,
    /// The controller's data directory, when on the same machine (supplies the
    /// URL, the admin token and the certificate to pin).
    #[arg(long, env = "WEFT_CONTROLLER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the admin token (else $WEFT_ADMIN_TOKEN, else DIR/admin.token).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate(s) to trust (PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "pin_sha256")]
    ca_file: Option<PathBuf>,
    /// Trust exactly the controller certificate with this SHA-256 (`sha256:<hex>`
    /// or hex, as `weft-controller serve` prints it).
    #[arg(long = "pin-sha256", alias = "fingerprint", value_name = "FP")]
    pin_sha256: Option<String>,
    /// Allow http:// to a non-loopback controller (credentials in cleartext).
    #[arg(long)]
    allow_insecure_http: bool,
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim().to_owned())
}

impl ControllerArgs {
    /// A client carrying the admin token, trusting what the flags say.
    pub fn admin_client(&self) -> anyhow::Result<Client> {
        let url = match (&self.controller, &self.data_dir) {
            (Some(u), _) => u.clone(),
            (None, Some(dir)) => read_trimmed(&dir.join(CONTROLLER_URL_FILE)).context(
                "no --controller given and the data directory has no controller.url (is the controller running?)",
            )?,
            (None, None) => bail!(
                "pass --controller URL (or set WEFT_CONTROLLER_URL, or pass --data-dir of a local controller)"
            ),
        };
        let token = if let Some(f) = &self.token_file {
            read_trimmed(f)?
        } else if let Ok(t) = std::env::var("WEFT_ADMIN_TOKEN") {
            t.trim().to_owned()
        } else if let Some(dir) = &self.data_dir {
            read_trimmed(&dir.join(ADMIN_TOKEN_FILE))?
        } else {
            bail!("no admin token: pass --token-file, set WEFT_ADMIN_TOKEN, or pass --data-dir");
        };
        let trust = if let Some(fp) = &self.pin_sha256 {
            Trust::Fingerprint(parse_fingerprint(fp)?)
        } else if let Some(ca) = &self.ca_file {
            Trust::CaFile(ca.clone())
        } else if let Some(cert) = self
            .data_dir
            .as_ref()
            .map(|d| d.join("tls").join("cert.pem"))
            .filter(|p| p.exists())
        {
            let der = CertificateDer::from_pem_file(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            Trust::Fingerprint(Sha256::digest(der.as_ref()).into())
        } else {
            Trust::SystemRoots
        };
        let cfg = ClientConfig {
            trust,
            allow_insecure_http: self.allow_insecure_http,
            ..ClientConfig::new(url)
        };
        Ok(Client::new(cfg)?.with_bearer(&token)?)
    }
}

/// A one-line note on stderr for each deprecated flag spelling in `args`
/// (before a `--`), naming the one to use.
pub(crate) fn deprecated_flag_notes<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut notes = Vec::new();
    for a in args {
        let a = a.as_ref().to_string_lossy();
        if a == "--" {
            break;
        }
        let flag = a.split('=').next().unwrap_or_default();
        if DEPRECATED_PIN_FLAGS.contains(&flag) {
            notes.push(format!(
                "note: {flag} is deprecated and goes in the next release; use --pin-sha256"
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_pin_spelling_earns_a_note() {
        assert_eq!(
            deprecated_flag_notes(["weft", "admin", "--fingerprint=sha256:00", "node", "list"]),
            vec![
                "note: --fingerprint is deprecated and goes in the next release; use --pin-sha256"
            ]
        );
        assert!(deprecated_flag_notes(["weft", "admin", "--pin-sha256", "x"]).is_empty());
        assert!(deprecated_flag_notes(["weft", "--", "--fingerprint"]).is_empty());
    }
}

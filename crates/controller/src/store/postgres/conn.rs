//! Where the database is and how to reach it: `--database postgres://…`, the
//! password from a file or the environment (never the URL or the command
//! line), and TLS.
//!
//! TLS policy (`sslmode` in the URL):
//! - absent: `disable` for a Unix socket or a loopback host, else `require`;
//! - `require` or `verify-full`: TLS, and weft always verifies the server's
//!   certificate chain (the system's roots, or `--database-ca FILE` only) and
//!   its name against the host in the URL, as libpq's `verify-full` does;
//! - `disable`: cleartext, refused for a host that is not loopback unless
//!   `--database-insecure` is given (the password and every row would cross
//!   the network unencrypted);
//! - `prefer`, `allow`, `verify-ca`: refused (they can silently fall back to
//!   cleartext, or skip the name check).

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use postgres::config::{Host, SslMode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::tls::MakeRustls;
use crate::store::StoreError;

/// How long a session may sit idle inside a transaction before the server
/// ends it. The write lock (`pg_advisory_xact_lock`) lives as long as its
/// transaction, so a replica that stops while holding it (SIGSTOP, a paused
/// VM, a lost network that keeps the TCP connection open) would otherwise
/// block every other replica until it wakes. A replica whose transaction was
/// ended this way gets an error on its next statement and reloads its state.
pub const IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Adds `-c idle_in_transaction_session_timeout=…` to the session options,
/// unless the URL's `options` already sets it.
fn limit_idle_transactions(config: &mut postgres::Config) {
    let given = config.get_options().unwrap_or("").to_owned();
    if given.contains("idle_in_transaction_session_timeout") {
        return;
    }
    let ms = IDLE_TRANSACTION_TIMEOUT.as_millis();
    let ours = format!("-c idle_in_transaction_session_timeout={ms}");
    if given.trim().is_empty() {
        config.options(&ours);
    } else {
        config.options(&format!("{given} {ours}"));
    }
}

/// What `--database` needs besides the URL.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The password (from `--database-password-file`,
    /// `WEFT_DATABASE_PASSWORD` or `PGPASSWORD`), if the server asks for one.
    pub password: Option<String>,
    /// A PEM file of the CA certificates that sign the server's certificate
    /// (`--database-ca`); without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Allow `sslmode=disable` to a host that is not loopback.
    pub insecure: bool,
}

/// Why a `--database` URL or its options are refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a `postgres://` URL.
    #[error(
        "--database {0:?} is not a PostgreSQL URL: write postgres://USER@HOST[:PORT]/DBNAME[?sslmode=require]"
    )]
    NotPostgres(String),
    /// tokio-postgres refused it.
    #[error("--database: {0}")]
    Invalid(String),
    /// The URL holds a password.
    #[error(
        "--database holds a password: the command line is visible to every user of this host (ps) and ends up in shell history. Remove it from the URL and put it in a file named by --database-password-file (mode 0600), or in WEFT_DATABASE_PASSWORD or PGPASSWORD"
    )]
    PasswordInUrl,
    /// An `sslmode` weft does not offer.
    #[error(
        "--database sslmode={0}: use sslmode=require (weft verifies the server's certificate and name, like verify-full) or sslmode=disable (cleartext; loopback only unless --database-insecure)"
    )]
    SslMode(String),
    /// Cleartext to a remote host.
    #[error(
        "--database sslmode=disable to {0}, which is not a loopback address: the password and every row would cross the network unencrypted. Use sslmode=require, or add --database-insecure if you really mean it"
    )]
    Cleartext(String),
    /// The CA file.
    #[error("--database-ca {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No system roots and no CA file.
    #[error(
        "sslmode=require but this host has no CA certificates to verify the database's certificate with: pass --database-ca FILE"
    )]
    NoRoots,
}

impl From<TargetError> for StoreError {
    fn from(e: TargetError) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// A database to connect to, parsed and checked.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    tls: MakeRustls,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parses `url` (`postgres://` or `postgresql://`) with `opts`.
    pub fn parse(url: &str, opts: &ConnectOptions) -> Result<Target, TargetError> {
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            // Only the scheme: the rest may hold a password.
            let scheme = url.split_once("://").map_or("?", |(s, _)| s);
            return Err(TargetError::NotPostgres(format!("{scheme}://…")));
        };
        // sslmode is weft's to decide (tokio-postgres knows fewer modes).
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut sslmode = None;
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(v.to_owned()),
                Some(("password", _)) => return Err(TargetError::PasswordInUrl),
                _ => kept.push(kv),
            }
        }
        let mut stripped = format!("postgresql://{base}");
        if !kept.is_empty() {
            stripped.push('?');
            stripped.push_str(&kept.join("&"));
        }
        let mut config = postgres::Config::from_str(&stripped)
            .map_err(|e| TargetError::Invalid(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(TargetError::PasswordInUrl);
        }
        let remote: Vec<String> = config
            .get_hosts()
            .iter()
            .filter_map(|h| match h {
                Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let tls = match sslmode.as_deref() {
            None if remote.is_empty() => false,
            None | Some("require" | "verify-full") => true,
            Some("disable") => {
                if let (Some(host), false) = (remote.first(), opts.insecure) {
                    return Err(TargetError::Cleartext(host.clone()));
                }
                false
            }
            Some(other) => return Err(TargetError::SslMode(other.to_owned())),
        };
        let make = if tls {
            config.ssl_mode(SslMode::Require);
            MakeRustls {
                config: Some(client_config(opts.ca_file.as_ref())?),
            }
        } else {
            config.ssl_mode(SslMode::Disable);
            MakeRustls::default()
        };
        if let Some(pw) = &opts.password {
            config.password(pw.as_bytes());
        }
        if config.get_application_name().is_none() {
            config.application_name("weft-controller");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives_idle(Duration::from_secs(30));
        limit_idle_transactions(&mut config);
        let shown = shown(&config, tls);
        Ok(Target {
            config,
            tls: make,
            shown,
        })
    }

    /// Opens a connection.
    pub fn connect(&self) -> Result<Client, StoreError> {
        self.config.connect(self.tls.clone()).map_err(|e| {
            let why = e.to_string();
            let detail = std::error::Error::source(&e)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            if super::is_unavailable(&e) {
                StoreError::Unavailable(format!("connecting to {}: {why}{detail}", self.shown))
            } else {
                StoreError::Db(format!("connecting to {}: {why}{detail}", self.shown))
            }
        })
    }

    /// The session options sent to the server (`-c name=value …`).
    #[cfg(test)]
    pub(crate) fn config_options(&self) -> String {
        self.config.get_options().unwrap_or("").to_owned()
    }

    /// The URL as shown in logs: user, hosts, database, TLS; never a password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn shown(config: &postgres::Config, tls: bool) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map_or(String::new(), |p| format!(":{p}"));
    format!(
        "postgres://{}@{}{port}/{}{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or(""),
        if tls { " (TLS)" } else { "" }
    )
}

fn client_config(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca = |why: String| TargetError::Ca {
                path: path.clone(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| ca(format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ca(format!("a certificate was refused: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ca("holds no certificate".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TargetError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn parse(url: &str) -> Result<Target, TargetError> {
        Target::parse(url, &ConnectOptions::default())
    }

    #[test]
    fn a_password_in_the_url_is_refused_with_where_to_put_it() {
        for url in [
            "postgres://weft:secret@db.example/weft",
            "postgres://weft@db.example/weft?password=secret",
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains("--database-password-file"), "{e}");
            assert!(!e.contains("secret"), "the password is not echoed: {e}");
        }
    }

    #[test]
    fn cleartext_is_for_loopback_unless_insecure() {
        let local = parse("postgres://weft@127.0.0.1:5432/weft").unwrap();
        assert!(!local.shown().contains("TLS"), "{}", local.shown());
        let socket = parse("postgresql://weft@%2Ftmp%2Fpg:5432/weft").unwrap();
        assert!(socket.shown().contains("/tmp/pg"), "{}", socket.shown());
        let e = parse("postgres://weft@db.example/weft?sslmode=disable")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--database-insecure") && e.contains("db.example"),
            "{e}"
        );
        let insecure = ConnectOptions {
            insecure: true,
            ..ConnectOptions::default()
        };
        assert!(
            Target::parse("postgres://weft@db.example/weft?sslmode=disable", &insecure).is_ok()
        );
        for mode in ["prefer", "allow", "verify-ca"] {
            let e = parse(&format!("postgres://weft@db.example/weft?sslmode={mode}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("sslmode=require"), "{e}");
        }
        assert!(matches!(
            parse("mysql://weft@db/weft"),
            Err(TargetError::NotPostgres(_))
        ));
    }

    #[test]
    fn a_remote_host_gets_verified_tls_with_the_given_ca() {
        let dir = std::env::temp_dir().join(format!("weft-pg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let cert = rcgen_free_self_signed();
        std::fs::write(&ca, cert).unwrap();
        let opts = ConnectOptions {
            ca_file: Some(ca.clone()),
            ..ConnectOptions::default()
        };
        let t = Target::parse("postgres://weft@db.example/weft", &opts).unwrap();
        assert!(t.shown().ends_with("(TLS)"), "{}", t.shown());
        std::fs::write(&ca, "not a certificate").unwrap();
        let e = Target::parse("postgres://weft@db.example/weft?sslmode=require", &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A PEM certificate (made by weft-tls, which the controller already uses).
    fn rcgen_free_self_signed() -> String {
        let dir = std::env::temp_dir().join(format!("weft-pg-cert-{}", std::process::id()));
        let m = weft_tls::load_or_generate(
            &dir,
            &["db.example".into()],
            crate::tls::PROFILE,
            true,
            1_700_000_000,
        )
        .unwrap();
        let pem = std::fs::read_to_string(&m.cert_path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        pem
    }
}

//! Client errors.

use weft_proto::api::ErrorBody;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The controller URL is not usable.
    #[error("invalid controller URL: {0}")]
    InvalidUrl(String),
    /// Cleartext HTTP to a non-loopback host without the explicit override.
    #[error(
        "refusing cleartext http:// to non-loopback host {0}; use https:// (or allow insecure HTTP explicitly)"
    )]
    InsecureHttp(String),
    /// The trust configuration is unusable (CA file, fingerprint).
    #[error("TLS trust configuration: {0}")]
    Trust(String),
    /// Could not connect or the TLS handshake failed.
    #[error("connecting to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// What failed.
        why: String,
        /// When the server's certificate was refused (not trusted): the SHA-256
        /// of the certificate it presented (see [`ClientError::untrusted_certificate`]).
        refused_cert: Option<[u8; 32]>,
    },
    /// The call did not complete in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The HTTP exchange failed (connection reset, protocol error).
    #[error("HTTP: {0}")]
    Http(String),
    /// The controller answered with an error.
    #[error("controller answered {status}: {} ({})", body.message, body.code)]
    Api {
        /// HTTP status.
        status: u16,
        /// The `{code, message}` body (synthesised if the body was not one).
        body: ErrorBody,
    },
    /// The response is not what the API promises.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The map stream broke (bad framing, too large, dropped).
    #[error("map stream: {0}")]
    Stream(String),
    /// The relay member stream broke (bad framing, bad event, dropped).
    #[error("member stream: {0}")]
    MemberStream(String),
}

impl ClientError {
    /// The API error code, if the controller answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }

    /// The HTTP status, if the controller answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The SHA-256 of the server certificate this client refused (wrong or
    /// missing pin, unknown issuer, wrong name, expired), if that is why the
    /// call failed.
    pub fn untrusted_certificate(&self) -> Option<[u8; 32]> {
        match self {
            ClientError::Connect { refused_cert, .. } => *refused_cert,
            _ => None,
        }
    }

    /// Whether retrying the same call cannot help (auth or request errors).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => {
                (400..500).contains(status) && *status != 429 && *status != 408
            }
            ClientError::InvalidUrl(_) | ClientError::InsecureHttp(_) | ClientError::Trust(_) => {
                true
            }
            _ => false,
        }
    }
}

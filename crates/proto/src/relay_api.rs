//! Controller API bodies for relays (JSON), and the relay URL format.
//!
//! An admin registers a relay (`POST /v1/admin/relays`) and gets a relay token
//! once. The relay authenticates to the controller with it
//! (`Authorization: Bearer`), reports its TLS certificate fingerprint and STUN
//! port (`POST /v1/relay/report`), and follows the set of member node keys
//! (`GET /v1/relay/members` once, or the SSE stream `GET /v1/relay/members/stream`:
//! a [`MembersEvent::Snapshot`] first, then [`MembersEvent::Delta`]s). Every
//! registered relay appears in every node's map with its URL, fingerprint and
//! STUN port.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NodeKey;
use crate::api::API_VERSION;

/// SSE event name of a [`MembersEvent::Snapshot`].
pub const EVENT_MEMBERS: &str = "members";
/// SSE event name of a [`MembersEvent::Delta`].
pub const EVENT_MEMBERS_DELTA: &str = "members_delta";

/// Default relay port (the URL's port when it names none).
pub const DEFAULT_RELAY_PORT: u16 = 443;

/// A relay URL: `https://host[:port][/]`, host a DNS name, IPv4 address or
/// bracketed IPv6 address; the port defaults to 443.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a string is not a [`RelayUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay URL must look like https://relay.example.net[:443] ({0})")]
pub struct RelayUrlError(&'static str);

impl RelayUrl {
    /// Longest accepted URL.
    pub const MAX_LEN: usize = 512;

    /// Parses a relay URL.
    pub fn parse(url: &str) -> Result<Self, RelayUrlError> {
        if url.len() > Self::MAX_LEN {
            return Err(RelayUrlError("too long"));
        }
        let rest = url
            .strip_prefix("https://")
            .ok_or(RelayUrlError("scheme must be https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(RelayUrlError("only a host and an optional port"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(RelayUrlError("unclosed ["))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(RelayUrlError("bad IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or(RelayUrlError("bad port"))?),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
        if !valid_host {
            return Err(RelayUrlError("bad host"));
        }
        let port = match port {
            None => DEFAULT_RELAY_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && !p.starts_with('+') => n,
                _ => return Err(RelayUrlError("bad port")),
            },
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// `POST /v1/admin/relays` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRelayRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// A DNS label naming the relay, unique on the controller.
    pub name: String,
    /// Where nodes reach it ([`RelayUrl`]).
    pub url: String,
}

/// A relay as the admin API shows it (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// Name.
    pub name: String,
    /// URL handed to nodes.
    pub url: String,
    /// `sha256:<hex>` of its TLS certificate, as it last reported.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// UDP port of its STUN server, as it last reported.
    #[serde(default)]
    pub stun_port: Option<u16>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Last report, Unix milliseconds.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// Whether it holds a member stream now.
    #[serde(default)]
    pub connected: bool,
}

/// `POST /v1/admin/relays` response: the token is shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRelayResponse {
    /// The relay token (secret): the relay sends it as `Authorization: Bearer`.
    pub token: String,
    /// The relay.
    pub info: RelayInfo,
}

impl fmt::Debug for CreateRelayResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateRelayResponse")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

/// `GET /v1/admin/relays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayList {
    /// Sorted by name.
    pub relays: Vec<RelayInfo>,
}

/// `POST /v1/relay/report` body: what the relay tells the controller about
/// itself at start. Absent fields are cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayReportRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// `sha256:<64 lowercase hex>` of its TLS leaf certificate (nodes pin it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Its STUN UDP port, if it runs a STUN server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun_port: Option<u16>,
}

/// The full member set (`GET /v1/relay/members`, and the first stream event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The controller's map version this set reflects.
    pub version: u64,
    /// Every enabled node, sorted.
    pub members: Vec<NodeKey>,
}

/// A change of the member set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDelta {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The controller's map version after it.
    pub version: u64,
    /// Keys that became members, sorted.
    #[serde(default)]
    pub added: Vec<NodeKey>,
    /// Keys that stopped being members (removed or disabled), sorted. The relay
    /// disconnects them at once.
    #[serde(default)]
    pub removed: Vec<NodeKey>,
}

/// One event of the member stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersEvent {
    /// Replaces the whole set.
    Snapshot(MemberSnapshot),
    /// Changes it.
    Delta(MemberDelta),
}

/// Why an SSE event is not a valid member event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersEventError {
    /// Neither `members` nor `members_delta`.
    #[error("unknown member event type {0:?}")]
    UnknownEvent(String),
    /// The data is not the JSON of the event type.
    #[error("member event data is not valid: {0}")]
    Json(String),
    /// An API version this build does not know.
    #[error("member event has api_version {0}, expected {API_VERSION}")]
    UnknownApiVersion(u32),
}

impl MembersEvent {
    /// The SSE event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            MembersEvent::Snapshot(_) => EVENT_MEMBERS,
            MembersEvent::Delta(_) => EVENT_MEMBERS_DELTA,
        }
    }

    /// The version it brings the set to.
    pub fn version(&self) -> u64 {
        match self {
            MembersEvent::Snapshot(s) => s.version,
            MembersEvent::Delta(d) => d.version,
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> String {
        let r = match self {
            MembersEvent::Snapshot(s) => serde_json::to_string(s),
            MembersEvent::Delta(d) => serde_json::to_string(d),
        };
        // Keys and numbers only: cannot fail.
        r.unwrap_or_default()
    }

    /// Decodes an SSE event (`event`, `data`), checking the API version.
    pub fn decode(event: &str, data: &str) -> Result<Self, MembersEventError> {
        let json = |e: serde_json::Error| MembersEventError::Json(e.to_string());
        let ev = match event {
            EVENT_MEMBERS => MembersEvent::Snapshot(serde_json::from_str(data).map_err(json)?),
            EVENT_MEMBERS_DELTA => MembersEvent::Delta(serde_json::from_str(data).map_err(json)?),
            other => {
                // Bounded, and cut at a character boundary.
                let name: String = other.chars().take(64).collect();
                return Err(MembersEventError::UnknownEvent(name));
            }
        };
        let api = match &ev {
            MembersEvent::Snapshot(s) => s.api_version,
            MembersEvent::Delta(d) => d.api_version,
        };
        if api != API_VERSION {
            return Err(MembersEventError::UnknownApiVersion(api));
        }
        Ok(ev)
    }
}

/// Whether `s` is a `sha256:<64 lowercase hex>` certificate fingerprint.
pub fn is_tls_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let ok = |s: &str, host: &str, port: u16| {
            assert_eq!(
                RelayUrl::parse(s),
                Ok(RelayUrl {
                    host: host.into(),
                    port
                }),
                "{s}"
            );
        };
        ok("https://relay.example.net", "relay.example.net", 443);
        ok("https://Relay.Example.net:8443/", "relay.example.net", 8443);
        ok("https://127.0.0.1:9", "127.0.0.1", 9);
        ok("https://[::1]:4433", "::1", 4433);
        ok("https://[2001:db8::1]", "2001:db8::1", 443);
        for bad in [
            "http://relay",
            "https://",
            "https://relay:0",
            "https://relay:99999",
            "https://relay/path",
            "https://u@relay",
            "https://[zz]:1",
            "https://relay:+1",
            "relay:443",
        ] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad}");
        }
        let u = RelayUrl::parse("https://[::1]:4433").unwrap();
        assert_eq!(u.to_string(), "https://[::1]:4433");
        assert_eq!(RelayUrl::parse(&u.to_string()), Ok(u));
    }

    #[test]
    fn member_events_round_trip_and_check_versions() {
        let k = NodeKey::from_bytes([1; 32]);
        let ev = MembersEvent::Delta(MemberDelta {
            api_version: API_VERSION,
            version: 4,
            added: vec![k],
            removed: vec![],
        });
        assert_eq!(
            MembersEvent::decode(ev.event_name(), &ev.to_json()),
            Ok(ev.clone())
        );
        let snap = MembersEvent::Snapshot(MemberSnapshot {
            api_version: 9,
            version: 1,
            members: vec![k],
        });
        assert_eq!(
            MembersEvent::decode(EVENT_MEMBERS, &snap.to_json()),
            Err(MembersEventError::UnknownApiVersion(9))
        );
        assert!(matches!(
            MembersEvent::decode("x", "{}"),
            Err(MembersEventError::UnknownEvent(_))
        ));
        // Found by the fuzzer (in the map event decoder this was copied from):
        // a long name must be cut at a character boundary.
        let long = "é".repeat(100);
        assert_eq!(
            MembersEvent::decode(&long, "{}"),
            Err(MembersEventError::UnknownEvent("é".repeat(64)))
        );
        assert!(crate::netmap::MapEvent::decode(&long, None, "{}").is_err());
    }

    #[test]
    fn fingerprint_format() {
        assert!(is_tls_fingerprint(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_tls_fingerprint(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_tls_fingerprint("sha256:abc"));
    }

    #[test]
    fn create_response_debug_redacts_the_token() {
        let r = CreateRelayResponse {
            token: "weft_relay_SECRET".into(),
            info: RelayInfo {
                name: "r".into(),
                url: "https://r".into(),
                tls_fingerprint: None,
                stun_port: None,
                created_at_ms: 0,
                last_seen_ms: None,
                connected: false,
            },
        };
        assert!(!format!("{r:?}").contains("SECRET"));
    }
}

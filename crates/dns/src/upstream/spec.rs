//! Which resolvers forwarded names go to, as the operator writes them
//! (`weftd --dns-upstream URL`): `udp://IP[:PORT]` (plain DNS, TCP on
//! truncation; port 53 by default; a bare `IP[:PORT]` means the same) or
//! `tls://IP[:PORT][#NAME]` (DNS over TLS, RFC 7858; port 853 by default; the
//! server's certificate must be valid for NAME, or for the IP address without
//! one). Pure.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One upstream resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Upstream {
    /// Plain DNS over UDP (TCP when the answer is truncated).
    Udp(SocketAddr),
    /// DNS over TLS.
    Tls {
        /// The server's address.
        addr: SocketAddr,
        /// The name its certificate must be valid for (`None`: its IP address).
        name: Option<String>,
    },
}

/// Default port of plain DNS.
pub(crate) const DNS_PORT: u16 = 53;
/// Default port of DNS over TLS (RFC 7858).
pub(crate) const DOT_PORT: u16 = 853;

impl Upstream {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Upstream::Udp(a) | Upstream::Tls { addr: a, .. } => *a,
        }
    }

    /// Whether it is a DNS-over-TLS upstream.
    pub fn is_tls(&self) -> bool {
        matches!(self, Upstream::Tls { .. })
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Upstream::Udp(addr)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Udp(a) => write!(f, "udp://{a}"),
            Upstream::Tls { addr, name: None } => write!(f, "tls://{addr}"),
            Upstream::Tls {
                addr,
                name: Some(n),
            } => write!(f, "tls://{addr}#{n}"),
        }
    }
}

/// Why an upstream URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad DNS upstream {input:?}: {reason} (expected udp://IP[:PORT] or tls://IP[:PORT][#TLS-NAME], \
     e.g. tls://1.1.1.1#cloudflare-dns.com)"
)]
pub struct UpstreamParseError {
    input: String,
    reason: String,
}

impl FromStr for Upstream {
    type Err = UpstreamParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| UpstreamParseError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match input.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("udp".to_owned(), input),
        };
        let (host, name) = match rest.split_once('#') {
            Some((h, n)) => (h, Some(n)),
            None => (rest, None),
        };
        let port = match scheme.as_str() {
            "udp" | "dns" => DNS_PORT,
            "tls" | "dot" => DOT_PORT,
            _ => return Err(err("unknown scheme (udp or tls)")),
        };
        let addr =
            parse_addr(host, port).ok_or_else(|| err("not an IP address with an optional port"))?;
        if addr.port() == 0 {
            return Err(err("port 0"));
        }
        if port == DNS_PORT {
            if name.is_some() {
                return Err(err("a #TLS-NAME needs tls://"));
            }
            return Ok(Upstream::Udp(addr));
        }
        let name = match name {
            None => None,
            Some(n) if valid_tls_name(n) => Some(n.to_ascii_lowercase()),
            Some(_) => return Err(err("the TLS name after # is not a valid host name")),
        };
        Ok(Upstream::Tls { addr, name })
    }
}

/// `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
fn parse_addr(host: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

fn valid_tls_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Upstream {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(
            ok("udp://192.0.2.1"),
            Upstream::Udp("192.0.2.1:53".parse().unwrap())
        );
        assert_eq!(
            ok("192.0.2.1:5353"),
            Upstream::Udp("192.0.2.1:5353".parse().unwrap())
        );
        assert_eq!(
            ok("udp://[2001:db8::1]"),
            Upstream::Udp("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(
            ok("2001:db8::1"),
            Upstream::Udp("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(
            ok("tls://1.1.1.1#Cloudflare-DNS.com"),
            Upstream::Tls {
                addr: "1.1.1.1:853".parse().unwrap(),
                name: Some("cloudflare-dns.com".into())
            }
        );
        assert_eq!(
            ok("TLS://[2606:4700::1111]:8853"),
            Upstream::Tls {
                addr: "[2606:4700::1111]:8853".parse().unwrap(),
                name: None
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "udp://192.0.2.1:53",
            "tls://1.1.1.1:853#one.one.one.one",
            "tls://[::1]:853",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }

    #[test]
    fn bad_urls_say_why() {
        for (s, why) in [
            ("https://1.1.1.1", "unknown scheme"),
            ("tls://dns.example#dns.example", "not an IP address"),
            ("udp://1.1.1.1#name", "needs tls://"),
            ("tls://1.1.1.1#bad_name!", "not a valid host name"),
            ("tls://1.1.1.1#", "not a valid host name"),
            ("udp://1.1.1.1:0", "port 0"),
            ("", "not an IP address"),
        ] {
            let e = s.parse::<Upstream>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(
                e.contains("tls://IP"),
                "{s}: the error teaches the syntax: {e}"
            );
        }
    }
}

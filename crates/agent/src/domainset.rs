//! Domain sets: a host name's A and AAAA answers kept in nftables named sets.
//!
//! [`update_nft_domain_set`] is `weftd --update-nft-domain-set` (a one-shot
//! command for apply scripts: no state directory, no credential): validate the
//! nftables identifiers, resolve the host, split the answers by family, sort
//! and de-duplicate them, and replace the contents of the existing sets in one
//! nftables transaction. It fails, so a calling script can roll back, on an
//! invalid identifier, an answer without any address of the families asked
//! for, a resolver failure, a missing table or set, and any refusal by `nft`.
//!
//! [`resolve`] is also what the host firewall's domain rules use to keep their
//! sets fresh by the records' TTLs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand_core::{OsRng, RngCore as _};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// How long one UDP query waits for its answer.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP retry (after a truncated UDP answer) may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// The system's resolver configuration, for its `nameserver` lines.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest nftables table or set name (the kernel's `NFT_NAME_MAXLEN` less
/// its terminating zero).
const MAX_IDENT: usize = 255;

/// A host name's addresses, each family sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// A answers.
    pub v4: BTreeSet<Ipv4Addr>,
    /// AAAA answers.
    pub v6: BTreeSet<Ipv6Addr>,
    /// The smallest TTL of the records the answers came with (CNAMEs
    /// included), seconds; `None` when there was no record (no answer, or an
    /// address literal).
    pub min_ttl: Option<u32>,
}

/// Which families to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// Ask for A records.
    pub v4: bool,
    /// Ask for AAAA records.
    pub v6: bool,
}

/// Why a domain set could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum DomainSetError {
    /// A table or set name nft would not take.
    #[error(
        "{what} {name:?} is not a valid nftables identifier: it must start with a letter or _, \
         continue with letters, digits, _, - or ., and be at most {MAX_IDENT} characters"
    )]
    Identifier {
        /// `--table`, `--set` or `--set6`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A family nft does not know.
    #[error("--family {0:?}: use ip, ip6, inet, arp, bridge or netdev")]
    Family(String),
    /// Not a host name.
    #[error(
        "--host {0:?} is not a host name (letters, digits, - and _, dot-separated labels of at most 63, 253 in all) or an IP address"
    )]
    Host(String),
    /// The resolver answered, without any address of the families asked for.
    #[error("{host} has no {families} address: the sets were left unchanged")]
    Empty {
        /// The host asked for.
        host: String,
        /// `A`, `AAAA` or `A or AAAA`.
        families: &'static str,
    },
    /// No resolver answered usefully.
    #[error("resolving {host}: {detail}")]
    Resolve {
        /// The host asked for.
        host: String,
        /// What went wrong, per server.
        detail: String,
    },
    /// nft refused the update (a missing table or set, a wrong set type).
    #[error("{0}")]
    Nft(#[from] weft_netcfg::ExecError),
}

/// One `weftd --update-nft-domain-set` run.
#[derive(Debug, Clone)]
pub struct DomainSetUpdate {
    /// The host name to resolve.
    pub host: String,
    /// nftables family of the table (`inet`, `ip`, …).
    pub family: String,
    /// The table.
    pub table: String,
    /// The set for IPv4 addresses.
    pub set4: String,
    /// The set for IPv6 addresses, if any.
    pub set6: Option<String>,
    /// Ask this server (`IP:PORT`) instead of the system's resolvers.
    pub dns_server: Option<SocketAddr>,
}

/// Whether `name` is an nftables identifier this command accepts: a letter or
/// `_` first, then letters, digits, `_`, `-` or `.` (nft's own grammar also
/// allows `/`, which this refuses), at most 255 bytes.
pub fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_IDENT
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `host` is a host name DNS can carry (one trailing dot allowed).
fn valid_host(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
}

/// Runs the update: what the sets now hold.
pub async fn update_nft_domain_set(req: &DomainSetUpdate) -> Result<Resolved, DomainSetError> {
    for (what, name) in [("--table", &req.table), ("--set", &req.set4)]
        .into_iter()
        .chain(req.set6.iter().map(|s| ("--set6", s)))
    {
        if !valid_identifier(name) {
            return Err(DomainSetError::Identifier {
                what,
                name: name.clone(),
            });
        }
    }
    if !matches!(
        req.family.as_str(),
        "ip" | "ip6" | "inet" | "arp" | "bridge" | "netdev"
    ) {
        return Err(DomainSetError::Family(req.family.clone()));
    }
    let families = Families {
        v4: true,
        v6: req.set6.is_some(),
    };
    let resolved = resolve_families(&req.host, req.dns_server, families).await?;
    if resolved.v4.is_empty() && resolved.v6.is_empty() {
        return Err(DomainSetError::Empty {
            host: req.host.clone(),
            families: if families.v6 { "A or AAAA" } else { "A" },
        });
    }
    let (family, table, set4, set6) = (
        req.family.clone(),
        req.table.clone(),
        req.set4.clone(),
        req.set6.clone(),
    );
    let sets = resolved.clone();
    tokio::task::spawn_blocking(move || {
        weft_netcfg::exec::linux::update_named_sets(
            &family,
            &table,
            &set4,
            set6.as_deref(),
            &sets.v4,
            &sets.v6,
        )
    })
    .await
    .map_err(|e| DomainSetError::Resolve {
        host: req.host.clone(),
        detail: format!("the nft task failed: {e}"),
    })??;
    Ok(resolved)
}

/// Resolves `host` to its A and AAAA answers, asking `server` (`IP:PORT`),
/// else the `nameserver`s of /etc/resolv.conf in order (the first that
/// answers). An address literal resolves to itself. An answer without
/// addresses (NXDOMAIN, NODATA) is an empty [`Resolved`], not an error;
/// SERVFAIL, REFUSED and timeouts from every server are.
pub async fn resolve(host: &str, server: Option<SocketAddr>) -> Result<Resolved, DomainSetError> {
    resolve_families(host, server, Families { v4: true, v6: true }).await
}

/// [`resolve`] for the given families only (the host firewall asks for each
/// family on its own, so a resolver refusing AAAA does not lose the A answers).
pub(crate) async fn resolve_families(
    host: &str,
    server: Option<SocketAddr>,
    families: Families,
) -> Result<Resolved, DomainSetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        let mut r = Resolved::default();
        match ip {
            IpAddr::V4(a) if families.v4 => {
                r.v4.insert(a);
            }
            IpAddr::V6(a) if families.v6 => {
                r.v6.insert(a);
            }
            IpAddr::V4(_) | IpAddr::V6(_) => {}
        }
        return Ok(r);
    }
    if !valid_host(host) {
        return Err(DomainSetError::Host(host.to_owned()));
    }
    let name = Name::from_ascii(host)
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .map_err(|_| DomainSetError::Host(host.to_owned()))?;
    let servers = match server {
        Some(s) => vec![s],
        None => system_servers(),
    };
    if servers.is_empty() {
        return Err(DomainSetError::Resolve {
            host: host.to_owned(),
            detail: format!("no nameserver in {RESOLV_CONF}"),
        });
    }
    let mut failures = Vec::new();
    for s in servers {
        match ask_server(&name, s, families).await {
            Ok(r) => return Ok(r),
            Err(e) => failures.push(format!("{s}: {e}")),
        }
    }
    Err(DomainSetError::Resolve {
        host: host.to_owned(),
        detail: failures.join("; "),
    })
}

/// The `nameserver` lines of /etc/resolv.conf (port 53).
fn system_servers() -> Vec<SocketAddr> {
    std::fs::read_to_string(RESOLV_CONF)
        .map(|text| parse_nameservers(&text))
        .unwrap_or_default()
}

fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) cannot be asked from here.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Both questions to one server.
async fn ask_server(
    name: &Name,
    server: SocketAddr,
    families: Families,
) -> Result<Resolved, String> {
    let mut r = Resolved::default();
    let mut ttl = |t: u32| r.min_ttl = Some(r.min_ttl.map_or(t, |m| m.min(t)));
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for (wanted, rtype) in [
        (families.v4, RecordType::A),
        (families.v6, RecordType::AAAA),
    ] {
        if !wanted {
            continue;
        }
        let answer = exchange(name, rtype, server).await?;
        match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            other => return Err(format!("{rtype} query answered {other}")),
        }
        for record in &answer.answers {
            match &record.data {
                RData::A(a) if rtype == RecordType::A => {
                    v4.insert(a.0);
                    ttl(record.ttl);
                }
                RData::AAAA(a) if rtype == RecordType::AAAA => {
                    v6.insert(a.0);
                    ttl(record.ttl);
                }
                RData::CNAME(_) => ttl(record.ttl),
                _ => {}
            }
        }
    }
    r.v4 = v4;
    r.v6 = v6;
    Ok(r)
}

/// One question over UDP, again over TCP when the answer was truncated.
async fn exchange(name: &Name, rtype: RecordType, server: SocketAddr) -> Result<Message, String> {
    let id = u16::try_from(OsRng.next_u32() & 0xffff).unwrap_or(0);
    let question = Query::query(name.clone(), rtype);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(question.clone());
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let is_answer = |m: &Message| {
        m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
            && matches!(m.queries.as_slice(), [q] if q.name == question.name && q.query_type == rtype)
    };
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let udp = timeout(UDP_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything else (a late answer, a spoofing attempt) is ignored.
            if let Some(m) = buf.get(..n).and_then(|b| Message::from_vec(b).ok())
                && is_answer(&m)
            {
                return Ok::<_, String>(m);
            }
        }
    })
    .await
    .map_err(|_| format!("no answer within {} s", UDP_TIMEOUT.as_secs()))??;
    if !udp.metadata.truncation {
        return Ok(udp);
    }
    timeout(TCP_TIMEOUT, async {
        let m = weft_dns::tcp_query(server, &bytes).await?;
        if is_answer(&m) {
            Ok(m)
        } else {
            Err("the TCP answer does not match the query".to_owned())
        }
    })
    .await
    .map_err(|_| format!("no TCP answer within {} s", TCP_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_nft_names() {
        for ok in ["s4", "_x", "web_4", "a-b.c", "T1", &"a".repeat(255)] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "4s",
            "-a",
            ".a",
            "a b",
            "a;b",
            "a/b",
            "a\"b",
            "é",
            &"a".repeat(256),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn host_names_are_checked() {
        for ok in [
            "example.com",
            "example.com.",
            "a-b.c_d.example",
            "localhost",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a b.com",
            "a;b",
            long_label.as_str(),
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\nnameserver nonsense\noptions edns0\n";
        assert_eq!(
            parse_nameservers(text),
            [
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn an_address_literal_resolves_to_itself() {
        let r = resolve("192.0.2.1", None).await.unwrap();
        assert_eq!(r.v4, ["192.0.2.1".parse::<Ipv4Addr>().unwrap()].into());
        assert!(r.v6.is_empty() && r.min_ttl.is_none());
        assert!(matches!(
            resolve("bad host", None).await,
            Err(DomainSetError::Host(_))
        ));
    }
}

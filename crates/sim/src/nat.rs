//! A NAT in front of one host, with the mapping and filtering behaviours of
//! RFC 4787 (sections 4.1 and 5) and an idle timeout per mapping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::rng::SimRng;

/// How a NAT picks the external port for an outbound datagram (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mapping {
    /// One external port per internal address and port, whatever the destination.
    EndpointIndependent,
    /// A new external port per destination IP address.
    AddressDependent,
    /// A new external port per destination IP address and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound datagrams a NAT lets through a mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filtering {
    /// Anyone may send to a mapping ("full cone").
    EndpointIndependent,
    /// Only IP addresses the mapping has sent to.
    AddressDependent,
    /// Only IP addresses and ports the mapping has sent to.
    AddressAndPortDependent,
}

/// A NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// A mapping with no outbound datagram for this long is gone (RFC 4787
    /// REQ-5 asks for at least 2 minutes; simulations may use less).
    pub timeout: Duration,
}

/// The key a mapping is found by, per [`Mapping`].
type MapKey = (SocketAddr, Option<IpAddr>, Option<u16>);

#[derive(Debug, Clone)]
struct Binding {
    internal: SocketAddr,
    external_port: u16,
    last_out: Duration,
    sent_to: BTreeSet<SocketAddr>,
}

/// Why the NAT refused an inbound datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatDrop {
    /// No mapping has this external port (never made, expired or rebound).
    NoMapping,
    /// A mapping exists but its filter refuses this sender.
    Filtered,
}

impl NatDrop {
    /// A short word for traces.
    pub fn as_str(self) -> &'static str {
        match self {
            NatDrop::NoMapping => "nat-no-mapping",
            NatDrop::Filtered => "nat-filtered",
        }
    }
}

/// One NAT: an external address and its mappings.
#[derive(Debug, Clone)]
pub struct Nat {
    /// The external (public) address.
    pub external: IpAddr,
    /// Its behaviour.
    pub config: NatConfig,
    bindings: BTreeMap<MapKey, Binding>,
    by_port: BTreeMap<u16, MapKey>,
    /// Times at which a mapping expired, not yet collected by the caller.
    expired: Vec<Duration>,
}

impl Nat {
    /// A NAT with no mappings.
    pub fn new(external: IpAddr, config: NatConfig) -> Self {
        Self {
            external,
            config,
            bindings: BTreeMap::new(),
            by_port: BTreeMap::new(),
            expired: Vec::new(),
        }
    }

    fn key(&self, internal: SocketAddr, dst: SocketAddr) -> MapKey {
        match self.config.mapping {
            Mapping::EndpointIndependent => (internal, None, None),
            Mapping::AddressDependent => (internal, Some(dst.ip()), None),
            Mapping::AddressAndPortDependent => (internal, Some(dst.ip()), Some(dst.port())),
        }
    }

    /// Forgets mappings idle at `now`, remembering when each expired.
    fn expire(&mut self, now: Duration) {
        let timeout = self.config.timeout;
        let gone: Vec<MapKey> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.last_out + timeout <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(b) = self.bindings.remove(&k) {
                self.by_port.remove(&b.external_port);
                self.expired.push(b.last_out + timeout);
            }
        }
    }

    /// Translates an outbound datagram from `internal` to `dst` at `now`: the
    /// source address it leaves with. Creates or refreshes the mapping.
    pub fn outbound(
        &mut self,
        now: Duration,
        internal: SocketAddr,
        dst: SocketAddr,
        rng: &mut SimRng,
    ) -> SocketAddr {
        self.expire(now);
        let key = self.key(internal, dst);
        if !self.bindings.contains_key(&key) {
            let port = loop {
                let p = 1024 + rng.below(64_512) as u16;
                if !self.by_port.contains_key(&p) {
                    break p;
                }
            };
            self.by_port.insert(port, key);
            self.bindings.insert(
                key,
                Binding {
                    internal,
                    external_port: port,
                    last_out: now,
                    sent_to: BTreeSet::new(),
                },
            );
        }
        let external = self.external;
        match self.bindings.get_mut(&key) {
            Some(b) => {
                b.last_out = now;
                b.sent_to.insert(dst);
                SocketAddr::new(external, b.external_port)
            }
            None => SocketAddr::new(external, 0),
        }
    }

    /// Translates an inbound datagram from `from` to external port `port` at
    /// `now`: the internal address it goes to, or why it is dropped.
    pub fn inbound(
        &mut self,
        now: Duration,
        port: u16,
        from: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        self.expire(now);
        let b = self
            .by_port
            .get(&port)
            .and_then(|k| self.bindings.get(k))
            .ok_or(NatDrop::NoMapping)?;
        let allowed = match self.config.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => b.sent_to.iter().any(|s| s.ip() == from.ip()),
            Filtering::AddressAndPortDependent => b.sent_to.contains(&from),
        };
        if allowed {
            Ok(b.internal)
        } else {
            Err(NatDrop::Filtered)
        }
    }

    /// Forgets every mapping (a NAT reboot, or the ISP rebinding the host):
    /// the next outbound datagrams get new external ports.
    pub fn rebind(&mut self) {
        self.bindings.clear();
        self.by_port.clear();
    }

    /// Mappings now held.
    pub fn mappings(&self) -> usize {
        self.bindings.len()
    }

    /// The instants at which mappings expired since the last call.
    pub fn take_expired(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "10.0.0.2:51820";
    const A: &str = "198.51.100.1:3478";
    const A2: &str = "198.51.100.1:4000";
    const B: &str = "192.0.2.7:51820";

    fn nat(mapping: Mapping, filtering: Filtering) -> Nat {
        Nat::new(
            "203.0.113.1".parse().unwrap(),
            NatConfig {
                mapping,
                filtering,
                timeout: Duration::from_secs(30),
            },
        )
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn mapping_behaviours_reuse_ports_as_rfc_4787_says() {
        let mut rng = SimRng::new(1);
        for (m, same_ip_other_port, other_ip) in [
            (Mapping::EndpointIndependent, true, true),
            (Mapping::AddressDependent, true, false),
            (Mapping::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(m, Filtering::EndpointIndependent);
            let first = n.outbound(secs(0), a(H), a(A), &mut rng);
            assert_eq!(n.outbound(secs(1), a(H), a(A), &mut rng), first, "{m:?}");
            assert_eq!(
                n.outbound(secs(1), a(H), a(A2), &mut rng) == first,
                same_ip_other_port,
                "{m:?}"
            );
            assert_eq!(
                n.outbound(secs(1), a(H), a(B), &mut rng) == first,
                other_ip,
                "{m:?}"
            );
        }
    }

    #[test]
    fn filtering_behaviours_admit_what_rfc_4787_says() {
        let mut rng = SimRng::new(2);
        for (f, other_port_ok, other_ip_ok) in [
            (Filtering::EndpointIndependent, true, true),
            (Filtering::AddressDependent, true, false),
            (Filtering::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(Mapping::EndpointIndependent, f);
            let ext = n.outbound(secs(0), a(H), a(A), &mut rng);
            assert_eq!(n.inbound(secs(1), ext.port(), a(A)), Ok(a(H)), "{f:?}");
            assert_eq!(n.inbound(secs(1), ext.port(), a(A2)).is_ok(), other_port_ok);
            assert_eq!(n.inbound(secs(1), ext.port(), a(B)).is_ok(), other_ip_ok);
            assert_eq!(
                n.inbound(secs(1), ext.port().wrapping_add(1), a(A)),
                Err(NatDrop::NoMapping)
            );
        }
    }

    #[test]
    fn mappings_expire_when_idle_outbound_and_rebinding_forgets_them() {
        let mut rng = SimRng::new(3);
        let mut n = nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let ext = n.outbound(secs(0), a(H), a(A), &mut rng);
        // Inbound traffic does not refresh a mapping; outbound does.
        assert!(n.inbound(secs(29), ext.port(), a(A)).is_ok());
        assert_eq!(
            n.inbound(secs(30), ext.port(), a(A)),
            Err(NatDrop::NoMapping)
        );
        assert_eq!(n.take_expired(), vec![secs(30)]);
        let ext = n.outbound(secs(40), a(H), a(A), &mut rng);
        n.outbound(secs(60), a(H), a(A), &mut rng);
        assert!(n.inbound(secs(89), ext.port(), a(A)).is_ok());
        n.rebind();
        assert_eq!(n.mappings(), 0);
        assert_eq!(
            n.inbound(secs(89), ext.port(), a(A)),
            Err(NatDrop::NoMapping)
        );
    }
}

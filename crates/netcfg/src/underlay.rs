//! The host's own network as weft sees it (the link monitor and `weft status`):
//! every interface that is neither loopback nor weft's own, with its state and
//! addresses, and which interface carries the default route. Observed by
//! `NetlinkExecutor::observe_underlay`; compared here.

use ipnet::IpNet;

/// One underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayLink {
    /// Kernel interface index.
    pub index: u32,
    pub name: String,
    /// Administratively up with carrier (`IFF_UP` and `IFF_LOWER_UP`).
    pub up: bool,
    /// Every address on it (permanent or not), sorted.
    pub addrs: Vec<IpNet>,
}

/// The host's underlay at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Underlay {
    /// By interface index.
    pub links: Vec<UnderlayLink>,
    /// The interface of the IPv4 default route with the lowest metric (a
    /// route whose next hop is marked link-down does not count).
    pub default_v4: Option<String>,
    /// The same for IPv6.
    pub default_v6: Option<String>,
    /// Indices of the interfaces left out (loopback and weft's own): their
    /// changes are not the underlay's.
    pub others: Vec<u32>,
}

impl Underlay {
    /// What changed from `before` to `self`, in words (empty: nothing that
    /// matters for paths: interfaces, their state and addresses, the default
    /// routes' interfaces).
    pub fn changes_since(&self, before: &Underlay) -> Vec<String> {
        let mut out = Vec::new();
        for link in &self.links {
            match before.links.iter().find(|l| l.index == link.index) {
                None => out.push(format!("{} appeared", link.name)),
                Some(old) => {
                    if old.up != link.up {
                        let state = if link.up { "up" } else { "down" };
                        out.push(format!("{} {state}", link.name));
                    }
                    for a in link.addrs.iter().filter(|a| !old.addrs.contains(a)) {
                        out.push(format!("{} gained {a}", link.name));
                    }
                    for a in old.addrs.iter().filter(|a| !link.addrs.contains(a)) {
                        out.push(format!("{} lost {a}", link.name));
                    }
                }
            }
        }
        for old in &before.links {
            if !self.links.iter().any(|l| l.index == old.index) {
                out.push(format!("{} went away", old.name));
            }
        }
        for (family, was, is) in [
            ("IPv4", &before.default_v4, &self.default_v4),
            ("IPv6", &before.default_v6, &self.default_v6),
        ] {
            if was != is {
                out.push(format!(
                    "{family} default route via {}",
                    is.as_deref().unwrap_or("nothing")
                ));
            }
        }
        out
    }

    /// Whether `ip` is an address of an underlay interface that is up.
    pub fn has_address(&self, ip: std::net::IpAddr) -> bool {
        self.links
            .iter()
            .filter(|l| l.up)
            .any(|l| l.addrs.iter().any(|a| a.addr() == ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, up: bool, addrs: &[&str]) -> UnderlayLink {
        UnderlayLink {
            index,
            name: name.into(),
            up,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn changes_name_links_addresses_and_default_routes() {
        let before = Underlay {
            links: vec![
                link(2, "eth0", true, &["192.0.2.10/24"]),
                link(3, "eth1", true, &["198.51.100.10/24"]),
            ],
            default_v4: Some("eth0".into()),
            default_v6: None,
            others: vec![1],
        };
        assert!(before.changes_since(&before.clone()).is_empty());
        let after = Underlay {
            links: vec![
                link(2, "eth0", false, &[]),
                link(4, "wlan0", true, &["203.0.113.5/24"]),
            ],
            default_v4: Some("wlan0".into()),
            default_v6: None,
            others: vec![1],
        };
        assert_eq!(
            after.changes_since(&before),
            vec![
                "eth0 down",
                "eth0 lost 192.0.2.10/24",
                "wlan0 appeared",
                "eth1 went away",
                "IPv4 default route via wlan0",
            ]
        );
        assert!(!after.has_address("192.0.2.10".parse().unwrap()));
        assert!(after.has_address("203.0.113.5".parse().unwrap()));
    }
}

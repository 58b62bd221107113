//! Workload networking (`weft run`): the local API's requests and answers, and
//! the `--allow DEST[:PORT][/PROTO]` syntax the CLI and the agent both check.
//!
//! `weft run` asks the agent for a network namespace ([`WorkloadSpec`]), runs
//! the command inside it (`setns` to [`WorkloadInfo::netns`]), tells the agent
//! the process id ([`LocalRequest::WorkloadStarted`](crate::local::LocalRequest))
//! and, when the command ends, that it ended. The agent owns the namespace,
//! its links and its rules, and removes them once no process runs in it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// At most this many `--forward` ports per workload.
pub const MAX_FORWARDS: usize = 64;
/// At most this many `--allow` rules per workload.
pub const MAX_ALLOWS: usize = 256;
/// Longest host name an `--allow` rule may name.
pub const MAX_HOST_LEN: usize = 253;

/// The network a workload gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// Loopback only.
    None,
    /// Loopback, plus each forwarded port reaching the host's `127.0.0.1:PORT`.
    HostLoopback,
    /// A veth on weft's workload bridge, NAT out (to the overlay as the node).
    Bridged,
    /// Bridged, but only to the `--allow` destinations (nft in the namespace).
    Custom,
}

impl NetMode {
    /// The name on the command line and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::None => "none",
            NetMode::HostLoopback => "host-loopback",
            NetMode::Bridged => "bridged",
            NetMode::Custom => "custom",
        }
    }

    /// Whether the workload gets a veth on the bridge.
    pub fn is_bridged(self) -> bool {
        matches!(self, NetMode::Bridged | NetMode::Custom)
    }
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NetMode::None),
            "host-loopback" => Ok(NetMode::HostLoopback),
            "bridged" => Ok(NetMode::Bridged),
            "custom" => Ok(NetMode::Custom),
            other => Err(format!(
                "unknown network mode {other:?}: use none, host-loopback, bridged or custom"
            )),
        }
    }
}

/// What `weft run` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The mode.
    pub net: NetMode,
    /// `host-loopback`: TCP ports of the host's `127.0.0.1` the workload
    /// reaches at its own `127.0.0.1` (same port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<u16>,
    /// `custom`: the only destinations the workload may open connections to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Allow>,
}

impl WorkloadSpec {
    /// Checks the combination and the bounds; the error says what to change.
    pub fn check(&self) -> Result<(), String> {
        if !self.forward.is_empty() && self.net != NetMode::HostLoopback {
            return Err(format!(
                "--forward is for --net host-loopback (this is --net {})",
                self.net
            ));
        }
        if !self.allow.is_empty() && self.net != NetMode::Custom {
            return Err(format!(
                "--allow is for --net custom (this is --net {})",
                self.net
            ));
        }
        if self.forward.len() > MAX_FORWARDS {
            return Err(format!("at most {MAX_FORWARDS} --forward ports"));
        }
        if self.allow.len() > MAX_ALLOWS {
            return Err(format!("at most {MAX_ALLOWS} --allow rules"));
        }
        if let Some(p) = self.forward.iter().find(|p| **p == 0) {
            return Err(format!("--forward {p}: not a port"));
        }
        let mut seen = self.forward.clone();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("--forward {} given twice", w[0]));
        }
        for a in &self.allow {
            a.check()?;
        }
        Ok(())
    }
}

/// Transport protocol of an `--allow` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where an `--allow` rule points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowDest {
    /// An address or prefix.
    Net(IpNet),
    /// A host name, resolved by the agent when the workload is created.
    Host(String),
}

/// One `--allow DEST[:PORT][/tcp|/udp]`: without a port, every port and
/// protocol of DEST; with a port, TCP unless `/udp`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// The destination.
    pub dest: AllowDest,
    /// The port (`None`: any traffic to `dest`).
    #[serde(default)]
    pub port: Option<u16>,
    /// The protocol of `port`.
    #[serde(default = "tcp")]
    pub proto: AllowProto,
}

fn tcp() -> AllowProto {
    AllowProto::Tcp
}

impl Allow {
    fn check(&self) -> Result<(), String> {
        if let AllowDest::Host(h) = &self.dest
            && !valid_host(h)
        {
            return Err(format!(
                "--allow {h:?}: not an address, prefix or host name"
            ));
        }
        if self.port == Some(0) {
            return Err(format!("--allow {self}: port 0"));
        }
        Ok(())
    }
}

/// A DNS host name: labels of letters, digits and `-`, dot-separated.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOST_LEN
        && h.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl FromStr for Allow {
    type Err = String;
    /// `10.0.0.5`, `10.0.0.0/24:443`, `db.example.com:5432`, `[fd00::1]:53/udp`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--allow {s:?}: {why} (DEST[:PORT][/tcp|/udp])");
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Some(AllowProto::Tcp)),
            Some((r, "udp")) => (r, Some(AllowProto::Udp)),
            _ => (s, None),
        };
        let (dest, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (addr, after) = inner.split_once(']').ok_or_else(|| bad("missing ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected :PORT after ]"))?,
                ),
            };
            (addr, port)
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address or prefix: no port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((d, p)) => (d, Some(p)),
                None => (rest, None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| bad("bad port")))
            .transpose()?;
        if port.is_none() && proto.is_some() {
            return Err(bad("/tcp or /udp needs a port"));
        }
        let dest = if let Ok(ip) = dest.parse::<IpAddr>() {
            AllowDest::Net(IpNet::from(ip))
        } else if let Ok(net) = dest.parse::<IpNet>() {
            AllowDest::Net(net.trunc())
        } else if valid_host(dest) && !dest.contains('/') {
            AllowDest::Host(dest.to_ascii_lowercase())
        } else {
            return Err(bad("not an address, prefix or host name"));
        };
        let allow = Allow {
            dest,
            port,
            proto: proto.unwrap_or(AllowProto::Tcp),
        };
        allow.check()?;
        Ok(allow)
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = match &self.dest {
            AllowDest::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
            AllowDest::Net(n) => n.to_string(),
            AllowDest::Host(h) => h.clone(),
        };
        match self.port {
            None => f.write_str(&dest),
            Some(p) => {
                let proto = match self.proto {
                    AllowProto::Tcp => "tcp",
                    AllowProto::Udp => "udp",
                };
                if dest.contains(':') {
                    write!(f, "[{dest}]:{p}/{proto}")
                } else {
                    write!(f, "{dest}:{p}/{proto}")
                }
            }
        }
    }
}

/// The agent's answer to a workload creation: where to run the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// The workload's id (in the namespace's, links' and records' names).
    pub id: String,
    /// The mode.
    pub net: NetMode,
    /// The network namespace to `setns` into (a bind-mounted file).
    pub netns: String,
    /// Bridged modes: the workload's address (`10.x.y.z/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Bridged modes: its gateway, the node's end of the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `custom`: the rules as enforced (host names resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(s: &str) -> Allow {
        s.parse().unwrap()
    }

    #[test]
    fn allow_rules_parse_with_and_without_ports() {
        let a = allow("10.0.0.5");
        assert_eq!(a.port, None);
        assert_eq!(a.to_string(), "10.0.0.5");
        assert_eq!(allow("10.0.0.9/24:443").to_string(), "10.0.0.0/24:443/tcp");
        assert_eq!(
            allow("DB.example.com:5432").to_string(),
            "db.example.com:5432/tcp"
        );
        assert_eq!(allow("[fd00::1]:53/udp").to_string(), "[fd00::1]:53/udp");
        assert_eq!(allow("fd00::/64").to_string(), "fd00::/64");
        assert_eq!(allow("1.2.3.4:53/udp").proto, AllowProto::Udp);
        for bad in [
            "",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "1.2.3.4/udp",
            "a..b",
            "-x.com",
            "[fd00::1",
            "[fd00::1]53",
            "x y",
            "1.2.3.4:x",
        ] {
            assert!(bad.parse::<Allow>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_spec_refuses_options_of_another_mode() {
        let mut s = WorkloadSpec {
            net: NetMode::Bridged,
            forward: vec![80],
            allow: vec![],
        };
        assert!(s.check().unwrap_err().contains("host-loopback"));
        s.net = NetMode::HostLoopback;
        s.check().unwrap();
        s.forward = vec![80, 80];
        assert!(s.check().unwrap_err().contains("twice"));
        s.forward = vec![0];
        assert!(s.check().is_err());
        let s = WorkloadSpec {
            net: NetMode::None,
            forward: vec![],
            allow: vec![allow("1.2.3.4")],
        };
        assert!(s.check().unwrap_err().contains("custom"));
    }

    #[test]
    fn modes_round_trip() {
        for m in [
            NetMode::None,
            NetMode::HostLoopback,
            NetMode::Bridged,
            NetMode::Custom,
        ] {
            assert_eq!(m.as_str().parse::<NetMode>().unwrap(), m);
            let j = serde_json::to_string(&m).unwrap();
            assert_eq!(j, format!("\"{}\"", m.as_str()));
        }
        assert!("host".parse::<NetMode>().is_err());
    }
}

//! The compiled access policy as the network map carries it: typed and
//! versioned.
//!
//! The controller compiles its policy per node (`weft-policy`) into a
//! [`CompiledPolicy`] and ships it in that node's map as a [`MapPolicy`]; the
//! agent's tunnel core enforces it. On the wire it is a JSON object with a
//! `version` field ([`POLICY_VERSION`]) next to the fields of [`CompiledPolicy`]:
//!
//! ```json
//! {"version": 1, "node": "web1", "rules": [...], "inbound": [...],
//!  "outbound": [...], "visible_peers": ["db1"]}
//! ```
//!
//! Reading never fails: a version this build does not know, or a body that does
//! not parse, becomes [`MapPolicy::Unreadable`] with the reason, which the agent
//! enforces as "deny everything" (fail closed) and reports. An object without a
//! `version` is version 1 (maps from controllers that predate the field).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The policy format version this build writes and reads.
pub const POLICY_VERSION: u32 = 1;

/// A rule's position in its policy (0-based). Rules are reported by this id;
/// [`RuleInfo`] carries the name and line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub u32);

/// What a rule does to the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the packet (and its flow's replies) pass, unless a deny also matches.
    Allow,
    /// Drop the packet; beats every allow.
    Deny,
}

/// Transport protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Every IP protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (v4) and ICMPv6, every type.
    Icmp,
}

/// A protocol name that is not `any`, `tcp`, `udp` or `icmp` (at most its first
/// 40 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proto {0:?} (expected \"any\", \"tcp\", \"udp\" or \"icmp\")")]
pub struct UnknownProto(pub String);

impl FromStr for Proto {
    type Err = UnknownProto;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Proto::Any),
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            _ => Err(UnknownProto(s.chars().take(40).collect())),
        }
    }
}

/// An inclusive range of ports, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port (at least 1).
    pub first: u16,
    /// Last port (at least `first`).
    pub last: u16,
}

impl PortRange {
    /// A single port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// What an explanation says about a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Its position in the policy.
    pub id: RuleId,
    /// Its name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The line of its `[[rule]]` header (0 if built in code).
    pub line: u32,
    /// Allow or deny.
    pub action: Action,
}

impl fmt::Display for RuleInfo {
    /// `rule "web to db" (line 12)`, or `rule #3 (line 12)` for an unnamed rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "rule {n:?}")?,
            None => write!(f, "rule #{}", self.id.0 + 1)?,
        }
        if self.line > 0 {
            write!(f, " (line {})", self.line)?;
        }
        Ok(())
    }
}

/// The part of a policy that concerns one node, as its agent enforces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    /// The node it was compiled for.
    pub node: String,
    /// Every rule referenced below, sorted by id (for explanations).
    pub rules: Vec<RuleInfo>,
    /// Rules for packets a peer initiates towards this node.
    pub inbound: Vec<FlowRule>,
    /// Rules for packets this node initiates towards a peer.
    pub outbound: Vec<FlowRule>,
    /// Names of the nodes this node may reach or be reached by (some packet in
    /// either direction is allowed), sorted. No other node may appear in its map.
    pub visible_peers: Vec<String>,
    /// SSH logins this node's server accepts (`[[ssh]]` rules naming it in
    /// `to`): who, from which overlay addresses, as which local users. Sorted by
    /// peer name. Empty: nobody may log in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_inbound: Vec<SshGrant>,
    /// The nodes this node may log in to over SSH, with the users, sorted by
    /// node name. (The map's `ssh_hosts` adds their host keys.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_outbound: Vec<SshGrant>,
}

/// One node's SSH permission towards another, as one side's compiled policy
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshGrant {
    /// The `[[ssh]]` rules it comes from.
    pub rules: Vec<RuleId>,
    /// The other node's name (for `ssh_inbound`, the client; for
    /// `ssh_outbound`, the server).
    pub peer: String,
    /// The other node's overlay addresses (host prefixes).
    #[serde(serialize_with = "crate::ipfmt::nets")]
    pub addrs: Vec<IpNet>,
    /// The local users on the server, sorted; `*` means "the user the client
    /// asks for, whoever it is" (except `root`, which is only ever named).
    pub users: Vec<String>,
}

/// One rule as it applies to one node and one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRule {
    /// The policy rule it comes from.
    pub rule: RuleId,
    /// Allow or deny.
    pub action: Action,
    /// Transport protocol.
    pub proto: Proto,
    /// Destination ports (of the initiating packet); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// This node's addresses the rule covers (host prefixes, or routed subnets
    /// for a gateway).
    #[serde(serialize_with = "crate::ipfmt::nets")]
    pub local: Vec<IpNet>,
    /// The peers' addresses the rule covers (host prefixes and routed subnets).
    #[serde(serialize_with = "crate::ipfmt::nets")]
    pub peers: Vec<IpNet>,
}

/// The access policy in a node's map ([`crate::netmap::NetworkMap::policy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPolicy {
    /// A policy in the format this build reads ([`POLICY_VERSION`]). Shared:
    /// the controller keeps each node's compiled policy and puts it in every
    /// map of that node without copying it.
    Compiled(Arc<CompiledPolicy>),
    /// A policy this build cannot use. Enforced as "deny everything".
    Unreadable(Unreadable),
}

/// Why a map's policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The format version it claims, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What is wrong with it.
    pub unreadable: String,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.unreadable)
    }
}

impl From<CompiledPolicy> for MapPolicy {
    fn from(p: CompiledPolicy) -> Self {
        MapPolicy::Compiled(Arc::new(p))
    }
}

impl MapPolicy {
    /// Reads a policy from its JSON value (never fails; see the module docs).
    fn from_value(mut value: serde_json::Value) -> MapPolicy {
        let unreadable = |version, why: String| {
            MapPolicy::Unreadable(Unreadable {
                version,
                unreadable: why,
            })
        };
        let Some(obj) = value.as_object_mut() else {
            return unreadable(None, "the policy is not a JSON object".to_owned());
        };
        let version = obj.remove("version");
        // An unreadable policy written back (a cached map) reads as it was.
        if let Some(why) = obj.get("unreadable").and_then(|w| w.as_str()) {
            return unreadable(version.and_then(|v| v.as_u64()), why.to_owned());
        }
        let version = match version {
            None => u64::from(POLICY_VERSION),
            Some(v) => match v.as_u64() {
                Some(v) => v,
                None => {
                    return unreadable(None, format!("the policy's version {v} is not a number"));
                }
            },
        };
        if version != u64::from(POLICY_VERSION) {
            return unreadable(
                Some(version),
                format!(
                    "policy format version {version} is not one this weftd reads \
                     (it reads version {POLICY_VERSION}); upgrade weftd"
                ),
            );
        }
        match serde_json::from_value::<CompiledPolicy>(value) {
            Ok(p) => MapPolicy::Compiled(Arc::new(p)),
            Err(e) => unreadable(Some(version), format!("the policy does not parse: {e}")),
        }
    }
}

impl Serialize for MapPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Versioned<'a, T> {
            #[serde(skip_serializing_if = "Option::is_none")]
            version: Option<u64>,
            #[serde(flatten)]
            body: &'a T,
        }
        match self {
            MapPolicy::Compiled(p) => Versioned {
                version: Some(u64::from(POLICY_VERSION)),
                body: &**p,
            }
            .serialize(s),
            // Written back with its reason, so a cached map reads as unreadable
            // again, with the same reason.
            MapPolicy::Unreadable(u) => Versioned {
                version: u.version,
                body: &UnreadableBody {
                    unreadable: &u.unreadable,
                },
            }
            .serialize(s),
        }
    }
}

#[derive(Serialize)]
struct UnreadableBody<'a> {
    unreadable: &'a str,
}

impl<'de> Deserialize<'de> for MapPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(MapPolicy::from_value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use serde_json::json;

    fn sample() -> CompiledPolicy {
        CompiledPolicy {
            node: "web1".into(),
            rules: vec![RuleInfo {
                id: RuleId(0),
                name: Some("web to db".into()),
                line: 3,
                action: Action::Allow,
            }],
            inbound: vec![],
            outbound: vec![FlowRule {
                rule: RuleId(0),
                action: Action::Allow,
                proto: Proto::Tcp,
                ports: vec![PortRange::single(5432)],
                local: vec!["100.64.0.1/32".parse().unwrap()],
                peers: vec!["100.64.0.2/32".parse().unwrap()],
            }],
            visible_peers: vec!["db1".into()],
            ssh_inbound: vec![],
            ssh_outbound: vec![],
        }
    }

    #[test]
    fn a_compiled_policy_round_trips_with_its_version() {
        let p = MapPolicy::from(sample());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["version"], json!(POLICY_VERSION));
        assert_eq!(v["node"], json!("web1"));
        assert_eq!(
            v["outbound"][0]["ports"],
            json!([{"first": 5432, "last": 5432}])
        );
        assert_eq!(serde_json::from_value::<MapPolicy>(v).unwrap(), p);
    }

    #[test]
    fn a_policy_without_a_version_is_version_1() {
        let mut v = serde_json::to_value(sample()).unwrap();
        assert!(v.get("version").is_none());
        assert_eq!(
            serde_json::from_value::<MapPolicy>(v.clone()).unwrap(),
            MapPolicy::from(sample())
        );
        v["version"] = json!(1);
        assert_eq!(
            serde_json::from_value::<MapPolicy>(v).unwrap(),
            MapPolicy::from(sample())
        );
    }

    #[test]
    fn an_unknown_version_or_a_bad_body_is_unreadable_not_an_error() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = json!(2);
        let MapPolicy::Unreadable(u) = serde_json::from_value::<MapPolicy>(v).unwrap() else {
            panic!("version 2 read as a policy");
        };
        assert_eq!(u.version, Some(2));
        assert!(u.unreadable.contains("version 2"), "{u}");
        // Written back (a cached map) and read again: the same reason.
        let again = serde_json::to_value(MapPolicy::Unreadable(u.clone())).unwrap();
        assert_eq!(
            serde_json::from_value::<MapPolicy>(again).unwrap(),
            MapPolicy::Unreadable(u)
        );
        for bad in [
            json!({"node": 7}),
            json!([1]),
            json!({"version": "x"}),
            json!(null),
        ] {
            let p = serde_json::from_value::<MapPolicy>(bad.clone()).unwrap();
            assert!(matches!(p, MapPolicy::Unreadable(_)), "{bad} -> {p:?}");
        }
    }
}

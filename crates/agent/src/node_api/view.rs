//! What the node API serves, taken from each applied network map: this
//! node's own entry and its data and sealed secrets (never its peers), so the
//! copy kept for the API stays small whatever the map's size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use weft_proto::netmap::NetworkMap;

/// `GET /v1/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Metadata {
    /// This node's name on the controller.
    pub(crate) name: String,
    /// Its identity key.
    pub(crate) node_key: String,
    /// Its tags, sorted.
    pub(crate) tags: Vec<String>,
    /// Every overlay address of this node, network by network (IPv4 first).
    pub(crate) addresses: Vec<IpAddr>,
    /// The networks it is a member of.
    pub(crate) networks: Vec<NetworkInfo>,
    /// The version of the network map this comes from.
    pub(crate) map_version: u64,
}

/// One network in [`Metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NetworkInfo {
    pub(crate) name: String,
    pub(crate) ipv4: Ipv4Addr,
    pub(crate) ipv6: Option<Ipv6Addr>,
    /// This node's DNS name in the network: `<node>.<network>.<domain>`.
    pub(crate) dns_name: String,
}

/// A data entry (`GET /v1/data/{key}`, and each item of `GET /v1/data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DataItem {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) version: u64,
}

/// A service this node may use (each item of `GET /v1/services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceItem {
    pub(crate) name: String,
    pub(crate) network: String,
    /// `<name>.svc.<network>.<domain>`, answered by the agent's resolver.
    pub(crate) fqdn: String,
    /// The virtual IP (connect to it, or to `fqdn`).
    pub(crate) vip: Ipv4Addr,
    /// `5432/tcp`, ...
    pub(crate) ports: Vec<String>,
    /// The instances this node may reach, with their health.
    pub(crate) instances: Vec<InstanceItem>,
}

/// One instance in [`ServiceItem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct InstanceItem {
    pub(crate) node: String,
    pub(crate) addr: Ipv4Addr,
    /// `healthy`, `unhealthy` or `unknown`.
    pub(crate) health: weft_proto::service::Health,
}

/// A secret as the map carries it: sealed to this node's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedSecret {
    pub(crate) key: String,
    /// Base64 of the sealed box.
    pub(crate) sealed: String,
    pub(crate) version: u64,
}

/// The node API's copy of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) metadata: Metadata,
    /// Sorted by key.
    pub(crate) data: Vec<DataItem>,
    /// Sorted by key.
    pub(crate) secrets: Vec<SealedSecret>,
    /// The services this node may use, sorted by network and name.
    pub(crate) services: Vec<ServiceItem>,
}

impl View {
    pub(crate) fn of(map: &NetworkMap) -> View {
        let networks: Vec<NetworkInfo> = map
            .networks
            .iter()
            .map(|n| NetworkInfo {
                name: n.name.clone(),
                ipv4: n.ipv4,
                ipv6: n.ipv6,
                dns_name: format!("{}.{}.{}", map.node.name, n.name, n.dns_domain),
            })
            .collect();
        let addresses = networks
            .iter()
            .flat_map(|n| [Some(IpAddr::V4(n.ipv4)), n.ipv6.map(IpAddr::V6)])
            .flatten()
            .collect();
        let mut data: Vec<DataItem> = map
            .data
            .iter()
            .map(|d| DataItem {
                key: d.key.clone(),
                value: d.value.clone(),
                version: d.version,
            })
            .collect();
        data.sort_by(|a, b| a.key.cmp(&b.key));
        let mut secrets: Vec<SealedSecret> = map
            .secrets
            .iter()
            .map(|s| SealedSecret {
                key: s.key.clone(),
                sealed: s.sealed.clone(),
                version: s.version,
            })
            .collect();
        secrets.sort_by(|a, b| a.key.cmp(&b.key));
        let mut services: Vec<ServiceItem> = map
            .services
            .iter()
            .map(|s| ServiceItem {
                name: s.name.clone(),
                network: s.network.clone(),
                fqdn: s.fqdn.clone(),
                vip: s.vip,
                ports: s.ports.iter().map(ToString::to_string).collect(),
                instances: s
                    .instances
                    .iter()
                    .map(|i| InstanceItem {
                        node: i.node.clone(),
                        addr: i.addr,
                        health: i.health,
                    })
                    .collect(),
            })
            .collect();
        services.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        View {
            metadata: Metadata {
                name: map.node.name.clone(),
                node_key: map.node.node_key.to_string(),
                tags: map.node.tags.clone(),
                addresses,
                networks,
                map_version: map.version,
            },
            data,
            secrets,
            services,
        }
    }

    pub(crate) fn data(&self, key: &str) -> Option<&DataItem> {
        self.data.iter().find(|d| d.key == key)
    }

    pub(crate) fn secret(&self, key: &str) -> Option<&SealedSecret> {
        self.secrets.iter().find(|s| s.key == key)
    }
}

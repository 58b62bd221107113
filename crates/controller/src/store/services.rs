//! The service registry's rows (migration 0013): each network's service
//! range, the services and their instances. What they mean is
//! [`crate::model`]'s `services` module; instance health is runtime state and
//! never stored.

use std::net::Ipv4Addr;

use weft_proto::net::Ipv4Net;
use weft_proto::service::{HealthCheck, ServicePort};

/// A network's service range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRangeRecord {
    /// The network.
    pub network_id: u64,
    /// The /24 its services' VIPs come from.
    pub prefix: Ipv4Net,
}

/// Who first created a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOrigin {
    /// `weft admin service create`.
    Admin,
    /// A node's advertisement (`weft service advertise`).
    Node,
}

impl ServiceOrigin {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOrigin::Admin => "admin",
            ServiceOrigin::Node => "node",
        }
    }

    /// Parses [`ServiceOrigin::as_str`] text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(ServiceOrigin::Admin),
            "node" => Some(ServiceOrigin::Node),
            _ => None,
        }
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Controller-assigned id.
    pub id: u64,
    /// Its network.
    pub network_id: u64,
    /// Its name (unique in the network).
    pub name: String,
    /// Its virtual IP (from the network's range; unique).
    pub vip: Ipv4Addr,
    /// Its ports, sorted.
    pub ports: Vec<ServicePort>,
    /// How providers check it.
    pub health: HealthCheck,
    /// Who created it.
    pub origin: ServiceOrigin,
    /// The registry version that last changed it.
    pub version: u64,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: u64,
}

/// Where a node's offer of a service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceState {
    /// Advertised, waiting for an admin.
    Pending,
    /// An instance: in maps and in the policy's facts.
    Approved,
    /// Rejected by an admin; advertising again does not bring it back.
    Rejected,
}

impl InstanceState {
    /// The stored and shown text.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Approved => "approved",
            InstanceState::Rejected => "rejected",
        }
    }

    /// Parses [`InstanceState::as_str`] text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(InstanceState::Pending),
            "approved" => Some(InstanceState::Approved),
            "rejected" => Some(InstanceState::Rejected),
            _ => None,
        }
    }
}

/// A node's offer of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The service.
    pub service_id: u64,
    /// The provider node.
    pub node_id: u64,
    /// Pending, approved or rejected.
    pub state: InstanceState,
    /// When the offer was made (or the admin named the node), Unix ms.
    pub created_at_ms: u64,
}

/// What the store holds of the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRows {
    /// The registry's version (0: never changed).
    pub version: u64,
    /// Every network's range.
    pub ranges: Vec<ServiceRangeRecord>,
    /// Every service.
    pub services: Vec<ServiceRecord>,
    /// Every offer.
    pub instances: Vec<InstanceRecord>,
}

/// A change to the registry's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceWrite {
    /// Record a network's range.
    PutRange(ServiceRangeRecord),
    /// Insert or replace a service.
    PutService(ServiceRecord),
    /// Delete a service and its instances.
    DeleteService(u64),
    /// Insert or replace an offer.
    PutInstance(InstanceRecord),
    /// Delete an offer.
    DeleteInstance {
        /// The service.
        service_id: u64,
        /// The node.
        node_id: u64,
    },
    /// Persist the registry's version.
    SetVersion(u64),
}

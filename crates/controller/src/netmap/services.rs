//! Named services in maps: a node's `services` (what it may use) and
//! `provides` (what it serves), computed by the model
//! ([`World::node_service_lists`]); a closed batch leaves in
//! `touched.services` exactly the nodes whose lists changed, and each of them
//! receives both lists ([`MapChange::Services`]).

use weft_proto::netmap::MapChange;

use crate::model::{NodeId, World};

/// The change that brings node `id`'s lists up to date (as the batch left
/// them).
pub(super) fn change(world: &World, id: NodeId) -> MapChange {
    let (services, provides) = world.service_lists(id);
    MapChange::Services { services, provides }
}

#[cfg(test)]
mod tests;

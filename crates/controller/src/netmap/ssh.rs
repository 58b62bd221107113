//! The `ssh_hosts` part of a node's map delta: the whole list (computed by
//! the model when a batch closes; only nodes whose list changed get one).

use weft_proto::netmap::MapChange;

use crate::model::{NodeId, World};

/// `MapChange::SshHosts` with node `id`'s current list.
pub(super) fn change(world: &World, id: NodeId) -> MapChange {
    MapChange::SshHosts {
        hosts: world.node_ssh_hosts(id),
    }
}

#[cfg(test)]
#[path = "ssh_tests.rs"]
mod tests;

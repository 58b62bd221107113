//! The DNS blocklist in deltas: one list for every node, so a change reaches
//! every enabled node. Each recipient of the batch's other deltas gets the
//! change appended to its delta; the others share one delta with only it; a
//! node receiving a snapshot has it there.

use std::collections::BTreeSet;
use std::sync::Arc;

use weft_proto::netmap::MapChange;

use super::{Delta, Outgoing, Payload};
use crate::model::{NodeId, World};

/// Adds the blocklist's current reference to what `out` sends.
pub(super) fn add_change(world: &World, out: &mut Vec<Outgoing>) {
    let change = MapChange::DnsBlocklist {
        blocklist: world.dns_blocklist_ref(),
    };
    let mut covered: BTreeSet<NodeId> = BTreeSet::new();
    for o in out.iter_mut() {
        covered.extend(o.recipients.iter().copied());
        if let Payload::Delta(d) = &mut o.payload {
            Arc::make_mut(d).push(change.clone());
        }
    }
    let rest: Vec<NodeId> = world
        .node_ids()
        .filter(|id| !covered.contains(id))
        .filter(|id| world.node(*id).is_some_and(|n| !n.rec.disabled))
        .collect();
    if !rest.is_empty() {
        out.push(Outgoing {
            recipients: Arc::from(rest),
            payload: Payload::Delta(Arc::new(Delta::own(world.version, vec![change]))),
        });
    }
}

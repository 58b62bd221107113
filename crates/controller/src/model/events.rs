//! Anomaly events and thresholds: a node's events appended to the log
//! ([`RecordEvents`]), and the admin's per-network thresholds
//! ([`SetNetworkAnomaly`]), which reach the members in their maps.

use serde_json::json;
use weft_proto::events::{AnomalyEvent, AnomalyThresholds};

use super::{Batch, NetState, NodeId, World};
use crate::error::ApiError;
use crate::store::{EventRecord, Write};

/// A node uploads events its detector raised.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordEvents {
    /// The node (authenticated).
    pub node: NodeId,
    /// The events, validated.
    pub events: Vec<AnomalyEvent>,
}

/// Admin: replace a network's anomaly thresholds (empty: the defaults).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetNetworkAnomaly {
    /// The network's name.
    pub network: String,
    /// The thresholds.
    pub thresholds: AnomalyThresholds,
}

operation!(RecordEvents => usize, |op, w, batch, _actor, now_ms| {
    w.record_events(batch, op, now_ms)
});

operation!(SetNetworkAnomaly => NetState, |op, w, batch, actor, now_ms| {
    let net = w.set_network_anomaly(batch, &op)?;
    w.audit(
        batch,
        actor,
        "network.anomaly",
        op.network,
        json!({ "thresholds": op.thresholds }),
        now_ms,
    );
    Ok(net)
});

impl World {
    fn record_events(
        &mut self,
        batch: &mut Batch,
        op: RecordEvents,
        now_ms: u64,
    ) -> Result<usize, ApiError> {
        let node = self.node(op.node).ok_or(ApiError::Unauthorized)?;
        let n = op.events.len();
        let records = op
            .events
            .into_iter()
            .map(|event| EventRecord {
                node_id: node.rec.id,
                node_name: node.rec.name.clone(),
                node_key: node.rec.node_key,
                received_at_ms: now_ms,
                event,
            })
            .collect();
        batch.writes.push(Write::Events(records));
        Ok(n)
    }

    fn set_network_anomaly(
        &mut self,
        batch: &mut Batch,
        op: &SetNetworkAnomaly,
    ) -> Result<NetState, ApiError> {
        op.thresholds
            .validate()
            .map_err(|e| ApiError::invalid("invalid_thresholds", e))?;
        let id = self.networks.id_by_name(&op.network).ok_or_else(|| {
            ApiError::not_found(
                "network_not_found",
                format!("no network named {:?}", op.network),
            )
        })?;
        let net = self
            .networks
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("network_not_found", op.network.clone()))?;
        let wanted = Some(op.thresholds).filter(|t| !t.is_empty());
        if net.rec.anomaly != wanted {
            net.rec.anomaly = wanted;
            batch.writes.push(Write::PutNetwork(net.rec.clone()));
            // A network-wide setting: its members get a fresh map.
            batch.touched.resync.extend(net.members.iter().copied());
        }
        Ok(net.clone())
    }
}

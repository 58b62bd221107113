//! The supervisor's side of the built-in task actions (`crate::actions`): it
//! answers their [`Request`]s in its loop, in order with everything else it
//! does, because they read or change what it owns (status, the reconciler,
//! the data plane, the resolver, the identity).

use std::sync::Arc;

use weft_identity::Identity;
use weft_tunnel::Node;

use super::Agent;
use crate::actions::{Reconciled, Request};
use crate::{clock, system};

/// A tunnel core for `identity`, its randomness from `seed`. WireGuard's
/// handshake timestamps follow the wall clock, so a restarted agent's (or a
/// restarted core's) handshakes are newer than the previous one's.
pub(super) fn new_node(identity: &Identity, seed: [u8; 32]) -> Node {
    Node::with_wall_clock(
        identity.node_key(),
        *identity.x25519_secret(),
        seed,
        clock::now(),
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(clock::unix_ms()),
    )
}

fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    seed
}

impl Agent {
    /// Answers one action request.
    pub(super) async fn serve_action(&mut self, req: Request) {
        match req {
            Request::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            Request::Reconcile(reply) => {
                self.system.trigger(clock::now());
                let _ = reply.send(self.reconcile_now().await);
            }
            Request::RestartDataplane(reply) => {
                let _ = reply.send(self.restart_dataplane().await);
            }
            Request::FlushDns(reply) => {
                let _ = reply.send(self.dns.flush_cache());
            }
            Request::KeyContext(reply) => {
                let _ = reply.send((self.credential.clone(), self.identity.clone()));
            }
            Request::InstallIdentity(identity, reply) => {
                let _ = reply.send(self.install_identity(*identity).await);
            }
            Request::FirewallAllow(rule, reply) => {
                let _ = reply.send(self.firewall_allow(*rule).await);
            }
            Request::FirewallRevoke(id, reply) => {
                let _ = reply.send(self.firewall_revoke(&id).await);
            }
        }
    }

    /// A reconciler pass now (`reconcile`), reported.
    async fn reconcile_now(&mut self) -> Reconciled {
        match self.reconcile().await {
            Some(report) => Reconciled {
                ran: true,
                applied: report.applied.iter().map(ToString::to_string).collect(),
                failed: report
                    .failed
                    .iter()
                    .map(|(a, e)| format!("{a}: {e}"))
                    .collect(),
                converged: report.converged,
            },
            None => Reconciled::default(),
        }
    }

    /// `restart-dataplane`: a fresh tunnel core (every session renegotiated,
    /// the configuration re-applied) and relay link; TUNs and socket stay.
    async fn restart_dataplane(&mut self) -> Result<String, String> {
        let node = new_node(&self.identity, fresh_seed());
        self.dp
            .replace_node(node, &self.identity)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let peers = self.derived.as_ref().map_or(0, |d| d.node.peers.len());
        tracing::info!(peers, "data plane restarted (task action)");
        Ok(format!(
            "data plane restarted: a fresh tunnel core with the current map ({peers} peer{}; \
             sessions are negotiated again){}\n",
            if peers == 1 { "" } else { "s" },
            match self.dp.relay_connected() {
                Some((url, _)) => format!(", relay {url} reconnecting"),
                None => String::new(),
            }
        ))
    }

    /// The controller has the new key: make it this node's (`identity.next`
    /// renamed over `identity.key`, the data plane and relay link switched).
    async fn install_identity(&mut self, identity: Identity) -> Result<(), String> {
        let state = self.state.clone();
        system::off_runtime((), move |()| state.promote_next_identity())
            .await
            .1
            .map_err(|e| format!("{e:#}"))?;
        self.identity = Arc::new(identity);
        // The node API opens secrets with the node's X25519 key: the new one
        // from now on (the map the controller sends next carries the new key).
        if let Some(map) = &self.map {
            self.node_api.set_map(map, &self.identity);
        }
        let node = new_node(&self.identity, fresh_seed());
        self.dp
            .replace_node(node, &self.identity)
            .await
            .map_err(|e| format!("{e:#}"))
    }
}

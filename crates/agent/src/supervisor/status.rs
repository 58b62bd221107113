//! `weft status`: the supervisor's state, the data plane's peers and the
//! telemetry's figures assembled into one [`AgentStatus`].

use weft_proto::local::{
    AgentStatus, CandidateStatus, ControllerStatus, FailureStatus, NetworkStatus, PeerStatus,
    RelayStatus,
};
use weft_tunnel::path::PathKind;

use super::Agent;
use crate::{clock, netmap};

impl Agent {
    /// `weft status`: what this agent is, its networks and peers, the
    /// controller link, and every failure it knows of.
    pub(super) async fn status(&self) -> AgentStatus {
        let (peers, drops) = self.dp.status().await.unwrap_or_default();
        let link = self.link_state.borrow().clone();
        let derived = self.derived.as_ref();
        let networks = derived
            .map(|d| {
                d.interfaces
                    .iter()
                    .map(|i| NetworkStatus {
                        name: i.network.clone(),
                        interface: i.ifname.clone(),
                        addresses: i.addresses.iter().map(|(a, _)| a.to_string()).collect(),
                        cidr: i.cidr.clone(),
                        dns_domain: i.dns_domain.clone(),
                        routes: i.subnet_routes.clone(),
                        serves: i.serves.iter().map(|(a, p)| format!("{a}/{p}")).collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now_unix_ms = clock::unix_ms();
        let liveness = |p: &weft_tunnel::PeerStatus| {
            let on_map = self.map.as_ref().and_then(|m| {
                m.networks
                    .iter()
                    .flat_map(|n| &n.peers)
                    .find(|mp| mp.node_key == p.key)
            });
            netmap::peer_liveness(
                p.last_heard,
                on_map.is_some_and(|mp| mp.online),
                on_map.and_then(|mp| mp.last_seen_ms),
                now_unix_ms,
            )
        };
        let peers = peers
            .into_iter()
            .map(|p| (liveness(&p), p))
            .map(|((online, last_seen_secs), p)| PeerStatus {
                name: p.name,
                node_key: p.key,
                networks: derived
                    .and_then(|d| d.peer_networks.get(&p.key).cloned())
                    .unwrap_or_default(),
                addresses: p.addresses.iter().map(|(_, a)| a.to_string()).collect(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                path: match p.path {
                    PathKind::Direct(a) => format!("direct {a}"),
                    PathKind::Relay => "relay".into(),
                    PathKind::None => "none".into(),
                },
                path_age_secs: p.path_age.map(|d| d.as_secs()),
                candidates: p
                    .candidates
                    .iter()
                    .map(|(a, c)| CandidateStatus {
                        addr: a.to_string(),
                        pings: c.pings,
                        pongs: c.pongs,
                        rtt_us: c.last_rtt.map(|d| d.as_micros() as u64),
                        learned: c.learned,
                    })
                    .collect(),
                last_handshake_secs: p.since_handshake.map(|d| d.as_secs()),
                online,
                last_seen_secs,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                drops: p
                    .drops
                    .nonzero()
                    .map(|(r, n)| (r.as_str().to_owned(), n))
                    .collect(),
            })
            .collect();
        AgentStatus {
            node_key: self.identity.node_key(),
            name: self.map.as_ref().map(|m| m.node.name.clone()),
            state: if self.credential.is_none() {
                "not_joined".into()
            } else if self.down {
                "down".into()
            } else {
                "up".into()
            },
            controller: self.credential.as_ref().map(|c| ControllerStatus {
                url: link
                    .current
                    .as_ref()
                    .map_or_else(|| c.controller_list(), |cur| cur.url.clone()),
                urls: c.controllers.clone(),
                address: link
                    .current
                    .as_ref()
                    .and_then(|cur| cur.address)
                    .map(|a| a.to_string()),
                snapshots: link.snapshots,
                deltas: link.deltas,
                failovers: link.current.as_ref().map_or(0, |cur| cur.moves),
                connected: link.connected,
                map_version: self.map.as_ref().map(|m| m.version),
                from_cache: self.from_cache,
                last_error: link.last_error,
                last_error_permanent: link.last_error_permanent,
            }),
            networks,
            peers,
            drops: drops
                .nonzero()
                .map(|(r, n)| (r.as_str().to_owned(), n))
                .collect(),
            reconcile: self.reconcile_status.clone(),
            listen_port: self.dp.port(),
            relay: self
                .dp
                .relay_connected()
                .map(|(url, connected)| RelayStatus { url, connected }),
            relays: self
                .map
                .as_ref()
                .map(|m| m.relays.clone())
                .unwrap_or_default(),
            reflexive: self
                .dp
                .reflexive()
                .borrow()
                .iter()
                .map(ToString::to_string)
                .collect(),
            forwarding: Some(self.telemetry.forwarding()),
            tasks: Some(self.tasks.status()),
            host_firewall: self.hostfw.status(now_unix_ms),
            underlay: Some(self.linkmon.status()),
            services: Some(self.local_services()).filter(|s| *s != Default::default()),
            ssh: self.ssh.status(),
            failures: {
                let mut f = [
                    self.failures.list(),
                    self.telemetry.failures(),
                    self.tasks.failures(),
                    self.integrity.failures(),
                    self.dns_blocklist.failures(),
                    self.workloads.failures(),
                    self.services.failures(),
                    self.consumers.failures(),
                ]
                .concat();
                f.extend(self.linkmon.failure());
                f.extend(self.ssh.failures());
                if let Some((error, since_unix_ms)) = link.routes_refused.clone() {
                    f.push(FailureStatus {
                        area: "routes".into(),
                        what: self
                            .credential
                            .as_ref()
                            .map(|c| c.advertise_routes.join(","))
                            .unwrap_or_default(),
                        error,
                        since_unix_ms,
                    });
                }
                f
            },
        }
    }
}

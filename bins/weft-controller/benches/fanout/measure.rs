//! What the bench measures from the agents' reports: streams (re)opened,
//! where, and how long until every stream saw a change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weft_api_client::Client;
use weft_proto::api::SetPolicyRequest;

use crate::agent::{Report, Shared};
use crate::fleet::Fleet;

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Streams opened after a moment.
pub(crate) struct Opened {
    /// Latencies from the start, sorted.
    pub(crate) lat: Vec<Duration>,
    pub(crate) snapshots: usize,
    pub(crate) refused: usize,
}

/// The agents' reports, and on which replica each agent's stream last
/// opened.
pub(crate) struct Watch {
    pub(crate) rx: mpsc::UnboundedReceiver<Report>,
    pub(crate) shared: Arc<Shared>,
    /// Replica of each agent's last opened stream.
    pub(crate) on: Vec<Option<usize>>,
}

impl Watch {
    fn note(&mut self, r: &Report) {
        if let Report::Opened { agent, replica, .. } = r {
            self.on[*agent] = Some(*replica);
        }
    }

    /// Streams per replica, as the agents last saw them.
    pub(crate) fn spread(&self, replicas: usize) -> String {
        let mut count = vec![0usize; replicas];
        for r in self.on.iter().flatten() {
            count[*r] += 1;
        }
        count
            .iter()
            .enumerate()
            .map(|(i, c)| format!("replica {i}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Waits until each agent in `agents` reported a stream opened at or
    /// after `since` (or `limit` passed).
    pub(crate) async fn opened(
        &mut self,
        agents: &[usize],
        since: Instant,
        limit: Duration,
    ) -> Opened {
        let mut wanted = vec![false; self.on.len()];
        for a in agents {
            wanted[*a] = true;
        }
        let mut o = Opened {
            lat: Vec::with_capacity(agents.len()),
            snapshots: 0,
            refused: 0,
        };
        let deadline = Instant::now() + limit;
        while o.lat.len() < agents.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(r)) = tokio::time::timeout(left, self.rx.recv()).await else {
                break;
            };
            self.note(&r);
            match r {
                Report::Opened {
                    agent,
                    snapshot,
                    at,
                    ..
                } if at >= since && wanted[agent] => {
                    wanted[agent] = false;
                    o.snapshots += usize::from(snapshot);
                    o.lat.push(at - since);
                }
                Report::Refused { status } => {
                    if o.refused == 0 {
                        println!("first refusal of a stream open: HTTP {status}");
                    }
                    o.refused += 1;
                }
                _ => {}
            }
        }
        o.lat.sort();
        o
    }

    /// Waits until `n` deltas containing `marker` arrived (60 s at most);
    /// returns the latencies from `t0`, sorted.
    pub(crate) async fn collect(&mut self, marker: &[u8], n: usize, t0: Instant) -> Vec<Duration> {
        let mut lat = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(60);
        while lat.len() < n && Instant::now() < deadline {
            let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await
            else {
                break;
            };
            self.note(&r);
            if let Report::Hit { marker: m, at } = r
                && &*m == marker
            {
                lat.push(at - t0);
            }
        }
        lat.sort();
        lat
    }

    /// Sets the text a delta must contain to count.
    pub(crate) fn arm(&self, m: &[u8]) {
        *self.shared.armed.write().unwrap() = Some(Arc::from(m));
    }

    /// Adds a rule among all members named `marker` through `admin` and
    /// measures until `n` streams saw it.
    pub(crate) async fn policy_edit(
        &mut self,
        admin: &Client,
        fleet: &Fleet,
        n: usize,
        marker: &str,
    ) {
        self.arm(marker.as_bytes());
        let t = Instant::now();
        let mut text = match admin.get_policy().await {
            Ok(p) => p.text,
            Err(e) => {
                println!(
                    "policy edit {marker}: reading the policy FAILED after {:.1} s: {e}; not measured",
                    t.elapsed().as_secs_f64()
                );
                return;
            }
        };
        text.push_str(&format!(
            "\n[[rule]]\nname = \"{marker}\"\naction = \"allow\"\nfrom = \"tag:bench\"\nto = \"tag:bench\"\nproto = \"tcp\"\nports = [443]\n"
        ));
        let (_, _, cpu_before) = fleet.usage();
        let t = Instant::now();
        let set = admin
            .set_policy(&SetPolicyRequest {
                api_version: None,
                text,
                expect_version: None,
            })
            .await;
        if let Err(e) = set {
            println!(
                "policy edit {marker} FAILED after {:.1} s: {e}; not measured",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        let answered = t.elapsed();
        let edit = self.collect(marker.as_bytes(), n, t).await;
        report(&format!("policy edit {marker}"), &edit, n);
        let (_, _, cpu_after) = fleet.usage();
        println!(
            "policy edit: answered after {:.1} ms; controller CPU {:.2} s (every replica recompiles every node and fans out to its streams)",
            ms(answered),
            cpu_after - cpu_before
        );
    }
}

pub(crate) fn report(name: &str, lat: &[Duration], n: usize) {
    println!(
        "fan-out ({name}): {}/{} streams saw it; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        n,
        ms(percentile(lat, 0.50)),
        ms(percentile(lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

/// Waits (3 s at least, 300 s at most) until the replicas are idle (under
/// 5 % of a core over a second, together) and says how long that took.
pub(crate) async fn settle(fleet: &Fleet, what: &str) {
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cpu = fleet.usage().2;
    while t.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = fleet.usage().2;
        if now - cpu < 0.05 {
            break;
        }
        cpu = now;
    }
    println!(
        "controller idle {:.1} s after {what} (CPU {cpu:.2} s so far)",
        t.elapsed().as_secs_f64()
    );
}

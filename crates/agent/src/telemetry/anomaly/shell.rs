//! The detector's shell: a task that reads the data plane once per window
//! (per-peer bytes, drops, refused attempts) and the resolver's count of
//! blocked lookups, hands each controller report's
//! round trip to the detector, keeps the events ([`EventLog`]) and uploads
//! them to the controller while it answers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use weft_api_client::Client;
use weft_dns::DnsStats;
use weft_proto::events::{AnomalyEvent, AnomalyThresholds, NodeEventsRequest};
use weft_proto::local::{FailureStatus, LocalResponse};
use weft_proto::netmap::NetworkMap;

use super::detector::{Detector, PeerSample, Settings, Window};
use super::log::EventLog;
use crate::clock;
use crate::ctl::{self, LinkState, TrustSettings};
use crate::dataplane::Probe;
use crate::state::Credential;
use crate::supervisor::AgentConfig;
use crate::telemetry::metrics::AgentMetrics;

/// Events per upload: well under the controller's 64 KiB body limit.
const UPLOAD_BATCH: usize = 16;
/// Uploads per window at most (a backlog drains at 64 events per window).
const UPLOADS_PER_WINDOW: usize = 4;

/// What the supervisor tells the task.
#[derive(Clone, Default)]
struct Ctx {
    thresholds: AnomalyThresholds,
    name: Option<String>,
    link: Option<(Credential, watch::Receiver<LinkState>)>,
}

/// The running detector, as the supervisor holds it.
pub(crate) struct Anomaly {
    ctx: watch::Sender<Ctx>,
    log: Arc<Mutex<EventLog>>,
    metrics: Arc<AgentMetrics>,
    task: JoinHandle<()>,
}

impl Anomaly {
    /// Starts the task over the data plane's `probe`; every event is
    /// counted in `metrics` (`weft_agent_anomaly_events_total{kind}`) and
    /// kept for the controller in the state directory's outbox.
    pub(crate) fn start(
        cfg: &AgentConfig,
        probe: Probe,
        metrics: Arc<AgentMetrics>,
        dns: DnsStats,
    ) -> Self {
        let (ctx, rx) = watch::channel(Ctx::default());
        let log = Arc::new(Mutex::new(EventLog::open(&cfg.state_dir, clock::unix_ms())));
        let task = tokio::spawn(run(
            probe,
            dns,
            rx,
            Recorder {
                log: log.clone(),
                metrics: metrics.clone(),
            },
        ));
        Self {
            ctx,
            log,
            metrics,
            task,
        }
    }

    /// Keeps an event the agent raised outside the detector (a host firewall
    /// rollback): logged, counted and uploaded like the detector's.
    pub(crate) fn raise(&self, event: AnomalyEvent) {
        Recorder {
            log: self.log.clone(),
            metrics: self.metrics.clone(),
        }
        .record(vec![event]);
    }

    /// A new map: this node's name and its networks' thresholds (field by
    /// field the most sensitive any network sets; defaults for the rest).
    pub(crate) fn set_map(&self, map: &NetworkMap) {
        let thresholds = map
            .networks
            .iter()
            .filter_map(|n| n.anomaly)
            .fold(AnomalyThresholds::default(), |a, b| a.most_sensitive(&b));
        let name = Some(map.node.name.clone());
        self.ctx.send_if_modified(|c| {
            let changed = c.thresholds != thresholds || c.name != name;
            c.thresholds = thresholds;
            c.name = name;
            changed
        });
    }

    /// The controller link to upload through and to time reports on: the
    /// credential and the link's state, or `None` (not joined, or down). A
    /// link whose task ends is also noticed by itself: its state channel
    /// closes.
    pub(crate) fn set_link(&self, link: Option<(Credential, watch::Receiver<LinkState>)>) {
        self.ctx.send_modify(|c| c.link = link);
    }

    /// For `weft status`: a damaged events outbox moved aside, an outbox
    /// that cannot be read or written (area `telemetry`).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures()
    }

    /// `weft events`.
    pub(crate) fn local(&self) -> LocalResponse {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        LocalResponse::Events {
            events: log.recent(),
            pending_upload: log.pending() as u64,
            dropped: log.dropped(),
        }
    }
}

impl Drop for Anomaly {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The link as the task uses it.
struct Uplink {
    client: Option<Client>,
    state: watch::Receiver<LinkState>,
    /// Reports timed so far (the detector judges each new one).
    reports: u64,
}

/// Where the task puts events.
struct Recorder {
    log: Arc<Mutex<EventLog>>,
    metrics: Arc<AgentMetrics>,
}

impl Recorder {
    /// Keeps `events`, counts them and logs each (a warning: worth an
    /// operator's look).
    fn record(&self, events: Vec<AnomalyEvent>) {
        if events.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        for e in events {
            tracing::warn!(kind = %e.kind, peer = ?e.peer, "anomaly: {}", e.summary);
            self.metrics.anomaly(e.kind.as_str());
            log.push(e);
        }
    }
}

async fn run(probe: Probe, dns: DnsStats, mut ctx: watch::Receiver<Ctx>, rec: Recorder) {
    let mut det = Detector::new(Settings::default());
    let mut tick = interval(det.settings().window);
    let mut uplink: Option<Uplink> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(status) = probe.status().await else {
                    // The I/O thread is gone: the supervisor exits soon.
                    return;
                };
                let refusals = probe.take_refusals().await.unwrap_or_default();
                let peers: Vec<PeerSample> = status
                    .peers
                    .iter()
                    .map(|p| PeerSample {
                        key: p.key,
                        name: p.name.clone(),
                        addresses: p
                            .addresses
                            .iter()
                            .map(|(_, a)| *a)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        tx_bytes: p.tx_bytes,
                    })
                    .collect();
                let events = det.window(&Window {
                    now: clock::now(),
                    unix_ms: clock::unix_ms(),
                    peers: &peers,
                    drops: &status.drops,
                    refusals: &refusals,
                    dns_blocked: dns.snapshot().blocked,
                });
                rec.record(events);
                if let Some(u) = uplink.as_ref().and_then(|u| u.client.as_ref()) {
                    upload(u, &rec.log).await;
                }
            }
            changed = ctx.changed() => {
                if changed.is_err() {
                    return;
                }
                let c = ctx.borrow_and_update().clone();
                let settings = Settings::from_thresholds(&c.thresholds);
                if settings.window != det.settings().window {
                    tick = interval(settings.window);
                }
                det.set_settings(settings);
                if let Some(name) = &c.name {
                    det.set_name(name);
                }
                uplink = c.link.map(|(cred, state)| {
                    let reports = state.borrow().report_rtt.map_or(0, |r| r.0);
                    Uplink {
                        client: uplink_client(&cred),
                        reports,
                        state,
                    }
                });
            }
            Some(rtt) = report(&mut uplink) => {
                if let Some(e) = det.report_rtt(clock::now(), clock::unix_ms(), rtt) {
                    rec.record(vec![e]);
                }
            }
        }
    }
}

/// Waits for the next timed report of the link (never, without one; a link
/// whose task ended is forgotten).
async fn report(uplink: &mut Option<Uplink>) -> Option<Duration> {
    let Some(u) = uplink.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        if u.state.changed().await.is_err() {
            *uplink = None;
            return None;
        }
        let last = u.state.borrow_and_update().report_rtt;
        if let Some((n, rtt)) = last
            && n != u.reports
        {
            u.reports = n;
            return Some(rtt);
        }
    }
}

fn interval(every: Duration) -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + every;
    let mut t = tokio::time::interval_at(start, every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

fn uplink_client(cred: &Credential) -> Option<Client> {
    let trust = TrustSettings {
        ca_file: cred.ca_file.clone(),
        pin_sha256: cred.pin_sha256.clone(),
        allow_insecure_http: cred.allow_insecure_http,
    };
    ctl::client(&cred.controller_list(), &trust, Some(&cred.credential))
        .inspect_err(|e| tracing::warn!("anomaly events cannot be uploaded: {e:#}"))
        .ok()
}

/// Sends the waiting events, oldest first, a batch at a time. A transport
/// failure keeps them for the next window; a refusal retrying cannot cure
/// (4xx) drops the batch, counted, so one bad event does not block the rest.
async fn upload(c: &Client, log: &Mutex<EventLog>) {
    for _ in 0..UPLOADS_PER_WINDOW {
        let batch = log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_upload(UPLOAD_BATCH);
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let req = NodeEventsRequest {
            api_version: Some(weft_proto::api::API_VERSION),
            events: batch,
        };
        let result = c.upload_events(&req).await;
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => log.uploaded(n, false),
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, events = n, "the controller refused anomaly events; dropped");
                log.uploaded(n, true);
            }
            Err(e) => {
                tracing::debug!(error = %e, pending = log.pending(), "uploading anomaly events failed; will retry");
                return;
            }
        }
    }
}

//! Service consumers besides the VIP (`weft service listen|intercept`): the
//! configured consumers ([`store`], `STATE_DIR/service-consumers.json`), each
//! resolved against the map's services; a TCP listener per `listen` consumer
//! and one `IP_TRANSPARENT` listener with its nft table for the `intercept`
//! ones ([`tproxy`]); every accepted stream carried to a usable instance over
//! the overlay ([`carry`]). TCP only.
//!
//! The supervisor holds one [`Consumers`]: [`Consumers::start`] at boot,
//! [`Consumers::on_map`] on every map, [`Consumers::consume`] /
//! [`Consumers::unconsume`] for the local API, [`Consumers::teardown`] on
//! `weft down` and shutdown, [`Consumers::statuses`] and
//! [`Consumers::failures`] for `weft service list` and `weft status`.

mod carry;
mod store;
mod tproxy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::task::JoinHandle;
use weft_proto::local::{FailureStatus, LocalResponse};
use weft_proto::netmap::NetworkMap;
use weft_proto::service::{ConsumeMode, Consumer, ConsumerStatus, ServiceView};

use crate::failures::Failures;
use crate::{api, clock};
use carry::Entry;
use store::{Target, label};

/// The failures' area in `weft status`.
const AREA: &str = "consume";

/// One configured consumer's live state.
#[derive(Debug, Default)]
struct Slot {
    entry: Arc<Entry>,
    /// A `listen` consumer's accept loop.
    listener: Option<JoinHandle<()>>,
    /// Why it is not active (`None` with a target: active).
    error: Option<String>,
}

impl Slot {
    fn stop(&mut self) {
        if let Some(t) = self.listener.take() {
            t.abort();
        }
        self.entry.stop();
        self.entry.set_target(None);
    }
}

/// The interception machinery, shared by every `intercept` consumer.
#[derive(Debug, Default)]
struct Intercept {
    /// The transparent listener's accept loop and its port.
    listener: Option<(JoinHandle<()>, u16)>,
    /// Original destination → consumer, read by the accept loop.
    routes: Arc<RwLock<BTreeMap<SocketAddrV4, Arc<Entry>>>>,
    /// The originals the installed table holds (`None`: nothing installed).
    installed: Option<BTreeSet<SocketAddrV4>>,
    /// Why interception is not in force (bind or nft failure).
    error: Option<String>,
}

/// What `weft service list` shows of the consumers.
#[derive(Debug, Default)]
pub(crate) struct ConsumerStatuses {
    /// By the service they reach: (network, name).
    pub(crate) by_service: BTreeMap<(String, String), Vec<ConsumerStatus>>,
    /// Those whose service the map does not list.
    pub(crate) orphans: Vec<ConsumerStatus>,
}

/// The node's service consumers.
#[derive(Debug)]
pub(crate) struct Consumers {
    dir: PathBuf,
    /// The configured consumers; `Err`: the file is damaged (why, what to do).
    config: Result<Vec<Consumer>, String>,
    /// The last map's services (`None`: no map, or after `weft down`).
    services: Option<Vec<ServiceView>>,
    slots: BTreeMap<Consumer, Slot>,
    intercept: Intercept,
    failures: Failures,
}

impl Consumers {
    /// Loads the configured consumers and removes what an earlier run may
    /// have left of interception. Nothing runs before the first map.
    pub(crate) async fn start(state_dir: &std::path::Path) -> Consumers {
        let dir = state_dir.to_path_buf();
        let config = store::load(&dir);
        if let Err(e) = &config {
            tracing::error!("{e}");
        }
        if let Err(e) = off_runtime(tproxy::remove).await {
            tracing::warn!(error = %e, "removing leftover interception state failed");
        }
        let mut c = Consumers {
            dir,
            config,
            services: None,
            slots: BTreeMap::new(),
            intercept: Intercept::default(),
            failures: Failures::default(),
        };
        c.note();
        c
    }

    /// A new map: every consumer follows its service (started, moved to the
    /// new instance list, or stopped with the reason).
    pub(crate) async fn on_map(&mut self, map: &NetworkMap) {
        self.services = Some(map.services.clone());
        self.sync().await;
    }

    /// `weft down` and shutdown: every listener stopped, every stream ended,
    /// interception removed. The configuration stays; the next map starts it
    /// again.
    pub(crate) async fn teardown(&mut self) {
        self.services = None;
        for slot in self.slots.values_mut() {
            slot.stop();
        }
        self.slots.clear();
        self.stop_intercept().await;
        self.intercept.error = None;
        self.note();
    }

    /// Tries again what failed for a reason that may pass (an address in
    /// use, nft refusing); called on the supervisor's 2 s tick.
    pub(crate) async fn retry(&mut self) {
        let retriable = self.intercept.error.is_some()
            || self
                .slots
                .values()
                .any(|s| s.error.is_some() && s.entry.target().is_some());
        if retriable && self.services.is_some() {
            self.sync().await;
        }
    }

    /// `weft service listen|intercept`: adds `c`, started at once. Refused
    /// (and nothing kept) when it cannot run now.
    pub(crate) async fn consume(&mut self, c: Consumer) -> LocalResponse {
        let configured = match &self.config {
            Ok(cs) => cs.clone(),
            Err(e) => return api::error("state", e),
        };
        if let Err(e) = store::check(&c) {
            return api::error("bad_request", &e);
        }
        let Some(services) = &self.services else {
            return api::error(
                "no_map",
                "this node has no network map in force (not joined, down, or not connected yet): \
                 see weft status",
            );
        };
        let target = match store::resolve(&c, services) {
            Ok(t) => t,
            Err(e) => return api::error("not_found", &e),
        };
        if configured.contains(&c) {
            return LocalResponse::Ok {
                status: None,
                message: format!("already configured: {}", self.describe(&c, &target)),
            };
        }
        if let Some(other) = configured.iter().find(|o| store::same_place(o, &c)) {
            return api::error(
                "conflict",
                &format!(
                    "{} is already configured on that address: remove it first (--remove)",
                    label(other)
                ),
            );
        }
        if configured.len() >= store::MAX_CONSUMERS {
            return api::error(
                "too_many",
                &format!(
                    "{} consumers are configured, at most {}",
                    configured.len(),
                    store::MAX_CONSUMERS
                ),
            );
        }
        let mut next = configured.clone();
        next.push(c.clone());
        next.sort();
        self.config = Ok(next.clone());
        self.sync().await;
        let failed = self.error_of(&c);
        let saved = match &failed {
            None => self.save(next).await,
            Some(_) => Ok(()),
        };
        if let Some(why) = failed.or(saved.err()) {
            self.config = Ok(configured);
            self.sync().await;
            return api::error("consume_failed", &format!("{}: {why}", label(&c)));
        }
        LocalResponse::Ok {
            status: None,
            message: self.describe(&c, &target),
        }
    }

    /// `weft service listen|intercept --remove`: stops and forgets the
    /// consumer of that service on that address.
    pub(crate) async fn unconsume(&mut self, c: Consumer) -> LocalResponse {
        let configured = match &self.config {
            Ok(cs) => cs.clone(),
            Err(e) => return api::error("state", e),
        };
        let Some(found) = configured
            .iter()
            .find(|o| o.service == c.service && store::same_place(o, &c))
            .cloned()
        else {
            return api::error(
                "not_found",
                &format!(
                    "no consumer {} is configured (weft service list shows them)",
                    label(&c)
                ),
            );
        };
        let next: Vec<Consumer> = configured.into_iter().filter(|o| *o != found).collect();
        if let Err(e) = self.save(next.clone()).await {
            return api::error("state", &e);
        }
        self.config = Ok(next);
        self.sync().await;
        LocalResponse::Ok {
            status: None,
            message: format!("removed {}", label(&found)),
        }
    }

    /// Every configured consumer with its state, by the service it reaches.
    pub(crate) fn statuses(&self) -> ConsumerStatuses {
        let mut out = ConsumerStatuses::default();
        for c in self.config.as_deref().unwrap_or_default() {
            let slot = self.slots.get(c);
            let target = slot.and_then(|s| s.entry.target());
            let error = self.error_of(c);
            let status = ConsumerStatus {
                consumer: c.clone(),
                active: error.is_none(),
                streams_total: slot.map_or(0, |s| s.entry.streams_total.load(Ordering::Relaxed)),
                streams_open: slot.map_or(0, |s| s.entry.streams_open.load(Ordering::Relaxed)),
                bytes: slot.map_or(0, |s| s.entry.bytes.load(Ordering::Relaxed)),
                error,
            };
            match target {
                Some(t) => out
                    .by_service
                    .entry((t.view.network, t.view.name))
                    .or_default()
                    .push(status),
                None => out.orphans.push(status),
            }
        }
        out
    }

    /// For `weft status`: a damaged file, and every consumer that does not
    /// run (area `consume`).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.failures.list()
    }

    /// Why `c` does not run (`None`: it runs; also `None` while there is no
    /// map, when nothing runs by design).
    fn error_of(&self, c: &Consumer) -> Option<String> {
        self.services.as_ref()?;
        let slot = self.slots.get(c)?;
        if let Some(e) = &slot.error {
            return Some(e.clone());
        }
        match c.mode {
            ConsumeMode::Intercept { .. } => self.intercept.error.clone(),
            ConsumeMode::Listen { .. } => None,
        }
    }

    fn describe(&self, c: &Consumer, t: &Target) -> String {
        let how = match &c.mode {
            ConsumeMode::Listen { listen } => format!("listening on {listen}"),
            ConsumeMode::Intercept { original } => format!("intercepting TCP to {original}"),
        };
        format!(
            "{how} for service {} (network {}) port {}: {} instance(s) now",
            t.view.name,
            t.view.network,
            t.port,
            t.view.instances.len()
        )
    }

    async fn save(&self, consumers: Vec<Consumer>) -> Result<(), String> {
        let dir = self.dir.clone();
        off_runtime(move || store::save(&dir, &consumers)).await
    }

    /// Makes the running state follow the configuration and the map.
    async fn sync(&mut self) {
        let configured = self.config.clone().unwrap_or_default();
        // Consumers no longer configured stop.
        self.slots.retain(|c, slot| {
            let keep = configured.contains(c);
            if !keep {
                slot.stop();
            }
            keep
        });
        let Some(services) = self.services.clone() else {
            self.note();
            return;
        };
        let mut originals = BTreeMap::new();
        for c in &configured {
            let slot = self.slots.entry(c.clone()).or_default();
            match store::resolve(c, &services) {
                Err(e) => {
                    slot.stop();
                    slot.error = Some(e);
                }
                Ok(target) => {
                    slot.entry.set_target(Some(target));
                    slot.entry.restart();
                    slot.error = None;
                    match &c.mode {
                        ConsumeMode::Listen { listen } => {
                            if slot.listener.is_none() {
                                match tokio::net::TcpListener::bind(listen).await {
                                    Ok(l) => {
                                        tracing::info!(consumer = %label(c), "service listener started");
                                        slot.listener =
                                            Some(tokio::spawn(carry::serve(l, slot.entry.clone())));
                                    }
                                    Err(e) => {
                                        // Kept with its target: retried on the tick.
                                        slot.error =
                                            Some(format!("cannot listen on {listen}: {e}"));
                                    }
                                }
                            }
                        }
                        ConsumeMode::Intercept { original } => {
                            if let SocketAddr::V4(o) = original {
                                originals.insert(*o, slot.entry.clone());
                            }
                        }
                    }
                }
            }
        }
        self.sync_intercept(originals).await;
        self.note();
    }

    /// Interception for `originals`: the listener and table while any is
    /// wanted, nothing otherwise.
    async fn sync_intercept(&mut self, originals: BTreeMap<SocketAddrV4, Arc<Entry>>) {
        let wanted: BTreeSet<SocketAddrV4> = originals.keys().copied().collect();
        if let Ok(mut routes) = self.intercept.routes.write() {
            *routes = originals;
        }
        if wanted.is_empty() {
            self.stop_intercept().await;
            self.intercept.error = None;
            return;
        }
        let port = match &self.intercept.listener {
            Some((_, port)) => *port,
            None => match tproxy::transparent_listener() {
                Ok(l) => {
                    let port = l.local_addr().map_or(0, |a| a.port());
                    let routes = self.intercept.routes.clone();
                    let task = tokio::spawn(carry::serve_transparent(l, move |to| match to {
                        SocketAddr::V4(to) => routes.read().ok()?.get(&to).cloned(),
                        SocketAddr::V6(_) => None,
                    }));
                    self.intercept.listener = Some((task, port));
                    port
                }
                Err(e) => {
                    self.intercept.error = Some(e);
                    return;
                }
            },
        };
        if self.intercept.installed.as_ref() == Some(&wanted) {
            return;
        }
        let routing = self.intercept.installed.is_none();
        let set = wanted.clone();
        match off_runtime(move || tproxy::install(port, &set, routing)).await {
            Ok(()) => {
                tracing::info!(originals = wanted.len(), "service interception in force");
                self.intercept.installed = Some(wanted);
                self.intercept.error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "service interception could not be installed");
                self.intercept.error = Some(format!("nft or ip refused interception: {e}"));
                // Half-installed state must not linger: all or nothing.
                if let Err(e) = off_runtime(tproxy::remove).await {
                    tracing::warn!(error = %e, "removing interception state failed");
                }
                self.intercept.installed = None;
            }
        }
    }

    async fn stop_intercept(&mut self) {
        if let Some((task, _)) = self.intercept.listener.take() {
            task.abort();
        }
        if self.intercept.installed.take().is_some() {
            match off_runtime(tproxy::remove).await {
                Ok(()) => tracing::info!("service interception removed"),
                Err(e) => {
                    tracing::warn!(error = %e, "removing interception state failed");
                    self.intercept.error = Some(format!("removing interception failed: {e}"));
                }
            }
        }
    }

    /// Updates the failures shown in status.
    fn note(&mut self) {
        let mut failing = Vec::new();
        match &self.config {
            Err(e) => failing.push((store::FILE.to_owned(), e.clone())),
            Ok(cs) => {
                for c in cs {
                    if let Some(e) = self.error_of(c) {
                        failing.push((label(c), e));
                    }
                }
            }
        }
        self.failures.set_area(AREA, failing, clock::unix_ms());
    }
}

/// Runs blocking work (files, `nft`, `ip`) off the async runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the task failed: {e}"))?
}

#[cfg(test)]
mod tests;

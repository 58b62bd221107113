//! The controller link: registration, the map stream (resume from the last version,
//! backoff with jitter on failure) and endpoint/liveness reports.
//!
//! A node may know several URLs of its controller (replicas; `weft up
//! --controller URL1,URL2`), and a URL's name may have several addresses. The
//! link keeps one [`Client`] for all its sessions: when a session fails it
//! moves to the next URL (or address) after a random wait under
//! [`FAILOVER_SPREAD`], and when the controller sends `reconnect` (it is
//! shutting down) after a random wait within the spread the notice asks for;
//! the stream resumes with `Last-Event-ID`, so the new controller sends the
//! deltas since, not a snapshot. Once every URL failed in a row, the
//! exponential [`Backoff`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use weft_api_client::{Client, ClientConfig, CurrentController, Trust};
use weft_identity::Identity;
use weft_proto::NodeKey;
use weft_proto::api::ReportRequest;
use weft_proto::netmap::{MapEvent, NetworkMap, ReconnectNotice, StreamEvent};
use weft_proto::task::TaskNotice;
use weft_relay_client::{OutageLog, OutageNote};

use crate::linkmon::{self, Seen};
use crate::netmap::host_candidates;
use crate::state::Credential;
use crate::telemetry::facts::{self, FactsTracker};

/// How to trust the controller.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustSettings {
    pub(crate) ca_file: Option<String>,
    pub(crate) pin_sha256: Option<String>,
    pub(crate) allow_insecure_http: bool,
}

/// What the supervisor shows about the link.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkState {
    pub(crate) connected: bool,
    pub(crate) last_error: Option<String>,
    /// The last error is a refusal retrying will not cure (4xx).
    pub(crate) last_error_permanent: bool,
    /// The controller refused the advertised routes: why, and since when (ms
    /// since the Unix epoch).
    pub(crate) routes_refused: Option<(String, u64)>,
    /// The last report's round trip (the controller's answer time), with the
    /// number of reports answered so far on this link.
    pub(crate) report_rtt: Option<(u64, Duration)>,
    /// The controller URL in use (or next to try) and the address that answered.
    pub(crate) current: Option<CurrentController>,
    /// Map snapshots and deltas received on this link.
    pub(crate) snapshots: u64,
    pub(crate) deltas: u64,
}

/// A running link task.
pub(crate) struct Link {
    task: JoinHandle<()>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between reconnects: a controller back after a short outage
/// is found within this (it was 30 s, and 15.6 s after a 5 s outage).
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that lived this long was a working connection: the next failure
/// starts the backoff afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// Liveness report interval; endpoints are re-gathered this often too.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// A stream silent for this long (no event, no keepalive) is considered dead; the
/// controller sends keepalive comments every 15 s.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// After the controller in use failed, the link waits a random time under
/// this before trying the next URL: a fleet whose replica died spreads its
/// reconnects over it (10,000 agents: 5,000 stream opens a second), and is
/// back within it plus one connection.
pub(crate) const FAILOVER_SPREAD: Duration = Duration::from_secs(2);

/// The controller URLs of `weft up --controller URL1,URL2` (comma-separated,
/// spaces trimmed, duplicates dropped): at least one, at most
/// [`weft_api_client::MAX_URLS`]. Each URL is checked when a client is made.
pub(crate) fn parse_controllers(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for u in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if !out.iter().any(|o| o == u) {
            out.push(u.to_owned());
        }
    }
    if out.is_empty() {
        return Err(
            "no controller URL given (--controller https://host:port[,https://host2:port])".into(),
        );
    }
    if out.len() > weft_api_client::MAX_URLS {
        return Err(format!(
            "{} controller URLs given; at most {}",
            out.len(),
            weft_api_client::MAX_URLS
        ));
    }
    Ok(out)
}

/// A client of the controller at `urls` (one URL or several, comma-separated).
/// With a credential, the node's clients all start at the same URL, and
/// different nodes at different ones (spread over replicas).
pub(crate) fn client(
    urls: &str,
    trust: &TrustSettings,
    credential: Option<&str>,
) -> anyhow::Result<Client> {
    let list = parse_controllers(urls).map_err(anyhow::Error::msg)?;
    let mut cfg = ClientConfig::new(list[0].clone());
    cfg.more_urls = list[1..].to_vec();
    cfg.spread_seed = credential.map_or(0, spread_seed);
    cfg.allow_insecure_http = trust.allow_insecure_http;
    cfg.trust = match (&trust.pin_sha256, &trust.ca_file) {
        (Some(pin), _) => Trust::Fingerprint(
            weft_api_client::parse_fingerprint(pin)
                .context("--pin-sha256 is not a SHA-256 fingerprint")?,
        ),
        (None, Some(ca)) => Trust::CaFile(ca.into()),
        (None, None) => Trust::SystemRoots,
    };
    let c = Client::new(cfg).with_context(|| format!("controller {urls}"))?;
    match credential {
        Some(cred) => c.with_bearer(cred).context("node credential"),
        None => Ok(c),
    }
}

/// A stable number from the node's credential (FNV-1a): where its clients
/// start in the controller list.
fn spread_seed(credential: &str) -> u64 {
    credential.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A client of the controller for the node's credential (its URLs, trust
/// settings and bearer from `cred`).
pub(crate) fn client_for(cred: &Credential) -> anyhow::Result<Client> {
    let trust = TrustSettings {
        ca_file: cred.ca_file.clone(),
        pin_sha256: cred.pin_sha256.clone(),
        allow_insecure_http: cred.allow_insecure_http,
    };
    client(&cred.controller_list(), &trust, Some(&cred.credential))
}

/// Registers this node with a join token; returns the node credential.
pub(crate) async fn register(
    url: &str,
    trust: &TrustSettings,
    token: &str,
    id: &Identity,
    name: Option<&str>,
    hostname: Option<&str>,
) -> anyhow::Result<String> {
    let c = client(url, trust, None)?;
    let req = weft_proto::api::RegisterRequest {
        api_version: None,
        token: token.to_owned(),
        node_key: id.node_key(),
        pow_nonce: id.pow().nonce,
        challenge: String::new(),
        signature: String::new(),
        name: name.map(sanitize_name),
        hostname: hostname.map(str::to_owned),
        facts: Some(facts::collect().await),
    };
    let resp = c
        .register_signed(req, |ctx, msg| id.sign(ctx, msg))
        .await
        .context("registering with the controller")?;
    tracing::info!(name = %resp.name, node_key = %resp.node_key, "registered with the controller");
    Ok(resp.credential)
}

/// Turns a hostname into a DNS label the controller accepts.
fn sanitize_name(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while out.starts_with('-') {
        out.remove(0);
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "node".into() } else { out }
}

impl Link {
    /// Starts the link task.
    pub(crate) fn spawn(
        cred: Credential,
        key: NodeKey,
        port: u16,
        have_version: Option<u64>,
        maps: mpsc::Sender<NetworkMap>,
        tasks: mpsc::Sender<TaskNotice>,
        (reflexive, underlay): (watch::Receiver<Vec<SocketAddr>>, watch::Receiver<Seen>),
    ) -> (Self, watch::Receiver<LinkState>) {
        let (state_tx, state_rx) = watch::channel(LinkState::default());
        let task = tokio::spawn(link_task(
            cred,
            key,
            port,
            have_version,
            (maps, tasks),
            state_tx,
            (reflexive, underlay),
        ));
        (Self { task }, state_rx)
    }

    /// Stops it.
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

async fn link_task(
    cred: Credential,
    key: NodeKey,
    port: u16,
    mut version: Option<u64>,
    (maps, tasks): (mpsc::Sender<NetworkMap>, mpsc::Sender<TaskNotice>),
    state: watch::Sender<LinkState>,
    (mut reflexive, mut underlay): (watch::Receiver<Vec<SocketAddr>>, watch::Receiver<Seen>),
) {
    let seed = u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or([7; 8]));
    let mut failover = Failover::new(cred.controllers.len(), seed);
    // One client for every session: it remembers the URL and address in use.
    let client = loop {
        match client_for(&cred) {
            Ok(c) => break c,
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(error = %msg, "the controller URLs are unusable; fix them with weft up --controller");
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(msg);
                    s.last_error_permanent = true;
                });
                tokio::time::sleep(BACKOFF_MAX).await;
            }
        }
    };
    state.send_modify(|s| s.current = Some(client.current()));
    let mut map: Option<NetworkMap> = None;
    let mut outage = OutageLog::default();
    let mut facts = FactsTracker::default();
    loop {
        let ctx = LinkCtx {
            cred: &cred,
            client: &client,
            port,
            maps: &maps,
            tasks: &tasks,
            state: &state,
        };
        let started = crate::clock::now();
        let result = session(
            &ctx,
            &mut version,
            &mut map,
            &mut reflexive,
            &mut underlay,
            &mut outage,
            &mut facts,
        )
        .await;
        let lived = crate::clock::now().saturating_duration_since(started);
        let (msg, permanent) = match result {
            Ok(Ended::PathLost) => {
                // The connection may use an address or route that is gone:
                // a new one at once (its first report carries the endpoints).
                tracing::info!(
                    "the underlay changed under the controller connection; reconnecting now"
                );
                continue;
            }
            Ok(Ended::Reconnect(n)) => {
                let (_, wait) = failover.after(SessionEnd::Reconnect {
                    within: Duration::from_millis(n.within_ms),
                });
                // The next URL, or the next address of a name with several.
                let to = client.fail_over();
                tracing::info!(
                    reason = %n.reason,
                    to = %to,
                    wait_ms = wait.as_millis() as u64,
                    "the controller asked to reconnect elsewhere"
                );
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = None;
                    s.last_error_permanent = false;
                    s.current = Some(client.current());
                });
                wait_or_network_change(wait, &mut underlay).await;
                continue;
            }
            Ok(Ended::Stream) => ("map stream ended".to_owned(), false),
            Err(e) => {
                let permanent = e
                    .downcast_ref::<weft_api_client::ClientError>()
                    .is_some_and(weft_api_client::ClientError::is_permanent);
                (format!("{e:#}"), permanent)
            }
        };
        let (move_on, wait) = failover.after(SessionEnd::Failed { lived, permanent });
        let to = client.fail_over();
        if move_on {
            tracing::info!(error = %msg, to = %to, wait_ms = wait.as_millis() as u64, "moving to the next controller URL");
        }
        state.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(msg.clone());
            s.last_error_permanent = permanent;
            s.current = Some(client.current());
        });
        let retry_in_ms = wait.as_millis() as u64;
        // One line when the controller becomes unreachable and one when it is
        // back, not one per retry.
        match outage.failed(crate::clock::now()) {
            Some(OutageNote::Down) => tracing::warn!(
                error = %msg,
                retry_in_ms,
                "controller link down; retrying (logged again when it is back, or every 5 min)"
            ),
            Some(OutageNote::StillDown { for_, failures }) => tracing::warn!(
                error = %msg,
                failed_attempts = failures,
                "controller still unreachable after {:.0} s; retrying",
                for_.as_secs_f64()
            ),
            _ => tracing::debug!(error = %msg, retry_in_ms, "controller link down"),
        }
        wait_or_network_change(wait, &mut underlay).await;
    }
}

/// Sleeps `wait`, or less when link monitoring sees the underlay change (a
/// new network: the controller may be reachable now).
async fn wait_or_network_change(wait: Duration, underlay: &mut watch::Receiver<Seen>) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        Ok(()) = underlay.changed() => {
            tracing::info!("the underlay changed; reconnecting to the controller now");
        }
    }
}

/// The reconnect schedule (pure: the caller says how long the session lived;
/// the jitter comes from a seeded generator): exponential from
/// [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each wait drawn from the upper half of
/// the current step (agents do not reconnect in lockstep, and no wait exceeds
/// the cap), reset by a session that lived [`BACKOFF_RESET_AFTER`].
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            step: BACKOFF_MIN,
            rng: seed | 1,
        }
    }

    /// How long to wait after a session that lived `lived` ended; `permanent`:
    /// the controller refused us (a bad credential), so wait the longest.
    pub(crate) fn after_session(&mut self, lived: Duration, permanent: bool) -> Duration {
        if lived >= BACKOFF_RESET_AFTER {
            self.step = BACKOFF_MIN;
        }
        if permanent {
            self.step = BACKOFF_MAX;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        let wait = self.step.mul_f64(factor);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        wait
    }
}

/// How a session ended, for [`Failover::after`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionEnd {
    /// It failed (or the controller ended the stream) after living `lived`;
    /// `permanent`: the controller refused us.
    Failed { lived: Duration, permanent: bool },
    /// The controller asked us to reconnect elsewhere, spread over `within`.
    Reconnect { within: Duration },
}

/// Where and when the link reconnects (pure; the jitter comes from a seeded
/// generator). With several URLs every end moves to the next one; a failure
/// waits a random time under [`FAILOVER_SPREAD`] while some URL has not
/// failed since the last working session, then the [`Backoff`]; a
/// `reconnect` notice waits a random time within its spread.
#[derive(Debug)]
pub(crate) struct Failover {
    urls: usize,
    failed_in_row: usize,
    seed: u64,
    backoff: Backoff,
    rng: u64,
}

impl Failover {
    pub(crate) fn new(urls: usize, seed: u64) -> Self {
        Self {
            urls: urls.max(1),
            failed_in_row: 0,
            seed,
            backoff: Backoff::new(seed),
            rng: seed.rotate_left(17) | 1,
        }
    }

    /// Whether to move to the next URL, and how long to wait first.
    pub(crate) fn after(&mut self, end: SessionEnd) -> (bool, Duration) {
        let several = self.urls > 1;
        match end {
            SessionEnd::Reconnect { within } => {
                self.failed_in_row = 0;
                (several, self.uniform(within))
            }
            SessionEnd::Failed { lived, permanent } => {
                if lived >= BACKOFF_RESET_AFTER {
                    self.failed_in_row = 0;
                    // A working session: the backoff starts afresh too.
                    self.backoff = Backoff::new(self.seed);
                }
                self.failed_in_row += 1;
                if several && !permanent && self.failed_in_row < self.urls {
                    (true, self.uniform(FAILOVER_SPREAD))
                } else {
                    (several, self.backoff.after_session(lived, permanent))
                }
            }
        }
    }

    /// A random wait in `[0, max)`.
    fn uniform(&mut self, max: Duration) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        max.mul_f64((self.rng % 10_000) as f64 / 10_000.0)
    }
}

/// Why a session ended without an error.
enum Ended {
    /// The controller ended the map stream.
    Stream,
    /// The controller asked to reconnect elsewhere (it is shutting down).
    Reconnect(ReconnectNotice),
    /// The underlay changed so that the connection's address or route may be
    /// gone ([`linkmon::path_lost`]): reconnect at once.
    PathLost,
}

/// What a session needs that does not change between reconnects.
struct LinkCtx<'a> {
    cred: &'a Credential,
    /// The client every session uses (it knows the URL in use).
    client: &'a Client,
    port: u16,
    maps: &'a mpsc::Sender<NetworkMap>,
    /// Task notices, for the task runner.
    tasks: &'a mpsc::Sender<TaskNotice>,
    state: &'a watch::Sender<LinkState>,
}

async fn session(
    ctx: &LinkCtx<'_>,
    version: &mut Option<u64>,
    map: &mut Option<NetworkMap>,
    reflexive: &mut watch::Receiver<Vec<SocketAddr>>,
    underlay: &mut watch::Receiver<Seen>,
    outage: &mut OutageLog,
    facts: &mut FactsTracker,
) -> anyhow::Result<Ended> {
    let (cred, port, maps, state) = (ctx.cred, ctx.port, ctx.maps, ctx.state);
    let c = ctx.client;
    let mut endpoints = gather(
        port,
        &reflexive.borrow_and_update(),
        &underlay.borrow_and_update(),
    );
    // The underlay this connection was made on.
    let mut on = underlay.borrow().underlay.clone();
    facts.new_session();
    report_with_facts(c, state, facts, Some(endpoints.clone()))
        .await
        .context("reporting endpoints")?;
    advertise(c, &cred.advertise_routes, state).await;
    // Resume from our version only if we still hold the map it belongs to.
    let resume = if map.is_some() { *version } else { None };
    let mut stream = c
        .map_stream(resume, STREAM_IDLE_TIMEOUT)
        .await
        .context("opening the map stream")?;
    let on_controller = c.current();
    let controller = on_controller.url.clone();
    let address = on_controller
        .address
        .map(|a| a.to_string())
        .unwrap_or_default();
    state.send_modify(|s| {
        s.connected = true;
        s.last_error = None;
        s.last_error_permanent = false;
        s.current = Some(on_controller);
    });
    match outage.recovered(crate::clock::now()) {
        Some(OutageNote::Back { after, failures }) => tracing::info!(
            controller = %controller,
            address = %address,
            failed_attempts = failures,
            resume_from = ?resume,
            "controller back after {:.1} s; map stream open",
            after.as_secs_f64()
        ),
        _ => {
            tracing::info!(controller = %controller, address = %address, resume_from = ?resume, "map stream open")
        }
    }
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else {
                    return Ok(Ended::Stream);
                };
                let ev = ev.context("reading the map stream")?;
                match ev {
                    StreamEvent::Task(n) => {
                        // A full queue: the controller offers every pending
                        // task again when the stream reopens.
                        if let Err(e) = ctx.tasks.try_send(n) {
                            tracing::debug!(error = %e, "task notice not queued");
                        }
                    }
                    StreamEvent::Reconnect(n) => return Ok(Ended::Reconnect(n)),
                    StreamEvent::Map(MapEvent::Snapshot(m)) => {
                        state.send_modify(|s| s.snapshots += 1);
                        *version = Some(m.version);
                        *map = Some(m.clone());
                        if maps.send(m).await.is_err() {
                            return Ok(Ended::Stream);
                        }
                    }
                    StreamEvent::Map(MapEvent::Delta(d)) => {
                        let Some(current) = map.as_mut() else {
                            anyhow::bail!("delta before any snapshot");
                        };
                        state.send_modify(|s| s.deltas += 1);
                        current
                            .apply(&d)
                            .context("applying a map delta (will resync from a snapshot)")
                            .inspect_err(|_| {
                                *version = None;
                            })?;
                        *version = Some(current.version);
                        if maps.send(current.clone()).await.is_err() {
                            return Ok(Ended::Stream);
                        }
                    }
                }
            }
            Ok(()) = underlay.changed() => {
                let seen = underlay.borrow_and_update().clone();
                if let (Some(before), Some(after)) = (&on, &seen.underlay)
                    && linkmon::path_lost(before, after)
                {
                    return Ok(Ended::PathLost);
                }
                on = seen.underlay.clone();
                let now = gather(port, &reflexive.borrow(), &seen);
                report_new_endpoints(c, state, &mut endpoints, now, "the underlay changed").await?;
            }
            Ok(()) = reflexive.changed() => {
                let now = gather(port, &reflexive.borrow_and_update(), &underlay.borrow());
                report_new_endpoints(c, state, &mut endpoints, now, "reflexive address changed")
                    .await?;
            }
            _ = report.tick() => {
                let now = gather(port, &reflexive.borrow(), &underlay.borrow());
                let changed = now != endpoints;
                if changed {
                    tracing::info!(?now, "host addresses changed; reporting new endpoints");
                    endpoints = now.clone();
                }
                report_with_facts(c, state, facts, changed.then_some(now))
                    .await
                    .context("reporting liveness")?;
                advertise(c, &cred.advertise_routes, state).await;
            }
        }
    }
}

/// Sends a report with `endpoints` and, when they are due (the session's
/// first report, or they changed: [`FactsTracker`]), the host facts,
/// collected again every [`facts::REFRESH_EVERY`]. A refusal of the facts
/// alone (`invalid_facts`) is logged and the report sent again without them;
/// they are not sent again until they change.
async fn report_with_facts(
    c: &Client,
    state: &watch::Sender<LinkState>,
    facts: &mut FactsTracker,
    endpoints: Option<Vec<SocketAddr>>,
) -> Result<(), weft_api_client::ClientError> {
    let sending = facts.for_report().await;
    let mut req = ReportRequest {
        api_version: Some(weft_proto::api::API_VERSION),
        endpoints,
        facts: sending.clone(),
    };
    match report_timed(c, state, &req).await {
        Err(e) if sending.is_some() && e.code() == Some("invalid_facts") => {
            tracing::warn!(error = %e, "the controller refused this host's facts; reporting without them");
            req.facts = None;
            report_timed(c, state, &req).await?;
        }
        other => other?,
    }
    if let Some(f) = sending {
        tracing::debug!(?f, "host facts reported");
        facts.accepted(f);
    }
    Ok(())
}

/// Sends a report and notes how long the controller took to answer it (the
/// anomaly detector's control-plane latency signal).
/// Reports `now` as the node's endpoints when they differ from the last
/// reported ones (`endpoints`, updated); `why` goes to the log.
async fn report_new_endpoints(
    c: &Client,
    state: &watch::Sender<LinkState>,
    endpoints: &mut Vec<SocketAddr>,
    now: Vec<SocketAddr>,
    why: &str,
) -> anyhow::Result<()> {
    if now == *endpoints {
        return Ok(());
    }
    tracing::info!(?now, "reporting new endpoints ({why})");
    *endpoints = now.clone();
    report_timed(
        c,
        state,
        &ReportRequest {
            api_version: Some(weft_proto::api::API_VERSION),
            endpoints: Some(now),
            facts: None,
        },
    )
    .await
    .context("reporting endpoints")
}

async fn report_timed(
    c: &Client,
    state: &watch::Sender<LinkState>,
    req: &ReportRequest,
) -> Result<(), weft_api_client::ClientError> {
    let start = crate::clock::now();
    c.report(req).await?;
    let rtt = crate::clock::now().saturating_duration_since(start);
    state.send_modify(|s| {
        let n = s.report_rtt.map_or(0, |r| r.0);
        s.report_rtt = Some((n + 1, rtt));
    });
    Ok(())
}

/// Offers this node's subnets (again: a withdrawn route comes back as pending).
/// A refusal does not end the session: it is kept in the link state (shown by
/// `weft status`, fails `weft up`) and logged when it starts or changes, not
/// on every repeat.
async fn advertise(c: &Client, routes: &[String], state: &watch::Sender<LinkState>) {
    let req = weft_proto::api::AdvertiseRoutesRequest {
        routes: routes.to_vec(),
    };
    let refusal = match c.advertise_routes(&req).await {
        Ok(()) => None,
        // Only the controller's answer is a refusal; a transport error ends
        // up in the session's own error soon enough.
        Err(e) if e.status().is_some() && e.is_permanent() => Some(e.to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "advertising routes failed");
            return;
        }
    };
    let before = state
        .borrow()
        .routes_refused
        .as_ref()
        .map(|(e, _)| e.clone());
    if let Some(log) = refusal_change(before.as_deref(), refusal.as_deref()) {
        match log {
            RefusalLog::Refused(e) => {
                tracing::warn!(?routes, error = %e, "the controller refused the advertised routes");
            }
            RefusalLog::Accepted => {
                tracing::info!(?routes, "the controller accepted the advertised routes");
            }
        }
        let now = crate::clock::unix_ms();
        state.send_modify(|s| s.routes_refused = refusal.map(|e| (e, now)));
    } else if routes.is_empty() || refusal.is_none() {
        tracing::debug!(?routes, "advertised routes");
    }
}

/// What to log when the answer to an advertisement is `now` after `before`.
#[derive(Debug, PartialEq, Eq)]
enum RefusalLog<'a> {
    Refused(&'a str),
    Accepted,
}

/// `None` when nothing changed (a refusal repeated every 30 s is logged once).
fn refusal_change<'a>(before: Option<&str>, now: Option<&'a str>) -> Option<RefusalLog<'a>> {
    match (before, now) {
        (b, Some(n)) if b != Some(n) => Some(RefusalLog::Refused(n)),
        (Some(_), None) => Some(RefusalLog::Accepted),
        _ => None,
    }
}

/// Host candidates (every address of an underlay interface that is up, as
/// link monitoring last saw it; without it, every interface address) with our
/// port, plus the reflexive addresses STUN reported.
fn gather(port: u16, reflexive: &[SocketAddr], underlay: &Seen) -> Vec<SocketAddr> {
    let addrs: Vec<(String, std::net::IpAddr)> = match &underlay.underlay {
        Some(u) => linkmon::up_addresses(u),
        None => if_addrs::get_if_addrs()
            .map(|v| {
                v.into_iter()
                    .map(|i| {
                        let ip = i.ip();
                        (i.name, ip)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut all = host_candidates(&addrs, port);
    for r in reflexive {
        if !all.contains(r) {
            all.push(*r);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_come_quickly_after_a_short_outage() {
        let mut b = Backoff::new(42);
        let quick = Duration::from_millis(50);
        // A long outage: the waits grow, never past the cap.
        let waits: Vec<Duration> = (0..10).map(|_| b.after_session(quick, false)).collect();
        assert!(
            waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN,
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX), "{waits:?}");
        assert!(waits[9] >= BACKOFF_MAX / 2, "{waits:?}");
        // A 5 s outage after a working connection: the waits add up past 5 s
        // within a few attempts, and none is long (it was 15.6 s).
        let mut b = Backoff::new(7);
        let mut elapsed = Duration::ZERO;
        let mut first = true;
        while elapsed < Duration::from_secs(5) {
            let lived = if first {
                Duration::from_secs(3600)
            } else {
                quick
            };
            first = false;
            let w = b.after_session(lived, false);
            elapsed += w + quick;
        }
        assert!(
            elapsed < Duration::from_secs(10),
            "reconnected after {elapsed:?}"
        );
        // A working connection resets the schedule.
        let w = b.after_session(Duration::from_secs(60), false);
        assert!(w <= BACKOFF_MIN, "{w:?}");
        // A refusal waits the longest (within the jitter).
        let w = b.after_session(quick, true);
        assert!(w >= BACKOFF_MAX / 2 && w <= BACKOFF_MAX, "{w:?}");
        // Two agents with different seeds do not wait the same.
        let (mut x, mut y) = (Backoff::new(1), Backoff::new(2));
        let xs: Vec<_> = (0..5).map(|_| x.after_session(quick, false)).collect();
        let ys: Vec<_> = (0..5).map(|_| y.after_session(quick, false)).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn a_failed_controller_is_left_for_the_next_url_quickly_then_the_backoff() {
        let quick = Duration::from_millis(50);
        let failed = SessionEnd::Failed {
            lived: quick,
            permanent: false,
        };
        // Two URLs: a session that worked for a while and broke moves to the
        // other URL within the failover spread.
        let mut f = Failover::new(2, 42);
        let (move_on, wait) = f.after(SessionEnd::Failed {
            lived: Duration::from_secs(600),
            permanent: false,
        });
        assert!(move_on);
        assert!(wait < FAILOVER_SPREAD, "{wait:?}");
        // The other failed too: every URL failed in a row, so the backoff
        // (still moving on, round and round).
        let (move_on, wait) = f.after(failed);
        assert!(move_on);
        assert!(wait >= BACKOFF_MIN / 2 && wait <= BACKOFF_MIN, "{wait:?}");
        let waits: Vec<Duration> = (0..8).map(|_| f.after(failed).1).collect();
        assert!(waits[7] >= BACKOFF_MAX / 2, "{waits:?}");
        // A working session again: the next failure is quick again.
        let (_, wait) = f.after(SessionEnd::Failed {
            lived: Duration::from_secs(60),
            permanent: false,
        });
        assert!(wait < FAILOVER_SPREAD, "{wait:?}");

        // The controller's reconnect notice: the next URL, within its spread,
        // and it is not a failure (the next failure still fails over quickly).
        let mut f = Failover::new(3, 7);
        let within = Duration::from_secs(5);
        let waits: Vec<Duration> = (0..50)
            .map(|_| {
                let (move_on, wait) = f.after(SessionEnd::Reconnect { within });
                assert!(move_on);
                wait
            })
            .collect();
        assert!(waits.iter().all(|w| *w < within), "{waits:?}");
        assert!(
            waits.iter().any(|w| *w < within / 4) && waits.iter().any(|w| *w > within * 3 / 4),
            "spread over the window: {waits:?}"
        );
        assert!(f.after(failed).1 < FAILOVER_SPREAD);

        // One URL: nothing to move to; failures back off as before.
        let mut f = Failover::new(1, 9);
        let (move_on, wait) = f.after(failed);
        assert!(!move_on);
        assert!(wait >= BACKOFF_MIN / 2 && wait <= BACKOFF_MIN, "{wait:?}");
        assert!(!f.after(SessionEnd::Reconnect { within }).0);

        // A refusal: the next URL, but after the longest wait.
        let mut f = Failover::new(2, 9);
        let (move_on, wait) = f.after(SessionEnd::Failed {
            lived: quick,
            permanent: true,
        });
        assert!(move_on);
        assert!(wait >= BACKOFF_MAX / 2, "{wait:?}");

        // Two agents do not fail over in lockstep.
        let (mut x, mut y) = (Failover::new(2, 1), Failover::new(2, 2));
        let long = SessionEnd::Failed {
            lived: Duration::from_secs(600),
            permanent: false,
        };
        assert_ne!(x.after(long).1, y.after(long).1);
    }

    #[test]
    fn controller_lists_are_parsed_trimmed_and_bounded() {
        assert_eq!(
            parse_controllers("https://a:8443, https://b:8443,,https://a:8443").unwrap(),
            vec!["https://a:8443".to_owned(), "https://b:8443".to_owned()]
        );
        assert_eq!(parse_controllers("https://a").unwrap().len(), 1);
        assert!(parse_controllers(" , ").is_err());
        let many: Vec<String> = (0..17).map(|i| format!("https://c{i}")).collect();
        assert!(parse_controllers(&many.join(",")).is_err());
        // Every URL is checked when the client is made.
        let err = format!(
            "{:#}",
            client("https://a:8443,ftp://b", &TrustSettings::default(), None).unwrap_err()
        );
        assert!(err.contains("ftp://b"), "{err}");
        let c = client(
            "http://127.0.0.1:1,http://127.0.0.1:2",
            &TrustSettings::default(),
            Some("cred"),
        )
        .unwrap();
        assert_eq!(c.urls().len(), 2);
        // A node's clients all start at the same URL.
        let again = client(
            "http://127.0.0.1:1,http://127.0.0.1:2",
            &TrustSettings::default(),
            Some("cred"),
        )
        .unwrap();
        assert_eq!(c.current().url, again.current().url);
    }

    #[test]
    fn a_repeated_refusal_is_logged_once() {
        assert_eq!(
            refusal_change(None, Some("bad")),
            Some(RefusalLog::Refused("bad"))
        );
        assert_eq!(refusal_change(Some("bad"), Some("bad")), None);
        assert_eq!(
            refusal_change(Some("bad"), Some("worse")),
            Some(RefusalLog::Refused("worse"))
        );
        assert_eq!(
            refusal_change(Some("bad"), None),
            Some(RefusalLog::Accepted)
        );
        assert_eq!(refusal_change(None, None), None);
    }

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(sanitize_name("Web_01.example.com"), "web-01-example-com");
        assert_eq!(sanitize_name("---"), "node");
        assert_eq!(sanitize_name(&"a".repeat(100)).len(), 63);
    }
}

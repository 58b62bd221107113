//! The supervisor: owns the agent's state and serves every event in one loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;

use tokio::sync::{mpsc, watch};
use weft_identity::{Difficulty, Identity};
use weft_proto::local::{ExplainRequest, LocalRequest, LocalResponse, ReconcileStatus, UpRequest};
use weft_proto::netmap::NetworkMap;

use crate::api::{self, ApiCall};
use crate::clock;
use crate::ctl::{self, LinkState};
use crate::dataplane::{Dataplane, DataplaneConfig};
use crate::dns::{self, Dns, DnsMode};
use crate::failures::Failures;
use crate::integrity::Integrity;
use crate::linkmon::LinkMon;
use crate::netmap::{self, Derived, Slots};
use crate::node_api::NodeApi;
use crate::state::{Credential, StateDir};
use crate::system::{self, System};
use crate::tasks::Tasks;
use crate::telemetry::Telemetry;

mod actions;
mod hostfw;
mod services;
mod status;

/// In the state directory: present while IPv4 forwarding is on because weft
/// turned it on (so a restart after a crash still turns it off again).
const FORWARD_MARKER: &str = "ip-forward-set-by-weft";

/// How `weftd` is configured (command line).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// State directory (identity, credential, cached map).
    pub state_dir: PathBuf,
    /// Local API socket.
    pub socket: PathBuf,
    /// Data-plane UDP port (0: any).
    pub port: u16,
    /// Proof-of-work difficulty used when minting the identity on first start.
    pub mint_difficulty: Difficulty,
    /// Join at start (same as `weft up`), e.g. from a config file or flags.
    pub join: Option<UpRequest>,
    /// Overlay DNS (`weftd --dns`).
    pub dns: DnsMode,
    /// The resolver's upstreams, cache bounds and query log (`weftd
    /// --dns-upstream`, ...).
    pub dns_resolver: crate::DnsResolverOptions,
    /// Data-plane settings (`weftd --offload`, `--pipeline`).
    pub dataplane: DataplaneConfig,
    /// `weftd --usage-file` (a sidecar's per-user byte counters).
    pub usage_file: Option<PathBuf>,
    /// `weftd --metrics-listen` (`None`: no metrics listener).
    pub metrics_listen: Option<crate::MetricsListen>,
    /// `weftd --node-api-socket` and its access (`None`: off).
    pub node_api: Option<crate::NodeApiConfig>,
    /// `weftd --allow-exec`, `--allow-actions`, `--exec-user`.
    pub tasks: crate::TaskSettings,
    /// `weftd --workload-subnet` (`weft run --net bridged|custom`).
    pub workload_subnet: crate::WorkloadSubnet,
    /// `weftd --firewall-rollback-secs`: how long a host firewall change may
    /// leave the controller silent before it is rolled back.
    pub firewall_rollback: std::time::Duration,
    /// `weftd --ssh`: the SSH server's port (`--ssh-port`) on the overlay
    /// addresses; `None`: no SSH server.
    pub ssh_port: Option<u16>,
}

struct Agent {
    state: StateDir,
    identity: Arc<Identity>,
    dp: Dataplane,
    slots: Slots,
    map: Option<NetworkMap>,
    derived: Option<Derived>,
    from_cache: bool,
    credential: Option<Credential>,
    down: bool,
    link: Option<ctl::Link>,
    link_state: watch::Receiver<LinkState>,
    maps_tx: mpsc::Sender<NetworkMap>,
    /// The reconciler of interfaces, routes and firewall (passes run off the
    /// async runtime).
    system: System,
    reconcile_status: ReconcileStatus,
    /// What is failing now (shown by `weft status`, fails `weft up`).
    failures: Failures,
    dns: Dns,
    /// The controller's DNS blocklist, fetched and kept for the resolver.
    dns_blocklist: crate::dns_blocklist::DnsBlocklistKeeper,
    /// Metrics, forwarding, usage uploads and anomaly detection.
    telemetry: Telemetry,
    /// The task runner and its results outbox.
    tasks: Tasks,
    /// The integrity reporter (weftd's and the hooks' hashes).
    integrity: Integrity,
    /// The node API for workloads (metadata, data, secrets).
    node_api: NodeApi,
    /// `weftd --ssh` and its reports.
    ssh: crate::ssh::Ssh,
    /// `weft run`'s network namespaces.
    workloads: crate::workload::Workloads,
    /// The host firewall (`inet weft_host`) and its rollback guard.
    hostfw: crate::hostfw::HostFw,
    /// Link monitoring (the underlay's changes, shown in status).
    linkmon: LinkMon,
    /// Named services: the provided services' health checks and reports.
    services: crate::services::Services,
    /// `weft service listen|intercept`: listeners and interception.
    consumers: crate::consume::Consumers,
}

/// Runs the agent until `shutdown` completes; then removes what it created.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::caps::require_net_admin()?;
    let state = StateDir::open(&cfg.state_dir)?;
    // The local API answers before the identity is minted, so `weft` shows the
    // minting's progress instead of "is weftd running?".
    let listener = api::bind(&cfg.socket).await?;
    let (calls_tx, mut calls_rx) = mpsc::channel::<ApiCall>(16);
    let _metrics =
        crate::telemetry::http::start(cfg.metrics_listen.as_ref(), &state, calls_tx.clone())
            .await?;
    let server = tokio::spawn(api::serve(listener, calls_tx));
    let shutdown = std::pin::pin!(shutdown);
    let result = serve(&cfg, state, &mut calls_rx, shutdown).await;
    server.abort();
    api::unlink(&cfg.socket);
    result
}

/// Loads the identity, or mints it while answering every local API call with
/// the minting's progress. `None`: shut down while minting.
async fn identity<F: Future<Output = ()>>(
    state: &StateDir,
    difficulty: Difficulty,
    calls_rx: &mut mpsc::Receiver<ApiCall>,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> anyhow::Result<Option<Identity>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let hashes = Arc::new(AtomicU64::new(0));
    if state.has_identity() {
        return state
            .load_or_mint_identity(difficulty, &cancel, &hashes)
            .map(Some);
    }
    let task = tokio::task::spawn_blocking({
        let (state, cancel, hashes) = (state.clone(), cancel.clone(), hashes.clone());
        move || state.load_or_mint_identity(difficulty, &cancel, &hashes)
    });
    let mut task = std::pin::pin!(task);
    let started = clock::now();
    loop {
        tokio::select! {
            r = &mut task => return r.context("the minting task failed")?.map(Some),
            Some((_, reply)) = calls_rx.recv() => {
                let done = hashes.load(Ordering::Relaxed) as f64 / difficulty.expected_hashes();
                let _ = reply.send(api::error(
                    "minting",
                    &minting_message(difficulty, done, clock::now().saturating_duration_since(started)),
                ));
            }
            () = &mut *shutdown => {
                cancel.store(true, Ordering::Relaxed);
                let _ = task.await;
                return Ok(None);
            }
        }
    }
}

/// What the local API answers while the identity is being minted.
fn minting_message(difficulty: Difficulty, done: f64, elapsed: std::time::Duration) -> String {
    format!(
        "weftd is minting this node's identity (proof of work, difficulty {}): {:.0}% of the \
         expected work after {} s (the actual work varies by chance; debug builds are much \
         slower); `weft up` waits for it",
        difficulty.bits(),
        done * 100.0,
        elapsed.as_secs()
    )
}

async fn serve<F: Future<Output = ()>>(
    cfg: &AgentConfig,
    state: StateDir,
    calls_rx: &mut mpsc::Receiver<ApiCall>,
    mut shutdown: std::pin::Pin<&mut F>,
) -> anyhow::Result<()> {
    let Some(identity) = identity(&state, cfg.mint_difficulty, calls_rx, &mut shutdown).await?
    else {
        tracing::info!("shut down while minting the identity");
        return Ok(());
    };
    let identity = Arc::new(identity);
    let node_api = NodeApi::start(cfg.node_api.as_ref()).await?;
    let workloads = crate::workload::Workloads::start(&cfg.state_dir, cfg.workload_subnet).await?;

    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let node = actions::new_node(&identity, seed);
    let dp = Dataplane::start(node, cfg.port, cfg.dataplane).await?;
    let linkmon = LinkMon::start(dp.probe());

    let mut failures = Failures::default();
    let (system, netlink_error) = System::open(
        cfg.state_dir.join(FORWARD_MARKER),
        u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8])),
    )
    .await;
    if let Some(e) = netlink_error {
        tracing::error!(error = %e, "cannot open netlink: interfaces will not be configured");
        failures.set_area(
            "system",
            [("netlink".to_owned(), format!("cannot open netlink: {e}"))],
            clock::unix_ms(),
        );
    }
    let (maps_tx, mut maps_rx) = mpsc::channel::<NetworkMap>(16);
    let (_, link_state) = watch::channel(LinkState::default());
    let dns = Dns::new(cfg.dns, cfg.state_dir.clone(), &cfg.dns_resolver);
    let dns_blocklist = crate::dns_blocklist::DnsBlocklistKeeper::start(
        cfg.state_dir.clone(),
        dns.blocklist_slot(),
        cfg.dns != DnsMode::Off,
    );
    let (action_ctx, mut actions_rx) = crate::actions::channel(state.clone(), cfg.mint_difficulty);
    let integrity = Integrity::start(cfg.tasks.hooks_dir.clone());
    let mut agent = Agent {
        credential: state.load_credential()?,
        telemetry: Telemetry::start(cfg, &dp, dns.stats()),
        tasks: Tasks::start(
            crate::TaskSettings {
                actions: Some(action_ctx.clone()),
                report_now: Some(integrity.report_now()),
                ..cfg.tasks.clone()
            },
            &cfg.state_dir,
        ),
        integrity,
        node_api,
        ssh: crate::ssh::Ssh::start(cfg.ssh_port, &cfg.state_dir),
        workloads,
        hostfw: crate::hostfw::HostFw::new(cfg.firewall_rollback, &cfg.state_dir),
        linkmon,
        services: crate::services::Services::start(),
        consumers: crate::consume::Consumers::start(&cfg.state_dir).await,
        state,
        identity,
        dp,
        slots: Slots::default(),
        map: None,
        derived: None,
        from_cache: false,
        down: false,
        link: None,
        link_state,
        maps_tx,
        system,
        reconcile_status: ReconcileStatus::default(),
        failures,
        dns,
        dns_blocklist,
    };

    // Offline start: apply the cached map at once.
    match agent.state.load_map() {
        Ok(Some(map)) => {
            tracing::info!(version = map.version, "applying cached network map");
            agent.from_cache = true;
            agent.apply_map(map).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e:#}"),
    }
    if let Some(join) = cfg.join.clone() {
        if let LocalResponse::Error { message, .. } = agent.up(join).await {
            tracing::error!("joining at start failed: {message}");
        }
    } else if agent.credential.is_some() {
        agent.start_link();
    } else {
        tracing::info!("not joined yet: run `weft up --controller URL --token-file FILE`");
    }

    // A key rotation that did not finish (identity.next) is finished now.
    tokio::spawn(crate::actions::rotate::resume(action_ctx.clone()));

    let mut dns_tick = tokio::time::interval(dns::DRIFT_INTERVAL);
    dns_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = None;
    loop {
        let deadline = agent.system.poll_timeout();
        tokio::select! {
            () = &mut shutdown => break,
            Some((req, reply)) = calls_rx.recv() => {
                if crate::workload::is_workload(&req) {
                    agent.workloads.spawn(req, reply);
                } else if let LocalRequest::ServiceAdvertise(req) = req {
                    // A controller call: never holds up the loop.
                    let cred = agent.credential.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(crate::services::advertise(cred, req).await);
                    });
                } else {
                    let resp = agent.handle(req).await;
                    let _ = reply.send(resp);
                }
            }
            Some(map) = maps_rx.recv() => {
                agent.from_cache = false;
                // A file write with fsync: off the runtime like the system work.
                let (state, cached) = (agent.state.clone(), map.clone());
                let saved = system::off_runtime((), move |()| state.save_map(&cached)).await.1;
                if let Err(e) = saved {
                    tracing::warn!("could not cache the network map: {e:#}");
                }
                agent.apply_map(map).await;
            }
            Some(req) = actions_rx.recv() => agent.serve_action(req).await,
            ev = agent.hostfw.next() => agent.hostfw_event(ev).await,
            () = sleep_until(deadline) => {
                agent.reconcile().await;
            }
            _ = dns_tick.tick() => {
                // A data plane that stopped (its I/O thread panicked, say) must not
                // leave an agent that looks alive: exit, so the service manager
                // restarts it.
                if agent.dp.io_stopped() {
                    tracing::error!("the data plane's I/O thread stopped; exiting so weftd can be restarted");
                    failed = Some("the data plane's I/O thread stopped unexpectedly (see the log)");
                    break;
                }
                if !agent.down {
                    agent.retry_tuns().await;
                    agent.dns.tick().await;
                    agent.note_dns();
                    agent.consumers.retry().await;
                }
            }
        }
    }
    tracing::info!("shutting down: removing weft interfaces and routes");
    agent.stop_link();
    agent.dns.shutdown().await;
    agent.teardown().await;
    match failed {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    async fn handle(&mut self, req: LocalRequest) -> LocalResponse {
        match req {
            LocalRequest::Status => LocalResponse::Ok {
                status: Some(Box::new(self.status().await)),
                message: String::new(),
            },
            LocalRequest::Up(up) => self.up(up).await,
            LocalRequest::Explain(req) => self.explain(&req).await,
            LocalRequest::Metrics { openmetrics } => {
                let live = (&self.dp, &self.link_state, self.map.as_ref());
                self.telemetry.metrics().respond(openmetrics, live).await
            }
            LocalRequest::Events => self.telemetry.events(),
            LocalRequest::SshHosts => crate::ssh::hosts(self.map.as_ref()),
            LocalRequest::DnsLog { n, after_seq } => self.dns.log(n, after_seq).await,
            LocalRequest::DnsStats => self.dns.stats_response(),
            req @ (LocalRequest::WorkloadCreate(_)
            | LocalRequest::WorkloadStarted { .. }
            | LocalRequest::WorkloadEnded { .. }) => self.workloads.handle(req).await,
            LocalRequest::ServiceConsume(c) => self.consumers.consume(c).await,
            LocalRequest::ServiceUnconsume(c) => self.consumers.unconsume(c).await,
            LocalRequest::Services => LocalResponse::Services(Box::new(self.local_services())),
            LocalRequest::ServiceAdvertise(req) => {
                crate::services::advertise(self.credential.clone(), req).await
            }
            LocalRequest::Down => {
                self.down = true;
                self.stop_link();
                self.dns.shutdown().await;
                self.teardown().await;
                LocalResponse::Ok {
                    status: None,
                    message: "down: weft interfaces and routes removed (`weft up` reconnects)"
                        .into(),
                }
            }
        }
    }

    /// `weft why-blocked`: the live engine's verdict for one packet, with the
    /// rule that decided it.
    async fn explain(&self, req: &ExplainRequest) -> LocalResponse {
        use weft_policy::{Direction, FiveTuple, IcmpKind, tcp_flags};
        // An ephemeral source port: the question is about opening a flow.
        const SRC_PORT: u16 = 49152;
        let port = req.port.unwrap_or(0);
        let tcp = FiveTuple::tcp(req.src, SRC_PORT, req.dst, port, tcp_flags::SYN);
        let udp = FiveTuple::udp(req.src, SRC_PORT, req.dst, port);
        let icmp = FiveTuple::icmp(req.src, req.dst, IcmpKind::EchoRequest, 0);
        // `any`: every protocol a rule can name, each explained on its own line.
        let packets = match req.proto.as_str() {
            "tcp" => vec![("", tcp)],
            "udp" => vec![("", udp)],
            "icmp" => vec![("", icmp)],
            "any" => vec![("tcp: ", tcp), ("udp: ", udp), ("icmp: ", icmp)],
            other => {
                return api::error(
                    "bad_request",
                    &format!("unknown protocol {other:?}: use tcp, udp, icmp or any"),
                );
            }
        };
        let dir = if req.ingress {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let mut all_allowed = true;
        let mut lines = Vec::new();
        for (label, packet) in &packets {
            let verdict = match self.dp.explain(dir, packet).await {
                Ok(v) => v,
                Err(e) => return api::error("internal", &format!("{e:#}")),
            };
            let Some((allowed, explanation)) = verdict else {
                return api::error(
                    "no_policy",
                    "no policy in force: the agent has no map with a usable access policy (see weft status)",
                );
            };
            all_allowed &= allowed;
            lines.push(format!("{label}{explanation}"));
        }
        LocalResponse::Explained {
            allowed: all_allowed,
            explanation: lines.join("\n"),
        }
    }

    async fn up(&mut self, up: UpRequest) -> LocalResponse {
        let controllers = match up.controller.as_deref().map(ctl::parse_controllers) {
            None => None,
            Some(Ok(list)) => Some(list),
            Some(Err(e)) => return api::error("bad_request", &e),
        };
        if let Some(token) = up.token.clone() {
            let Some(urls) = controllers
                .clone()
                .or_else(|| self.credential.as_ref().map(|c| c.controllers.clone()))
            else {
                return api::error("bad_request", "first join needs --controller URL");
            };
            // Joining another network of the same controller (a second token)
            // keeps the trust settings of the first join unless new ones are given.
            let same = self.credential.as_ref().filter(|c| {
                controllers
                    .as_ref()
                    .is_none_or(|u| u.iter().any(|u| c.controllers.contains(u)))
            });
            let explicit = up.ca_file.is_some() || up.pin_sha256.is_some();
            let trust = match same {
                Some(c) if !explicit => ctl::TrustSettings {
                    ca_file: c.ca_file.clone(),
                    pin_sha256: c.pin_sha256.clone(),
                    allow_insecure_http: up.allow_insecure_http || c.allow_insecure_http,
                },
                _ => ctl::TrustSettings {
                    ca_file: up.ca_file.clone(),
                    pin_sha256: up.pin_sha256.clone(),
                    allow_insecure_http: up.allow_insecure_http,
                },
            };
            let name = up.name.clone().or_else(hostname);
            match ctl::register(
                &urls.join(","),
                &trust,
                &token,
                &self.identity,
                name.as_deref(),
                hostname().as_deref(),
            )
            .await
            {
                Ok(credential) => {
                    let advertise_routes = up.advertise_routes.clone().unwrap_or_else(|| {
                        self.credential
                            .as_ref()
                            .map(|c| c.advertise_routes.clone())
                            .unwrap_or_default()
                    });
                    let cred = Credential {
                        controllers: urls,
                        credential,
                        ca_file: trust.ca_file,
                        pin_sha256: trust.pin_sha256,
                        allow_insecure_http: trust.allow_insecure_http,
                        advertise_routes,
                    };
                    if let Err(e) = self.state.save_credential(&cred) {
                        return api::error("state", &format!("{e:#}"));
                    }
                    self.credential = Some(cred);
                    self.down = false;
                    self.stop_link();
                    self.start_link();
                    if let Some(map) = self.map.take() {
                        // Re-apply: the TUNs come back after a `down`.
                        self.apply_map(map).await;
                    }
                    LocalResponse::Ok {
                        status: None,
                        message: "joined; connecting to the controller".into(),
                    }
                }
                Err(e) => api::error("join_failed", &format!("{e:#}")),
            }
        } else if let Some(cred) = self.credential.as_mut() {
            self.down = false;
            let mut restart = self.link.is_none();
            // A new list of the controller's URLs (its replicas) for the
            // credential this node has.
            if let Some(urls) = controllers
                && urls != cred.controllers
            {
                let trust = ctl::TrustSettings {
                    ca_file: cred.ca_file.clone(),
                    pin_sha256: cred.pin_sha256.clone(),
                    allow_insecure_http: cred.allow_insecure_http,
                };
                if let Err(e) = ctl::client(&urls.join(","), &trust, None) {
                    return api::error("bad_request", &format!("{e:#}"));
                }
                let before = cred.controller_list();
                cred.controllers = urls;
                let cred = cred.clone();
                if let Err(e) = self.state.save_credential(&cred) {
                    return api::error("state", &format!("{e:#}"));
                }
                tracing::info!(before = %before, now = %cred.controller_list(), "controller URLs changed");
                restart = true;
            }
            if let Some(routes) = up.advertise_routes.clone()
                && routes != cred.advertise_routes
            {
                cred.advertise_routes = routes;
                let cred = cred.clone();
                if let Err(e) = self.state.save_credential(&cred) {
                    return api::error("state", &format!("{e:#}"));
                }
                restart = true;
            }
            if restart {
                self.stop_link();
                self.start_link();
            }
            if let Some(map) = self.map.take() {
                self.apply_map(map).await;
            }
            LocalResponse::Ok {
                status: None,
                message: "up".into(),
            }
        } else {
            api::error(
                "not_joined",
                "this node has not joined a controller yet: weft up --controller URL --token-file FILE",
            )
        }
    }

    fn start_link(&mut self) {
        let Some(cred) = self.credential.clone() else {
            return;
        };
        let (link, state) = ctl::Link::spawn(
            cred.clone(),
            self.identity.node_key(),
            self.dp.port(),
            self.map.as_ref().map(|m| m.version),
            self.maps_tx.clone(),
            self.tasks.notices(),
            (self.dp.reflexive(), self.linkmon.subscribe()),
        );
        self.telemetry.set_link(Some((&cred, &state)));
        self.services.set_link(Some((&cred, &state)));
        self.tasks.set_link(Some(&cred));
        self.integrity.set_link(Some(cred.clone()));
        self.ssh.set_link(Some((&cred, &state)));
        self.dns_blocklist.set_link(Some(cred.clone()));
        self.link = Some(link);
        self.link_state = state;
    }

    fn stop_link(&mut self) {
        self.telemetry.set_link(None);
        self.services.set_link(None);
        self.tasks.set_link(None);
        self.integrity.set_link(None);
        self.ssh.set_link(None);
        self.dns_blocklist.set_link(None);
        if let Some(link) = self.link.take() {
            link.stop();
        }
        // The stopped task's last word ("connected") is no longer true.
        self.link_state = watch::channel(LinkState::default()).1;
    }

    async fn apply_map(&mut self, map: NetworkMap) {
        self.telemetry.set_map(&map);
        self.dns_blocklist.set_map(map.dns_blocklist.as_ref());
        self.node_api.set_map(&map, &self.identity);
        if self.down {
            self.map = Some(map);
            return;
        }
        self.services.set_map(Some(&map));
        self.ssh.set_map(&map);
        let derived = netmap::derive(&map, &mut self.slots);
        let wanted: BTreeMap<usize, String> = derived
            .interfaces
            .iter()
            .map(|i| (i.slot, i.ifname.clone()))
            .collect();
        self.ensure_tuns(&wanted).await;
        self.note_policy(derived.policy_problem.as_deref());
        self.dp.apply(&derived.node);
        // The first relay of the map is this node's relay; every node uses the
        // same one, so relayed peers always meet.
        self.dp
            .set_relay(map.relays.first().cloned(), &self.identity)
            .await;
        let firewall = self.hostfw_map(&map, &derived).await;
        tracing::info!(
            version = map.version,
            networks = derived.interfaces.len(),
            peers = derived.node.peers.len(),
            "applied network map"
        );
        let dns_link = derived.interfaces.first().and_then(|i| {
            i.addresses
                .first()
                .map(|(addr, _)| (i.ifname.clone(), *addr))
        });
        self.derived = Some(derived);
        self.reconcile().await;
        self.hostfw_applied(firewall);
        // After the reconcile pass, so with systemd-resolved the overlay link
        // exists when it is pointed at the resolver.
        self.dns.apply(&map, dns_link).await;
        self.note_dns();
        self.consumers.on_map(&map).await;
        self.map = Some(map);
    }

    /// Shows why every packet is denied (the map has no usable access policy)
    /// in status (area `policy`), and logs it when it starts, changes or ends:
    /// once per change, not per map or packet.
    fn note_policy(&mut self, problem: Option<&str>) {
        let before = self
            .derived
            .as_ref()
            .and_then(|d| d.policy_problem.as_deref());
        if before != problem {
            match problem {
                Some(why) => tracing::error!("{why}"),
                None => tracing::info!("the map carries a usable access policy; enforcing it"),
            }
        }
        let failing = problem.map(|why| ("access policy".to_owned(), why.to_owned()));
        self.failures.set_area("policy", failing, clock::unix_ms());
    }

    /// Shows a refused overlay resolver, or one that could not start, in status
    /// (area `dns`).
    fn note_dns(&mut self) {
        let failing = self
            .dns
            .refused()
            .or(self.dns.start_error())
            .map(|e| ("resolver".to_owned(), e.to_owned()));
        self.failures.set_area("dns", failing, clock::unix_ms());
    }

    /// Creates the TUN devices `wanted` lacks; a failure is shown in status
    /// until a retry (every 2 s) succeeds.
    async fn ensure_tuns(&mut self, wanted: &BTreeMap<usize, String>) {
        let errors = self.dp.ensure_tuns(wanted, netmap::OVERLAY_MTU).await;
        for (_, e) in &errors {
            tracing::error!("{e}; will retry");
        }
        self.failures.set_area("tun", errors, clock::unix_ms());
    }

    /// Retries the TUN devices that could not be created.
    async fn retry_tuns(&mut self) {
        if !self.failures.any_in("tun") {
            return;
        }
        let Some(wanted) = self.derived.as_ref().map(|d| {
            d.interfaces
                .iter()
                .map(|i| (i.slot, i.ifname.clone()))
                .collect::<BTreeMap<usize, String>>()
        }) else {
            return;
        };
        self.ensure_tuns(&wanted).await;
    }

    /// A reconciler pass if one is due; its report (`None`: no pass ran).
    async fn reconcile(&mut self) -> Option<weft_netcfg::ReconcileReport> {
        let report = self.system.reconcile(clock::now()).await;
        if let Some(report) = &report {
            self.telemetry.metrics().reconciled(report.failed.len());
            for a in &report.applied {
                tracing::info!(action = %a, "applied");
            }
            for (a, e) in &report.failed {
                tracing::warn!(action = %a, error = %e, "action failed; will retry");
            }
            self.failures.set_area(
                "system",
                report
                    .failed
                    .iter()
                    .map(|(a, e)| (a.to_string(), e.to_string())),
                clock::unix_ms(),
            );
            self.reconcile_status = ReconcileStatus {
                converged: report.converged,
                failures: report
                    .failed
                    .iter()
                    .map(|(a, e)| format!("{a}: {e}"))
                    .collect(),
            };
        }
        report
    }

    async fn teardown(&mut self) {
        self.ssh.clear_map();
        self.dp
            .ensure_tuns(&BTreeMap::new(), netmap::OVERLAY_MTU)
            .await;
        self.dp.shutdown_relay();
        self.derived = None;
        self.slots = Slots::default();
        self.hostfw_down();
        self.services.set_map(None);
        self.consumers.teardown().await;
        if let Some(report) = self.system.shutdown().await {
            for (a, e) in &report.failed {
                tracing::warn!(action = %a, error = %e, "teardown action failed");
            }
        }
        self.reconcile_status = ReconcileStatus::default();
        self.failures.clear();
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

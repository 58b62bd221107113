//! The server: storage start-up, the listener loop, TLS, graceful shutdown.
//!
//! [`prepare`] opens (and migrates) the database, loads the state and creates
//! the admin token on first start. [`run`] serves HTTP/1.1 (over TLS unless the
//! config has none) on an already-bound listener until `shutdown` resolves, so
//! tests can bind port 0. On shutdown it stops accepting, tells every map
//! stream to reconnect elsewhere (a `reconnect` event: agents move to another
//! replica, or come back spread over [`Config::drain_spread`]), gives the
//! streams [`Config::drain_wait`] to take it, ends them, waits for in-flight
//! requests (up to a grace period), then lets the store writer finish its
//! queue.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rand_core::{OsRng, RngCore as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use weft_proto::netmap::Relay;

use crate::api::{self, ApiConfig, AppState, AuditRetention, Challenges, Limiter, Peer, Readiness};
use crate::engine::Engine;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::model::World;
use crate::secret::{self, ADMIN_PREFIX};
use crate::store::challenges::{ChallengeKey, ChallengeWrite};
use crate::store::sqlite::SqliteStore;
use crate::store::{AuditQuery, AuditRecord, Store, StoreError, Write};
use crate::{clock, tls};

/// File name of the database in the data directory.
pub const DB_FILE: &str = "controller.db";
/// File the admin token is written to on first start (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = weft_proto::api::ADMIN_TOKEN_FILE;
/// File holding the controller's URL (`https://host:port`), for local tools.
pub const URL_FILE: &str = weft_proto::api::CONTROLLER_URL_FILE;
/// File the bound address is written to (`host:port`).
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// File the bound `--metrics-listen` address is written to (`host:port`).
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// Files that make a data directory "not empty": a start finding none of them
/// is a first start and creates the state; otherwise each must be there.
pub const STATE_FILES: &[&str] = &[
    DB_FILE,
    "controller.db-wal",
    ADMIN_TOKEN_FILE,
    "tls/cert.pem",
    "tls/key.pem",
];

/// What a start may do about missing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMode {
    /// The data directory holds state: all of it must be there and sound.
    Existing,
    /// A first start into an empty (or new) data directory: create everything.
    Fresh,
    /// `--init`: create what is missing, moving a broken database aside.
    Init,
}

impl StateMode {
    /// Judges `data_dir` before anything is written to it.
    pub fn of(data_dir: &Path, init: bool) -> Self {
        if init {
            StateMode::Init
        } else if STATE_FILES.iter().any(|f| data_dir.join(f).exists()) {
            StateMode::Existing
        } else {
            StateMode::Fresh
        }
    }

    /// Whether missing state may be created.
    pub fn may_create(self) -> bool {
        self != StateMode::Existing
    }
}

/// The data directory, opened: created 0700, locked for this process.
pub struct DataDir {
    /// Whether this start may create state.
    pub mode: StateMode,
    /// The directory's mode if group or others can access it (warn).
    pub loose_mode: Option<u32>,
    _lock: weft_tls::DirLock,
}

/// Judges, creates (0700) and locks `data_dir`; a second controller on the same
/// directory gets [`ServeError::Lock`], naming the holder's pid.
pub fn open_data_dir(data_dir: &Path, init: bool) -> Result<DataDir, ServeError> {
    let mode = StateMode::of(data_dir, init);
    let loose_mode = weft_tls::private_dir(data_dir).map_err(|source| ServeError::Io {
        what: format!("creating {}", data_dir.display()),
        source,
    })?;
    let lock = weft_tls::lock_dir(data_dir)?;
    Ok(DataDir {
        mode,
        loose_mode,
        _lock: lock,
    })
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process holds the data directory.
    #[error(transparent)]
    Lock(#[from] weft_tls::LockError),
    /// The database cannot be used as it is (the message says what to do).
    #[error("{0}")]
    Database(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Server settings.
pub struct Config {
    /// TLS configuration; `None` serves cleartext HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Handler settings.
    pub api: ApiConfig,
    /// Fan-out settings.
    pub hub: HubConfig,
    /// How long shutdown waits for open requests.
    pub shutdown_grace: Duration,
    /// On shutdown, map streams are told to reconnect elsewhere within this
    /// (each agent waits a random share of it): a fleet does not arrive at
    /// another replica, or at this controller when it is back, at once.
    pub drain_spread: Duration,
    /// How long shutdown waits, after telling the streams, before ending
    /// them (less when every stream has gone).
    pub drain_wait: Duration,
    /// Concurrent connections at most (each map stream is one).
    pub max_connections: usize,
    /// What the audit retention sweep keeps.
    pub audit_retention: AuditRetention,
    /// A listener for `GET /metrics` without authentication, over plain HTTP
    /// (`serve --metrics-listen`); `None`: only the API port's, admin token.
    pub metrics_listener: Option<TcpListener>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tls: None,
            api: ApiConfig::default(),
            hub: HubConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            drain_spread: Duration::from_secs(5),
            drain_wait: Duration::from_secs(1),
            max_connections: 16_384,
            audit_retention: AuditRetention::default(),
            metrics_listener: None,
        }
    }
}

mod database;
pub use database::{Opened, prepare_database};

#[cfg(test)]
mod start_tests;

/// The opened store and loaded state.
pub struct Prepared<S: Store = SqliteStore> {
    store: S,
    world: World,
    /// The key registration challenges are MACed with (every replica's).
    challenge_key: ChallengeKey,
    /// Whether this start created the admin token (in `admin_token_path`).
    pub admin_token_created: bool,
    /// Where the admin token was written, or would be.
    pub admin_token_path: PathBuf,
    /// When another start (another replica) created the admin token: where
    /// it wrote it, as its audit record says (`host:path`), if still there.
    pub admin_token_origin: Option<String>,
}

/// Opens `data_dir/controller.db` (migrating it), loads the state, and on first
/// start creates the admin token: stored hashed, and written to
/// `data_dir/admin.token` with mode 0600. The database is created (0600) only
/// if `mode` allows; a missing, empty or foreign one is otherwise refused with
/// [`StoreError::NotWeft`], and with [`StateMode::Init`] moved aside.
pub fn prepare(
    data_dir: &Path,
    relays: Vec<Relay>,
    mode: StateMode,
) -> Result<Prepared, ServeError> {
    let db = data_dir.join(DB_FILE);
    let store = match mode {
        StateMode::Fresh => SqliteStore::create(&db)?,
        StateMode::Existing => SqliteStore::open_existing(&db)?,
        StateMode::Init => match SqliteStore::open_existing(&db) {
            Ok(s) => s,
            Err(StoreError::NotWeft { why, .. }) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut name = db.as_os_str().to_owned();
                    name.push(suffix);
                    let path = PathBuf::from(name);
                    if path.exists() {
                        let to = weft_tls::move_aside(&path, clock::now_unix_ms() / 1000).map_err(
                            |source| ServeError::Io {
                                what: format!("moving {} aside", path.display()),
                                source,
                            },
                        )?;
                        warn!(from = %path.display(), to = %to.display(), "--init: moved the old database file aside");
                    }
                }
                warn!(db = %db.display(), was = %why, "--init: creating an empty database");
                SqliteStore::create(&db)?
            }
            Err(e) => return Err(e.into()),
        },
    };
    // SQLite gives -wal and -shm the mode of the database file.
    let loose: Vec<String> = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            weft_tls::loose_mode(&path).map(|m| format!("{} ({m:04o})", path.display()))
        })
        .collect();
    if !loose.is_empty() {
        warn!(files = %loose.join(", "), "the database is readable by other users; it holds credential hashes and the audit log (chmod 600 it)");
    }
    finish(store, data_dir, relays)
}

/// Settles, under the database-wide write lock, what the first start
/// creates: the admin token (written to `data_dir` with mode 0600, stored
/// hashed) and the registration challenges' key. Replicas starting together
/// on an empty database take turns here, so exactly one creates each; the
/// others find them. Then loads the state and begins a new map version.
fn finish<S: Store>(
    mut store: S,
    data_dir: &Path,
    relays: Vec<Relay>,
) -> Result<Prepared<S>, ServeError> {
    let admin_token_path = data_dir.join(ADMIN_TOKEN_FILE);
    store.begin_exclusive()?;
    let settled = settle(&mut store, &admin_token_path);
    if settled.is_err() {
        let _ = store.rollback_exclusive();
    }
    let (challenge_key, admin_token_created) = settled?;
    let admin_token_origin = if admin_token_created {
        None
    } else {
        admin_token_origin(&mut store)
    };
    let mut world = crate::replica::load(&mut store, relays)?;
    // Every start begins a new map version: a stream resuming from before the
    // restart gets a fresh snapshot rather than an empty replay.
    crate::replica::bump(&mut store, &mut world)?;
    Ok(Prepared {
        store,
        world,
        challenge_key,
        admin_token_created,
        admin_token_path,
        admin_token_origin,
    })
}

/// Holding the write lock: creates the challenge key and the admin token if
/// the database has none, and ends the exclusive section. Returns the key
/// and whether this start created the admin token.
fn settle<S: Store>(
    store: &mut S,
    admin_token_path: &Path,
) -> Result<(ChallengeKey, bool), ServeError> {
    let rows = store.start_rows()?;
    let mut writes = Vec::new();
    let key = match rows.challenge_key {
        Some(k) => k,
        None => {
            let mut k = [0u8; 32];
            OsRng.fill_bytes(&mut k);
            let k = ChallengeKey(k);
            writes.push(Write::Challenge(ChallengeWrite::CreateKey(k.clone())));
            k
        }
    };
    let created = rows.admin_hash.is_none();
    if created {
        let last_audit = store
            .audit(&AuditQuery {
                limit: 1,
                ..AuditQuery::default()
            })?
            .first()
            .map_or(0, |a| a.id);
        let (token, hash) = secret::generate(ADMIN_PREFIX, &mut OsRng);
        // Write the file first: if the commit fails, the next start creates a
        // new token and overwrites it, so the file never holds a dead token
        // for long.
        tls::write_private(admin_token_path, format!("{token}\n").as_bytes()).map_err(
            |source| ServeError::Io {
                what: format!("writing {}", admin_token_path.display()),
                source,
            },
        )?;
        writes.push(Write::SetAdminHash(hash));
        writes.push(Write::Audit(AuditRecord {
            id: last_audit + 1,
            at_ms: clock::now_unix_ms(),
            actor: "controller".into(),
            action: ADMIN_TOKEN_CREATE.into(),
            target: "admin".into(),
            detail: serde_json::json!({
                "file": admin_token_path.display().to_string(),
                "host": host_name(),
            }),
        }));
    }
    if writes.is_empty() {
        store.rollback_exclusive()?;
    } else {
        store.commit_exclusive(&writes)?;
    }
    Ok((key, created))
}

/// This machine's name, for where the admin token was written ("unknown"
/// when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().chars().take(253).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The audit action of the admin token's creation.
const ADMIN_TOKEN_CREATE: &str = "admin.token.create";

/// Where the start that created the admin token wrote it (`host:path`), from
/// its audit record; `None` if the record is gone (audit retention) or
/// unreadable.
fn admin_token_origin(store: &mut dyn Store) -> Option<String> {
    let records = store
        .audit(&AuditQuery {
            limit: 100,
            target: Some("admin".into()),
            ..AuditQuery::default()
        })
        .ok()?;
    let r = records.iter().find(|r| r.action == ADMIN_TOKEN_CREATE)?;
    let file = r.detail.get("file")?.as_str()?;
    Some(match r.detail.get("host").and_then(|h| h.as_str()) {
        Some(host) => format!("{host}:{file}"),
        None => file.to_owned(),
    })
}

/// Serves until `shutdown` resolves.
pub async fn run<S: Store>(
    prepared: Prepared<S>,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let hub = Arc::new(Hub::new(config.hub.clone()));
    let metrics = Arc::new(Metrics::new());
    // Starting the engine reads the store (the replica's catch-up): blocking
    // I/O, and PostgreSQL's client runs a runtime of its own.
    let (engine, writer) =
        tokio::task::block_in_place(|| Engine::start(prepared.store, prepared.world, hub, metrics))
            .map_err(|source| ServeError::Io {
                what: "starting the store writer".into(),
                source,
            })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let readiness = Arc::new(Readiness::default());
    let state = AppState {
        engine: engine.clone(),
        challenges: Arc::new(Challenges::with_key(
            &prepared.challenge_key,
            config.api.challenge_ttl,
            config.api.max_used_challenges,
        )),
        limiter: Arc::new(Limiter::new(
            config.api.rate_limit,
            config.api.refusal_summary_every,
        )),
        public_limiter: Arc::new(Limiter::named(
            "public",
            config.api.public_rate_limit,
            config.api.refusal_summary_every,
        )),
        auth_limiter: Arc::new(Limiter::named(
            "failed authentication",
            config.api.auth_fail_limit,
            config.api.refusal_summary_every,
        )),
        readiness: readiness.clone(),
        cfg: Arc::new(config.api.clone()),
        shutdown: shutdown_rx,
        history: Arc::default(),
    };
    let metrics_task = config.metrics_listener.map(|l| {
        let router = api::scrape_router(state.clone());
        tokio::spawn(serve_metrics(l, router, state.shutdown.clone()))
    });
    let sweep_task = tokio::spawn(api::task_sweep(engine.clone(), state.shutdown.clone()));
    let firewall_sweep = tokio::spawn(api::firewall_sweep(engine.clone(), state.shutdown.clone()));
    let audit_sweep = tokio::spawn(api::audit_sweep(
        engine.clone(),
        config.audit_retention,
        state.shutdown.clone(),
    ));
    let memory_sweep = tokio::spawn(crate::memory::sweep(
        engine.hub().encoded(),
        Duration::from_secs(5),
        state.shutdown.clone(),
    ));
    let router = api::router(state);
    let acceptor = config.tls.clone().map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut accept_log = weft_policy::LogLimiter::new(Duration::from_secs(60), 1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => {
                // /readyz says 503 from now: the load balancer stops
                // sending while the streams drain.
                readiness.set_shutting_down();
                break;
            }
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, and log one
                // line a minute with a count, not one every 50 ms.
                if let Some(suppressed) = accept_log.check(&(), clock::now()) {
                    warn!(error = %e, suppressed, "accept failing (too many open files?); retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("connection limit reached; dropping a connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // Handlers see the peer address (per-source rate limits), put in each
        // request's extensions. (Not `router.layer(Extension(..))`: that
        // rebuilds every route for every connection, ~100 KiB each, kept for
        // as long as a map stream lives.)
        let inner = TowerToHyperService::new(router.clone());
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                hyper::service::Service::call(&inner, req)
            });
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(64 * 1024);
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = watcher
                                .watch(builder.serve_connection(TokioIo::new(tls), svc))
                                .await;
                        }
                        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
                None => {
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), svc))
                        .await;
                }
            }
        });
    }
    drop(listener);
    let spread = u64::try_from(config.drain_spread.as_millis()).unwrap_or(u64::MAX);
    let told = engine.hub().drain(spread);
    let relays = engine.relay_feed().drain(spread);
    info!(
        streams = told,
        relay_streams = relays,
        spread_ms = spread,
        "shutting down: no new connections; map streams told to reconnect elsewhere"
    );
    let until = tokio::time::Instant::now() + config.drain_wait;
    let open = || engine.hub().stream_count() + engine.relay_feed().stream_count();
    while told + relays > 0 && open() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(
        streams = engine.hub().stream_count(),
        "ending the map streams left"
    );
    let _ = shutdown_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = sweep_task.await;
    let _ = firewall_sweep.await;
    let _ = audit_sweep.await;
    let _ = memory_sweep.await;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(config.shutdown_grace) => warn!("requests still open after the grace period; closing them"),
    }
    engine.shutdown();
    drop(engine);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    info!("stopped");
    Ok(())
}

/// Serves the metrics router on `listener` (plain HTTP, a few connections at
/// once, short timeouts) until `shutdown` turns true.
async fn serve_metrics(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(16));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let svc = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

//! `weft-controller serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use weft_proto::netmap::Relay;

use super::out;
use crate::serve::{self, Config, LISTEN_ADDR_FILE, METRICS_ADDR_FILE, URL_FILE};
use crate::tls;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// State directory (created 0700, locked by one controller): database,
    /// admin token, TLS material, bound address.
    #[arg(long, env = "WEFT_CONTROLLER_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Create fresh state deliberately where it is missing or broken: a new TLS
    /// pair if tls/key.pem or cert.pem is gone (a new fingerprint: every agent
    /// and relay pinned to the old one must re-pin), an empty database (the old
    /// file moved aside; a new admin token; every node registers again). Without
    /// it, state is created only on a first start into an empty DIR, and a DIR
    /// with some state missing is refused, naming the file.
    #[arg(long)]
    init: bool,
    /// Keep the state in PostgreSQL instead of DIR/controller.db:
    /// postgres://USER@HOST[:PORT]/DBNAME[?sslmode=require]. Several
    /// controllers (replicas, each with its own DIR) may share one database.
    /// No password in the URL: see --database-password-file. An empty
    /// database gets weft's schema on a first start; move a SQLite
    /// installation over with `weft-controller migrate-store`.
    #[arg(long, env = "WEFT_DATABASE_URL", value_name = "URL")]
    database: Option<String>,
    #[command(flatten)]
    pg: super::database::PgOptions,
    /// Address to listen on; port 0 picks a free port (written to DIR/listen.addr).
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM). Without it a self-signed certificate is
    /// generated once into DIR/tls/ and its fingerprint printed for pinning.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or IP for the self-signed certificate (repeatable).
    #[arg(long, value_name = "NAME")]
    tls_san: Vec<String>,
    /// Serve cleartext HTTP. Only allowed on a loopback address, unless
    /// --insecure-http is also given.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    plain_http: bool,
    /// Serve cleartext HTTP on any address (logs a warning). Credentials then
    /// cross the network unencrypted: only for labs.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// Relay URL handed to every node in its map as is (repeatable): no
    /// fingerprint, no membership feed. Relays registered with `admin relay
    /// create` are listed too, with their fingerprint and STUN port.
    #[arg(long, value_name = "URL")]
    relay: Vec<String>,
    /// Seconds between keepalive comments on idle map streams.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive_secs: u64,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    max_body_bytes: u64,
    /// Requests one client address (an IPv6 /64) may send at once to the
    /// unauthenticated registration endpoints; beyond it they get 429 with
    /// Retry-After. A registration takes two (challenge, register).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    register_burst: u32,
    /// Registration requests per minute one client address regains. Raise both
    /// when many nodes enrol at once from behind one NAT or proxy.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    register_per_minute: u32,
    /// Requests one client address (an IPv6 /64) may send at once to
    /// /healthz, /readyz and paths that do not exist; beyond it they get 429
    /// with Retry-After. Per replica.
    #[arg(long, default_value_t = crate::api::RateLimit::PUBLIC.burst, value_parser = clap::value_parser!(u32).range(1..))]
    public_burst: u32,
    /// Such requests per minute one client address regains (the default
    /// fits a load balancer probing every second from one address ten
    /// times over).
    #[arg(long, default_value_t = crate::api::RateLimit::PUBLIC.per_minute, value_parser = clap::value_parser!(u32).range(1..))]
    public_per_minute: u32,
    /// Failed authentications (401 answers) one client address may have at
    /// once; with none left, every request from it gets 429 with
    /// Retry-After (the probes aside) until one comes back. Per replica.
    #[arg(long, default_value_t = crate::api::RateLimit::AUTH_FAIL.burst, value_parser = clap::value_parser!(u32).range(1..))]
    auth_fail_burst: u32,
    /// Failed authentications per minute one client address regains.
    #[arg(long, default_value_t = crate::api::RateLimit::AUTH_FAIL.per_minute, value_parser = clap::value_parser!(u32).range(1..))]
    auth_fail_per_minute: u32,
    /// Audit records older than this many days are deleted (checked at
    /// start and every hour; each sweep is itself audited as
    /// `audit.prune` with the count). 0: kept whatever their age.
    #[arg(long, default_value_t = crate::api::retention::DEFAULT_RETAIN_DAYS, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(0..=36_500))]
    audit_retain_days: u64,
    /// At most this many audit records are kept, the newest (checked with
    /// the age). 0: no limit.
    #[arg(long, default_value_t = crate::api::retention::DEFAULT_RETAIN_COUNT, value_name = "N")]
    audit_retain_count: u64,
    /// Milliseconds a node's map stream must stay open before peers see the
    /// node online. A stream that closes sooner costs peers nothing.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=3_600_000), value_name = "MS")]
    online_after_ms: u64,
    /// Milliseconds a node must be without a map stream before peers see it
    /// offline; a reconnect within it costs peers nothing.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000), value_name = "MS")]
    offline_after_ms: u64,
    /// Also serve Prometheus metrics at http://ADDR/metrics: plain HTTP and no
    /// authentication, for a scraper on this host (port 0 picks a free port,
    /// written to DIR/metrics.addr). A non-loopback ADDR is refused unless
    /// --metrics-listen-public is given too. Without this flag, GET /metrics on
    /// the API port serves the same with the admin token as Bearer.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address: anyone who can reach it
    /// reads the metrics (node counts by state, request rates and latencies; no
    /// keys, names or addresses). Firewall it to the scraper.
    #[arg(long, requires = "metrics_listen")]
    metrics_listen_public: bool,
    /// Seconds shutdown waits for open requests.
    #[arg(long, default_value_t = 5)]
    shutdown_grace_secs: u64,
    /// On SIGTERM every map stream is told to reconnect elsewhere (another
    /// replica, or this controller when it is back), each agent after a
    /// random wait within this many seconds, so a fleet does not arrive at
    /// once. 0: at once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    drain_spread_secs: u64,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Raises the soft open-file limit to the hard limit: every map stream is a
/// socket, and the default 1024 is too few for a thousand agents.
fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).ok()?;
    }
    lim.current
}

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log))
        .context("--log is not a valid filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Some(addr) = args.metrics_listen
        && !addr.ip().is_loopback()
        && !args.metrics_listen_public
    {
        bail!(
            "refusing --metrics-listen {addr}: it serves metrics without authentication, and {} is not a loopback address. Use 127.0.0.1:PORT for a scraper on this host, scrape GET /metrics on the API port with the admin token, or add --metrics-listen-public if you really mean it",
            addr.ip()
        );
    }
    let database = match &args.database {
        Some(url) => {
            let target = args.pg.target(url)?;
            info!(database = %target.shown(), "state in PostgreSQL");
            Some(target)
        }
        None if args.pg.any() => bail!(
            "--database-password-file, --database-ca and --database-insecure go with --database postgres://…"
        ),
        None => None,
    };
    let nofile = raise_nofile_limit();
    // Judge and lock the data directory before anything is written to it.
    let data_dir = serve::open_data_dir(&args.data_dir, args.init)?;
    if let Some(m) = data_dir.loose_mode {
        warn!(dir = %args.data_dir.display(), mode = format!("{m:04o}"), "the data directory is accessible by other users; it holds the TLS key and the database (chmod 700 it)");
    }
    let mode = data_dir.mode;
    if mode == serve::StateMode::Fresh {
        info!(dir = %args.data_dir.display(), "first start into an empty data directory: creating the database, admin token and TLS pair");
    }

    let plain = args.plain_http || args.insecure_http;
    let loopback = args.listen.ip().is_loopback();
    if plain && !loopback && !args.insecure_http {
        bail!(
            "refusing cleartext HTTP on non-loopback address {}: use TLS (the default), or pass --insecure-http if you really mean it",
            args.listen
        );
    }
    let mut relays = Vec::new();
    for r in &args.relay {
        let ok = r.len() <= 512
            && r.parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.host().is_some());
        if !ok {
            bail!("--relay {r:?} is not a URL like https://relay.example.net:443");
        }
        relays.push(Relay::from_url(r.clone()));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        // Before the database, the TLS pair is only loaded (`--tls-cert`, or
        // the data directory's when it must hold one): a bad one stops the
        // start before anything is written.
        let tls = if plain {
            if !loopback {
                warn!(listen = %args.listen, "serving cleartext HTTP on a non-loopback address (--insecure-http): credentials cross the network unencrypted");
            }
            None
        } else {
            match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(weft_tls::load(cert, key, tls::PROFILE)?),
                _ if !mode.may_create() => Some(weft_tls::load_or_generate(
                    &args.data_dir.join("tls"),
                    &args.tls_san,
                    tls::PROFILE,
                    false,
                    crate::clock::now_unix_ms() / 1000,
                )?),
                _ => None,
            }
        };
        let prepared = tokio::task::block_in_place(|| {
            serve::prepare_database(&args.data_dir, database.as_ref(), relays, mode)
        })?;
        if prepared.admin_token_created() {
            // Only the path: stdout usually ends up in the journal.
            out(&format!(
                "Admin token created: {} (mode 0600; read it from there)\n",
                prepared.admin_token_path().display()
            ));
            info!(file = %prepared.admin_token_path().display(), "created the admin token");
        } else if !prepared.admin_token_path().exists() {
            // Another replica created it (several replicas on one database).
            let origin = prepared.admin_token_origin().unwrap_or(
                "unknown (its audit record is gone): every replica that created one printed its path",
            );
            out(&format!(
                "Admin token: created by another start, in {origin}; copy it to {} (mode 0600) for `weft admin` here\n",
                prepared.admin_token_path().display()
            ));
            info!(origin, "the admin token was created by another start");
        }
        // A TLS pair to create is created only now, once the database is
        // settled: a start that cannot reach the database leaves nothing in
        // the data directory that the next start would take for state.
        let tls = match tls {
            Some(m) => Some(m),
            None if plain => None,
            None => Some(weft_tls::load_or_generate(
                &args.data_dir.join("tls"),
                &args.tls_san,
                tls::PROFILE,
                mode.may_create(),
                crate::clock::now_unix_ms() / 1000,
            )?),
        };
        let listener =
            bind_api(args.listen).with_context(|| format!("binding {}", args.listen))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{bound}");
        out(&format!("weft-controller listening on {url}\n"));
        if let Some(m) = &tls {
            out(&format!("TLS certificate fingerprint: {}\n", m.fingerprint));
            info!(%url, fingerprint = %m.fingerprint, cert = %m.cert_path.display(), "listening");
        } else {
            info!(%url, "listening (cleartext HTTP)");
        }
        let metrics_listener = match args.metrics_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --metrics-listen {addr}"))?;
                let bound = l.local_addr().context("reading the metrics address")?;
                if !bound.ip().is_loopback() {
                    warn!(metrics = %bound, "serving metrics without authentication on a non-loopback address (--metrics-listen-public)");
                }
                out(&format!("metrics on http://{bound}/metrics\n"));
                info!(metrics = %bound, "serving metrics");
                tls::write_private(&args.data_dir.join(METRICS_ADDR_FILE), format!("{bound}\n").as_bytes())
                    .context("writing metrics.addr")?;
                Some(l)
            }
            None => {
                // A file from an earlier start with the flag would mislead.
                let _ = std::fs::remove_file(args.data_dir.join(METRICS_ADDR_FILE));
                None
            }
        };
        // The address files come last: whoever waits for them (tests, scripts) can
        // rely on the fingerprint already being on stdout.
        tls::write_private(&args.data_dir.join(LISTEN_ADDR_FILE), format!("{bound}\n").as_bytes())
            .context("writing listen.addr")?;
        tls::write_private(&args.data_dir.join(URL_FILE), format!("{url}\n").as_bytes())
            .context("writing controller.url")?;
        if let Some(n) = nofile {
            info!(open_files = n, "file descriptor limit");
        }
        let config = Config {
            tls: tls.map(|m| m.config),
            api: crate::api::ApiConfig {
                keepalive: Duration::from_secs(args.keepalive_secs),
                max_body: usize::try_from(args.max_body_bytes).unwrap_or(64 * 1024),
                rate_limit: crate::api::RateLimit {
                    burst: args.register_burst,
                    per_minute: args.register_per_minute,
                    ..Default::default()
                },
                public_rate_limit: crate::api::RateLimit {
                    burst: args.public_burst,
                    per_minute: args.public_per_minute,
                    ..crate::api::RateLimit::PUBLIC
                },
                auth_fail_limit: crate::api::RateLimit {
                    burst: args.auth_fail_burst,
                    per_minute: args.auth_fail_per_minute,
                    ..crate::api::RateLimit::AUTH_FAIL
                },
                ..Default::default()
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            audit_retention: crate::api::AuditRetention::from_flags(
                args.audit_retain_days,
                args.audit_retain_count,
            ),
            drain_spread: Duration::from_secs(args.drain_spread_secs),
            metrics_listener,
            hub: crate::hub::HubConfig {
                presence: crate::model::PresenceConfig {
                    online_after: Duration::from_millis(args.online_after_ms),
                    offline_after: Duration::from_millis(args.offline_after_ms),
                },
                ..Default::default()
            },
            ..Config::default()
        };
        prepared.run(config, listener, shutdown_signal()).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    // Held until here: another controller cannot take the directory meanwhile.
    drop(data_dir);
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, not when the returned future
/// is first polled: the serve loop may answer its first request before it
/// polls the shutdown future, and a SIGTERM in between would kill the process
/// instead of draining it (seen in CI: `state.rs` stopped a controller that
/// had answered one request, and it died of the signal).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            warn!("could not install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}

/// The API listener, with an accept queue of [`ACCEPT_BACKLOG`]
/// (`TcpListener::bind` asks for 128): after a restart every agent connects at
/// once, and a connection that finds the queue full waits for a SYN
/// retransmission (1, 3, 7, 15, 31 s later), which is how the last streams
/// came back only after 96 s at 10,000 nodes. The kernel caps it at
/// `net.core.somaxconn`.
fn bind_api(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Connections waiting to be accepted, at most (see [`bind_api`]).
const ACCEPT_BACKLOG: u32 = 16_384;

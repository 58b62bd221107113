//! The `weft-relay` command line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_proto::relay_api::RelayReportRequest;

use crate::controller::{self, LinkConfig};
use crate::server::{self, ServerConfig};
use crate::{clock, tls};

/// File the bound TCP address is written to (`host:port`).
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// File the bound STUN address is written to (`host:port`).
pub const STUN_ADDR_FILE: &str = "stun.addr";
/// File the bound `--metrics-listen` address is written to (`host:port`).
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
/// Files that make a data directory "not empty": a start finding none of them
/// is a first start and may generate the TLS pair; otherwise a missing half of
/// the pair is refused (without `--init`).
pub const STATE_FILES: &[&str] = &[
    "tls/cert.pem",
    "tls/key.pem",
    LISTEN_ADDR_FILE,
    STUN_ADDR_FILE,
];

/// weft relay: carries encrypted packets between nodes that cannot reach each
/// other directly (TLS over TCP), and answers STUN Binding requests (UDP).
#[derive(Debug, Parser)]
#[command(name = "weft-relay", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// State directory (created 0700, locked by one relay): TLS material,
    /// bound addresses.
    #[arg(long, env = "WEFT_RELAY_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Generate a new self-signed TLS pair deliberately when tls/key.pem or
    /// cert.pem is missing (a new fingerprint: the controller learns it at the
    /// next report, but anything pinned to the old one must re-pin). Without it
    /// the pair is generated only on a first start into an empty DIR, and a
    /// missing half is refused, naming the file.
    #[arg(long)]
    init: bool,
    /// TLS/TCP address to listen on; port 0 picks a free port (written to
    /// DIR/listen.addr).
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR")]
    listen: SocketAddr,
    /// UDP address of the STUN server; port 0 picks a free port (written to
    /// DIR/stun.addr).
    #[arg(long, default_value = "0.0.0.0:3478", value_name = "ADDR")]
    stun_listen: SocketAddr,
    /// Do not run the STUN server.
    #[arg(long, conflicts_with = "stun_listen")]
    no_stun: bool,
    /// Also answer STUN on this UDP port (same address as --stun-listen). Each
    /// STUN port names the other in its answers (RFC 5780 OTHER-ADDRESS), so
    /// `weft netcheck` can tell whether a node's NAT maps endpoint-independently.
    #[arg(long, value_name = "PORT", conflicts_with = "no_stun")]
    stun_alt_port: Option<u16>,
    /// Controller URL, for example `https://controller.example.net:8443`; or
    /// the URLs of its replicas, comma-separated. The relay moves to the next
    /// when the one in use fails or shuts down; a name with several addresses
    /// has each tried (the certificate must match the name).
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL[,URL...]")]
    controller: String,
    /// File holding the relay token (from `weft admin relay create`).
    #[arg(long, value_name = "FILE")]
    relay_token_file: PathBuf,
    /// Trust exactly the controller certificate with this SHA-256 (`sha256:<hex>`).
    #[arg(long, value_name = "FP", conflicts_with = "ca_file")]
    pin_sha256: Option<String>,
    /// CA certificate(s) to trust for the controller (PEM). Without this or
    /// --pin-sha256, the system roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Allow http:// to a non-loopback controller (the relay token crosses the
    /// network in cleartext: labs only).
    #[arg(long)]
    allow_insecure_http: bool,
    /// TLS certificate chain (PEM). Without it a self-signed certificate is
    /// generated once into DIR/tls/ and its fingerprint printed; the controller
    /// hands the fingerprint to nodes, which pin it.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or IP for the self-signed certificate (repeatable).
    #[arg(long, value_name = "NAME")]
    tls_san: Vec<String>,
    /// The relay's name on the controller; if given, a token of another relay is
    /// refused.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Seconds the last member set stays valid when the controller is
    /// unreachable; then every node is refused until it is back.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    membership_grace_secs: u64,
    /// Seconds a session may stay silent (clients ping every 25 s).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(5..=3600))]
    idle_timeout_secs: u64,
    /// Packets queued per client at most; more are dropped (the slow client
    /// loses its own packets).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    queue_packets: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (sessions, bytes and
    /// frames forwarded, drops by reason, queue depths, STUN requests): plain
    /// HTTP, no authentication; port 0 picks a free port (written to
    /// DIR/metrics.addr). A non-loopback ADDR is refused unless
    /// --metrics-listen-public is given too. Default: no metrics listener.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address: anyone who can reach it
    /// reads the metrics (counts only; no keys or addresses). Firewall it to the
    /// scraper.
    #[arg(long, requires = "metrics_listen")]
    metrics_listen_public: bool,
    /// Seconds between counter summaries in the log.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    summary_interval_secs: u64,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = s.trim().to_owned();
    if t.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(t)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
            "refusing --metrics-listen {addr}: it serves metrics without authentication, and {} is not a loopback address. Use 127.0.0.1:PORT for a scraper on this host, or add --metrics-listen-public if you really mean it",
            addr.ip()
        );
    }
    let token = read_token(&args.relay_token_file)?;
    let trust = match (&args.pin_sha256, &args.ca_file) {
        (Some(fp), _) => Trust::Fingerprint(parse_fingerprint(fp)?),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => Trust::SystemRoots,
    };
    let mut urls: Vec<String> = Vec::new();
    for u in args
        .controller
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        if !urls.iter().any(|o| o == u) {
            urls.push(u.to_owned());
        }
    }
    let Some(first) = urls.first().cloned() else {
        bail!(
            "--controller is empty: give the controller's URL (or its replicas', comma-separated)"
        );
    };
    let client = Client::new(ClientConfig {
        trust,
        allow_insecure_http: args.allow_insecure_http,
        more_urls: urls[1..].to_vec(),
        // Relays spread over the replicas by their token.
        spread_seed: token.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
        ..ClientConfig::new(first)
    })
    .context("--controller")?
    .with_bearer(&token)?;
    // Judge the data directory before anything is written to it, then create
    // (0700) and lock it for this process's lifetime.
    let fresh = !STATE_FILES.iter().any(|f| args.data_dir.join(f).exists());
    if let Some(m) = weft_tls::private_dir(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?
    {
        warn!(dir = %args.data_dir.display(), mode = format!("{m:04o}"), "the data directory is accessible by other users; it holds the TLS key (chmod 700 it)");
    }
    let _lock = weft_tls::lock_dir(&args.data_dir)?;
    let material = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => weft_tls::load(cert, key, tls::PROFILE)?,
        _ => weft_tls::load_or_generate(
            &args.data_dir.join("tls"),
            &args.tls_san,
            tls::PROFILE,
            fresh || args.init,
            clock::unix_secs(),
        )?,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let mut stun = Vec::new();
        if !args.no_stun {
            let mut addrs = vec![args.stun_listen];
            if let Some(port) = args.stun_alt_port {
                addrs.push(SocketAddr::new(args.stun_listen.ip(), port));
            }
            for a in addrs {
                stun.push(
                    tokio::net::UdpSocket::bind(a)
                        .await
                        .with_context(|| format!("binding UDP {a}"))?,
                );
            }
        }
        let stun_bound = stun.first().and_then(|s| s.local_addr().ok());
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --metrics-listen {addr}"))?;
                Some(l)
            }
            None => None,
        };
        let metrics_bound = match &metrics {
            Some(l) => Some(l.local_addr().context("reading the metrics address")?),
            None => None,
        };
        out(&format!("weft-relay listening on {bound} (TLS)\n"));
        for s in stun.iter().filter_map(|s| s.local_addr().ok()) {
            out(&format!("STUN on {s} (UDP)\n"));
        }
        if let Some(m) = metrics_bound {
            out(&format!("metrics on http://{m}/metrics\n"));
            if !m.ip().is_loopback() {
                warn!(metrics = %m, "serving metrics without authentication on a non-loopback address (--metrics-listen-public)");
            }
        }
        out(&format!("TLS certificate fingerprint: {}\n", material.fingerprint));
        info!(listen = %bound, stun = ?stun_bound, fingerprint = %material.fingerprint, cert = %material.cert_path.display(), "listening");
        // The address files come last: whoever waits for them can rely on
        // stdout being complete.
        match metrics_bound {
            Some(m) => tls::write_private(&args.data_dir.join(METRICS_ADDR_FILE), format!("{m}\n").as_bytes())
                .context("writing metrics.addr")?,
            // A file from an earlier start with the flag would mislead.
            None => {
                let _ = std::fs::remove_file(args.data_dir.join(METRICS_ADDR_FILE));
            }
        }
        if let Some(s) = stun_bound {
            tls::write_private(&args.data_dir.join(STUN_ADDR_FILE), format!("{s}\n").as_bytes())
                .context("writing stun.addr")?;
        }
        tls::write_private(&args.data_dir.join(LISTEN_ADDR_FILE), format!("{bound}\n").as_bytes())
            .context("writing listen.addr")?;

        let (members_tx, members_rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut link = tokio::spawn(controller::follow(
            LinkConfig {
                client,
                controller_url: args.controller.clone(),
                report: RelayReportRequest {
                    api_version: None,
                    tls_fingerprint: Some(material.fingerprint.clone()),
                    stun_port: stun_bound.map(|s| s.port()),
                },
                expected_name: args.name.clone(),
                idle_timeout: Duration::from_secs(60),
            },
            members_tx,
            stop_rx,
        ));
        let mut config = ServerConfig::new(material.config);
        config.core.membership_grace = Duration::from_secs(args.membership_grace_secs);
        config.core.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
        config.core.queue_frames = usize::try_from(args.queue_packets).unwrap_or(512);
        config.summary_interval = Duration::from_secs(args.summary_interval_secs);
        // Stop on a signal, or when the link gives up for good (the controller's
        // certificate is not trusted): then exit non-zero with its message.
        let mut link_ended = None;
        let stop = async {
            tokio::select! {
                () = shutdown_signal() => {}
                r = &mut link => link_ended = Some(r),
            }
        };
        server::run(config, listener, stun, members_rx, metrics, stop).await?;
        let _ = stop_tx.send(true);
        match link_ended {
            None => {
                let _ = link.await;
            }
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(msg))) => bail!("{msg}"),
            Some(Err(e)) => bail!("the controller link failed: {e}"),
        }
        Ok::<(), anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("could not install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

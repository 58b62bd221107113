//! `weftd`: the weft node agent. All logic lives in `weft-agent`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use weft_identity::Difficulty;
use weft_proto::local::UpRequest;

#[cfg(not(feature = "unenforced-benchmark-only"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "unenforced-benchmark-only")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (BENCHMARK BUILD: policy enforcement compiled out)"
);

/// weftd: the weft node agent.
///
/// Gives this machine an encrypted overlay address in every network it joins,
/// keeps WireGuard sessions with its peers, and keeps the system's interfaces and
/// routes as the controller wants them. Control it with `weft` (status, up, down,
/// ping) over the local socket. Needs CAP_NET_ADMIN (root, or
/// `AmbientCapabilities=CAP_NET_ADMIN`); refuses to start without it.
#[derive(Debug, Parser)]
#[command(name = "weftd", version = VERSION)]
struct Args {
    /// State directory: identity key, controller credential, cached network map.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Local API socket for the `weft` CLI.
    #[arg(long, env = "WEFT_SOCKET", default_value = weft_proto::local::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// UDP port of the data plane (0 picks a free one).
    #[arg(long, env = "WEFT_PORT", default_value_t = 51820)]
    port: u16,
    /// Proof-of-work difficulty when minting this node's identity on first start;
    /// must be at least what the controller's networks require.
    #[arg(long, default_value_t = Difficulty::DEFAULT)]
    mint_difficulty: Difficulty,
    /// Join this controller at start (like `weft up --controller`): one URL,
    /// or the replicas' URLs comma-separated.
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL[,URL...]")]
    controller: Option<String>,
    /// Join token file for --controller (read once; the token is never logged).
    #[arg(long, env = "WEFT_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM CA file for the controller's certificate.
    #[arg(long, alias = "ca", value_name = "PATH")]
    ca_file: Option<String>,
    /// Pin the controller's certificate by SHA-256 fingerprint (hex).
    #[arg(long, alias = "pin", value_name = "HEX")]
    pin_sha256: Option<String>,
    /// Allow cleartext http:// to a non-loopback controller (insecure; labs only).
    #[arg(long)]
    allow_insecure_http: bool,
    /// Node name to register with (default: hostname).
    #[arg(long)]
    name: Option<String>,
    /// With --controller: offer these subnets as a gateway (comma-separated
    /// IPv4 CIDRs; pending until an admin approves; needs the tag `gateway`;
    /// host bits set, the default route and reserved space are refused).
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]", value_parser = route_arg)]
    advertise_routes: Option<Vec<String>>,
    /// Overlay DNS: `auto` runs a resolver on 127.0.2.53 for `<node>.<network>.weft.internal`
    /// and points the system at it for the overlay domains (systemd-resolved per
    /// link, or a managed /etc/resolv.conf restored on `weft down` and exit;
    /// changes by others are repaired within 2 s, but a program that keeps
    /// rewriting it makes weft pause its repairs, logged; in a network
    /// namespace whose /etc/resolv.conf is still the host's file it refuses,
    /// logged once: create /etc/netns/NAME/resolv.conf first); `off` runs no
    /// resolver and changes nothing; `system` serves every name, not only the
    /// overlay's: the system's only resolver (systemd-resolved: the `~.`
    /// routing domain and the default route on the overlay link; or the
    /// managed /etc/resolv.conf), a cache bounded by --dns-min-ttl and
    /// --dns-max-ttl (defaults 300 s and 86400 s), other names forwarded to
    /// --dns-upstream (default: the resolvers the system used before weft).
    #[arg(long, env = "WEFT_DNS", value_enum, default_value_t = DnsArg::Auto)]
    dns: DnsArg,
    /// Where forwarded names go, in order, repeatable: `udp://IP[:PORT]` (port
    /// 53) or `tls://IP[:PORT][#TLS-NAME]` (DNS over TLS, port 853; the
    /// certificate must be valid for TLS-NAME, e.g.
    /// `tls://1.1.1.1#cloudflare-dns.com`). A failed upstream is skipped for a
    /// backoff (5 s doubling to 60 s) and probed again; the next one answers
    /// meanwhile. Default: the resolvers the system used before weft.
    #[arg(long = "dns-upstream", value_name = "URL", value_parser = dns_upstream_arg)]
    dns_upstream: Vec<weft_agent::DnsUpstream>,
    /// PEM file with the CA certificates DNS-over-TLS upstreams are checked
    /// against (a private resolver); default: the system's CA certificates.
    #[arg(long, value_name = "FILE")]
    dns_upstream_ca: Option<PathBuf>,
    /// Shortest time a forwarded answer is cached, seconds (shorter TTLs are
    /// raised, as clients see them too). Default: 300 with --dns system, 0
    /// otherwise.
    #[arg(long, value_name = "SECONDS")]
    dns_min_ttl: Option<u32>,
    /// Longest time a forwarded answer is cached, seconds (longer TTLs are
    /// lowered). Default: 86400 with --dns system, 3600 otherwise.
    #[arg(long, value_name = "SECONDS")]
    dns_max_ttl: Option<u32>,
    /// Log every query the resolver answers to STATE_DIR/dns-query.log (JSON
    /// lines, 0600; rotated to dns-query.log.1; read with `weft dns log`).
    /// Off by default.
    #[arg(long)]
    dns_query_log: bool,
    /// The query log's budget: both files together at most this many bytes
    /// (at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = weft_agent::DnsResolverOptions::default().query_log_max_bytes)]
    dns_query_log_max_bytes: u64,
    /// Data-plane offloads: `on` asks for the TUN's virtio-net header with
    /// TSO/USO (one read or write moves up to 64 KiB) and UDP GSO/GRO (one
    /// syscall sends or receives a run of datagrams); each one the kernel or
    /// device lacks falls back on its own to one packet per syscall. `off` turns
    /// them all off (for comparisons, and to test the fallback path).
    /// Environment: WEFTD_OFFLOAD=0 (off) or 1 (on).
    #[arg(long, env = "WEFTD_OFFLOAD", value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    offload: bool,
    /// Data-plane output workers: `on` hands large batches' output (UDP sends,
    /// TUN writes) to one thread per direction, so reading and crypto overlap
    /// with output on another CPU (small batches stay inline, so a ping pays no
    /// hand-off); `off` does everything on the I/O thread; `auto` is `on` when
    /// this process may use more than one CPU.
    /// Environment: WEFTD_PIPELINE=0 (off), 1 (on) or auto.
    #[arg(long, env = "WEFTD_PIPELINE", value_name = "auto|on|off", default_value = "auto", value_parser = pipeline_arg)]
    pipeline: Pipeline,
    /// Serve Prometheus metrics on http://ADDR/metrics (default: off): per-peer
    /// traffic, path, handshake age and RTT, drops, I/O errors, batch sizes,
    /// reconciler, DNS, controller link, CPU and memory. ADDR must be loopback
    /// (e.g. 127.0.0.1:9101) or one of this node's overlay addresses (known
    /// from the network map of an earlier run; bound once its interface has
    /// it, so peers scrape it through the tunnel under the access policy);
    /// anything else is refused unless --metrics-listen-public. `weft metrics`
    /// prints the same without a listener.
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on any address (a LAN address, 0.0.0.0): the
    /// metrics name this node's peers and show its traffic, so firewall it.
    #[arg(long, requires = "metrics_listen")]
    metrics_listen_public: bool,
    /// A sidecar's usage file: a proxy that counts its own users writes
    /// `{"core_uptime_sec": N, "user_bytes": {"alice": N, ...}}` (its monotonic
    /// totals, at most 1 MiB) and weftd uploads it every 30 s with this node's
    /// identity (never one from the file); `weft admin usage --by user` shows
    /// it. A file with a negative counter, an empty user id, bad JSON or over
    /// 1 MiB is refused as a whole, logged, and shown by `weft status`.
    #[arg(long, env = "WEFT_USAGE_FILE", value_name = "PATH")]
    usage_file: Option<PathBuf>,
    /// The node API for workloads on this node (`off`: none): HTTP/1.1 JSON
    /// over this Unix socket, `GET /v1/metadata` (name, addresses, tags,
    /// networks), `/v1/data[/KEY]` (the admin's data for this node) and
    /// `/v1/secrets/KEY` (opened here with this node's key); `weft node get`
    /// reads it. The socket is 0600 (root only), or 0660 with
    /// --node-api-group, and every caller's uid and groups are checked
    /// (SO_PEERCRED). Default: /run/weft/node.sock, or, when --socket is not
    /// the default, next to it (`/x/n1.sock` -> `/x/n1-node.sock`), so a
    /// second agent on the host does not collide with the first.
    #[arg(long, env = "WEFT_NODE_API_SOCKET", value_name = "PATH|off")]
    node_api_socket: Option<String>,
    /// Members of this group read the node API's metadata and data (not
    /// secrets); the socket becomes 0660 root:GROUP.
    #[arg(long, env = "WEFT_NODE_API_GROUP", value_name = "GROUP", value_parser = group_arg)]
    node_api_group: Option<(String, u32)>,
    /// These users (uids or names, comma-separated) read secrets from the node
    /// API, besides root (who always may); they must be able to open the
    /// socket, so this needs --node-api-group with them in it.
    #[arg(long, env = "WEFT_NODE_API_SECRET_UIDS", value_delimiter = ',',
          value_name = "UID[,UID...]", value_parser = uid_arg, requires = "node_api_group")]
    node_api_secret_uids: Vec<u32>,
    /// Check the control plane and exit: one unauthenticated `GET /healthz`
    /// on --controller, trusted as a normal start would (--ca-file,
    /// --pin-sha256; cleartext http:// only to loopback unless
    /// --allow-insecure-http). Exit status 0 only when it answers HTTP 200,
    /// else 1 with the reason. Reads nothing from the state directory and
    /// sends no credential or token; needs no privileges.
    #[arg(long, requires = "controller")]
    selfcheck_controlplane: bool,
    /// One-shot, for firewall apply scripts: resolve --host, split its
    /// answers into IPv4 and IPv6, sort and de-duplicate each, and replace
    /// the contents of the existing nftables sets --set (IPv4) and --set6
    /// (IPv6) of table --family --table in one transaction, then exit. Needs
    /// at least one answer (an A answer with --set only, A or AAAA with both;
    /// a family without answers empties its set). Exits 1 without touching
    /// the sets on an invalid identifier (a letter or _ first, then letters,
    /// digits, _ - .), no answer, a resolver failure, a missing table or set,
    /// or an nft refusal, so the script can roll back. Asks the nameservers
    /// of /etc/resolv.conf; needs CAP_NET_ADMIN but no state directory or
    /// credential. Example: `weftd --update-nft-domain-set --host
    /// api.example.com --family inet --table filter --set api4 --set6 api6`.
    #[arg(long, requires_all = ["host", "table", "set"], conflicts_with = "selfcheck_controlplane")]
    update_nft_domain_set: bool,
    /// With --update-nft-domain-set: the host name to resolve.
    #[arg(long, value_name = "NAME", requires = "update_nft_domain_set")]
    host: Option<String>,
    /// With --update-nft-domain-set: the table's family.
    #[arg(
        long,
        value_name = "FAMILY",
        default_value = "inet",
        requires = "update_nft_domain_set"
    )]
    family: String,
    /// With --update-nft-domain-set: the table.
    #[arg(long, value_name = "TABLE", requires = "update_nft_domain_set")]
    table: Option<String>,
    /// With --update-nft-domain-set: the set for IPv4 addresses (type ipv4_addr).
    #[arg(long = "set", value_name = "SET", requires = "update_nft_domain_set")]
    set: Option<String>,
    /// With --update-nft-domain-set: the set for IPv6 addresses (type ipv6_addr).
    #[arg(long, value_name = "SET", requires = "update_nft_domain_set")]
    set6: Option<String>,
    /// With --update-nft-domain-set: ask this DNS server (IP:PORT) instead of
    /// /etc/resolv.conf's (tests).
    #[arg(
        long,
        value_name = "IP:PORT",
        hide = true,
        requires = "update_nft_domain_set"
    )]
    dns_server: Option<std::net::SocketAddr>,
    /// Run script tasks (`weft admin task create --script`): off by default,
    /// refused with a result that says so. Scripts run as --exec-user in a
    /// fresh 0700 temporary directory (removed afterwards) with only PATH,
    /// HOME (that directory), LANG and WEFT_TASK_LEASE_ID set, in their own
    /// process group, killed whole at the task's timeout, output capped.
    #[arg(long, env = "WEFT_ALLOW_EXEC")]
    allow_exec: bool,
    /// The built-in task actions this node runs (comma-separated names, `all`
    /// or `none`): ping, netcheck, diagnostics (read-only, the default),
    /// reconcile, rotate-key, restart-dataplane, flush-dns, firewall-allow,
    /// firewall-revoke (open and close host firewall ports for a while).
    /// Others are refused with a result that says so.
    #[arg(long, env = "WEFT_ALLOW_ACTIONS", value_name = "LIST|all|none",
          default_value = "ping,netcheck,diagnostics", value_parser = actions_arg)]
    allow_actions: Actions,
    /// The user script and hook tasks run as (its uid and primary group, no
    /// supplementary groups); with --allow-exec it must exist at start.
    #[arg(
        long,
        env = "WEFT_EXEC_USER",
        value_name = "USER",
        default_value = "nobody"
    )]
    exec_user: String,
    /// The hooks directory: scripts a hook task runs by name, each only while
    /// the SHA-256 of its file is one the admin approved (`weft admin hook
    /// approve NAME SHA256`); the bytes hashed are the bytes that run. It
    /// must be root-owned with no group or other permissions (0700), each
    /// hook a root-owned regular file (no symlink) that is not group- or
    /// other-writable; otherwise no hook runs and the controller sees an
    /// integrity mismatch. Missing: no hooks. weftd reports the SHA-256 of
    /// its own binary and of every hook at start, every 10 minutes and right
    /// after a hook was refused.
    #[arg(long, env = "WEFT_HOOKS_DIR", value_name = "DIR",
          default_value = weft_agent::DEFAULT_HOOKS_DIR)]
    hooks_dir: PathBuf,
    /// After a host firewall change (the controller's `weft admin firewall`),
    /// weftd checks that the controller still answers (`GET /healthz`, as
    /// `--selfcheck-controlplane` does) for up to this many seconds; no
    /// answer restores the previous ruleset, shows it in `weft status` and
    /// reports a `firewall_rollback` event. Checked only when the controller
    /// was reachable just before the change.
    #[arg(long, env = "WEFT_FIREWALL_ROLLBACK_SECS", value_name = "SECS",
          default_value_t = weft_agent::DEFAULT_ROLLBACK_SECS,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    firewall_rollback_secs: u64,
    /// The subnet of the workload bridge (`wfbr0`) for `weft run --net
    /// bridged|custom`: IPv4, /16 to /29; the node takes its first address,
    /// each workload the next free one. Pick one no network of the node uses.
    #[arg(long, env = "WEFT_WORKLOAD_SUBNET", value_name = "CIDR",
          default_value = weft_agent::DEFAULT_WORKLOAD_SUBNET)]
    workload_subnet: weft_agent::WorkloadSubnet,
    /// Run an SSH server on this node's overlay addresses (never on other
    /// addresses), for the nodes the policy's `[[ssh]]` rules let log in.
    /// The client is known by its overlay source address, so no SSH keys or
    /// passwords are involved: any process on an allowed node may log in as
    /// the users granted to it. Connect with `weft ssh NODE`. The host key is
    /// STATE_DIR/ssh_host_ed25519_key (made on first start), published in the
    /// maps of the nodes that may log in; sessions are audited on the
    /// controller (`ssh.session`, `ssh.refused`).
    #[arg(long, env = "WEFT_SSH")]
    ssh: bool,
    /// The SSH server's port on the overlay addresses (with `--ssh`).
    #[arg(long, env = "WEFT_SSH_PORT", value_name = "PORT",
          default_value_t = weft_proto::ssh::DEFAULT_SSH_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    ssh_port: u16,
    /// Log filter (e.g. `info`, `debug`, `weft_tunnel=trace`).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

/// `--advertise-routes` values: the controller's own check
/// (`weft_proto::net::check_routable_v4`), so a bad prefix stops weftd at start
/// instead of being refused by the controller later.
fn route_arg(text: &str) -> Result<String, String> {
    let prefix: weft_proto::net::Ipv4Net = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not an IPv4 subnet such as 192.168.50.0/24: {e}"))?;
    weft_proto::net::check_routable_v4(&prefix).map_err(|e| format!("{prefix} {e}"))?;
    Ok(prefix.to_string())
}

/// Where the node API listens: `--node-api-socket` (`off`: nowhere), else
/// the default socket when the local API is on its default, else next to
/// the local API's socket (`/x/n1.sock` -> `/x/n1-node.sock`).
fn node_api_socket(given: Option<&str>, local_api: &std::path::Path) -> Option<PathBuf> {
    match given {
        Some("off") => None,
        Some(path) => Some(PathBuf::from(path)),
        None if local_api == std::path::Path::new(weft_proto::local::DEFAULT_SOCKET) => {
            Some(PathBuf::from(weft_proto::local::DEFAULT_NODE_API_SOCKET))
        }
        None => {
            let stem = local_api
                .file_stem()
                .map_or_else(|| "weftd".into(), |s| s.to_string_lossy().into_owned());
            Some(local_api.with_file_name(format!("{stem}-node.sock")))
        }
    }
}

/// `--node-api-group`: a group name (looked up at start) and its gid.
fn group_arg(text: &str) -> Result<(String, u32), String> {
    weft_agent::group_by_name(text.trim()).map_err(|e| format!("{e:#}"))
}

/// One `--node-api-secret-uids` entry: a uid or a user name.
fn uid_arg(text: &str) -> Result<u32, String> {
    weft_agent::uid_of(text).map_err(|e| format!("{e:#}"))
}

/// `--allow-actions` values: action names.
#[derive(Debug, Clone)]
struct Actions(Vec<&'static str>);

/// `--allow-actions` values (`weft_proto::task::Action::parse_list`).
fn actions_arg(text: &str) -> Result<Actions, String> {
    weft_proto::task::Action::parse_list(text)
        .map(Actions)
        .map_err(|e| e.to_string())
}

/// `--offload` values (and `WEFTD_OFFLOAD`, which has always been `0` or `1`).
fn on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(format!("{text:?}: use on or off (1 or 0)")),
    }
}

/// `--pipeline` values: `None` is `auto`.
#[derive(Debug, Clone, Copy)]
struct Pipeline(Option<bool>);

/// `--pipeline` values (and `WEFTD_PIPELINE`: `0`, `1`, or `auto`).
fn pipeline_arg(text: &str) -> Result<Pipeline, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(Pipeline(None)),
        other => on_off(other)
            .map(|on| Pipeline(Some(on)))
            .map_err(|_| format!("{text:?}: use auto, on or off (1 or 0)")),
    }
}

/// `--dns` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DnsArg {
    /// Run the resolver and point the system at it.
    Auto,
    /// No resolver, no system change.
    Off,
    /// The resolver serves every name (the system's only resolver).
    System,
}

/// `--dns-upstream` values.
fn dns_upstream_arg(text: &str) -> Result<weft_agent::DnsUpstream, String> {
    text.parse::<weft_agent::DnsUpstream>()
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(weft_agent::logring::LogTee::default)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if args.selfcheck_controlplane {
        return selfcheck(&args);
    }
    if args.update_nft_domain_set {
        return domain_set(&args);
    }
    let join = match (&args.controller, &args.token_file) {
        (Some(url), Some(file)) => Some(UpRequest {
            controller: Some(url.clone()),
            token: Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading token file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            ca_file: args.ca_file.clone(),
            pin_sha256: args.pin_sha256.clone(),
            allow_insecure_http: args.allow_insecure_http,
            name: args.name.clone(),
            advertise_routes: args.advertise_routes.clone(),
        }),
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("--controller and --token-file go together")
        }
        (None, None) => None,
    };
    let node_api = node_api_socket(args.node_api_socket.as_deref(), &args.socket).map(|socket| {
        weft_agent::NodeApiConfig {
            socket,
            access: weft_agent::NodeApiAccess {
                group: args.node_api_group.clone(),
                secret_uids: args.node_api_secret_uids.clone(),
            },
        }
    });
    let dns_mode = match args.dns {
        DnsArg::Auto => weft_agent::DnsMode::Auto,
        DnsArg::Off => weft_agent::DnsMode::Off,
        DnsArg::System => weft_agent::DnsMode::System,
    };
    let dns_resolver = weft_agent::DnsResolverOptions {
        upstreams: args.dns_upstream.clone(),
        upstream_ca: args.dns_upstream_ca.clone(),
        min_ttl: args.dns_min_ttl,
        max_ttl: args.dns_max_ttl,
        query_log: args.dns_query_log,
        query_log_max_bytes: args.dns_query_log_max_bytes,
    };
    dns_resolver
        .dns_config(dns_mode, &args.state_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = weft_agent::AgentConfig {
        usage_file: args.usage_file,
        state_dir: args.state_dir,
        socket: args.socket,
        port: args.port,
        mint_difficulty: args.mint_difficulty,
        join,
        dns: dns_mode,
        dns_resolver,
        dataplane: weft_agent::DataplaneConfig {
            offload: args.offload,
            pipeline: args.pipeline.0,
        },
        metrics_listen: args.metrics_listen.map(|addr| weft_agent::MetricsListen {
            addr,
            public: args.metrics_listen_public,
        }),
        node_api,
        tasks: {
            // Assigned field by field: the settings also hold what the agent
            // wires in itself (private fields), so no struct literal here.
            let mut t = weft_agent::TaskSettings::default();
            t.allow_exec = args.allow_exec;
            t.allow_actions = args.allow_actions.0;
            t.exec_user = args.exec_user;
            t.hooks_dir = args.hooks_dir;
            t
        },
        firewall_rollback: std::time::Duration::from_secs(args.firewall_rollback_secs),
        workload_subnet: args.workload_subnet,
        ssh_port: args.ssh.then_some(args.ssh_port),
    };
    cfg.tasks.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(weft_agent::run(cfg, shutdown_signal()))
}

/// `--selfcheck-controlplane`: no state directory, no credential, no token file.
#[allow(clippy::print_stdout, reason = "the check's one line of output")]
fn selfcheck(args: &Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let check = weft_agent::Selfcheck {
        controller: args.controller.clone().unwrap_or_default(),
        ca_file: args.ca_file.clone(),
        pin_sha256: args.pin_sha256.clone(),
        allow_insecure_http: args.allow_insecure_http,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let health = rt.block_on(weft_agent::selfcheck_controlplane(&check))?;
    println!(
        "controller {} answered GET /healthz with 200: status {}, API version {}, map version {}",
        check.controller, health.status, health.api_version, health.map_version
    );
    Ok(())
}

/// `--update-nft-domain-set`: no state directory, no credential.
#[allow(clippy::print_stdout, reason = "the command's one line of output")]
fn domain_set(args: &Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let req = weft_agent::domainset::DomainSetUpdate {
        host: args.host.clone().unwrap_or_default(),
        family: args.family.clone(),
        table: args.table.clone().unwrap_or_default(),
        set4: args.set.clone().unwrap_or_default(),
        set6: args.set6.clone(),
        dns_server: args.dns_server,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let done = rt.block_on(weft_agent::domainset::update_nft_domain_set(&req))?;
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(" ")
        }
    };
    let mut line = format!(
        "{} {}: {} = {}",
        req.family,
        req.table,
        req.set4,
        list(done.v4.iter().map(ToString::to_string).collect())
    );
    if let Some(set6) = &req.set6 {
        line.push_str(&format!(
            "; {set6} = {}",
            list(done.v6.iter().map(ToString::to_string).collect())
        ));
    }
    if let Some(ttl) = done.min_ttl {
        line.push_str(&format!(" (ttl {ttl} s)"));
    }
    println!("{line}");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop weftd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::node_api_socket;

    #[test]
    fn the_node_api_socket_follows_the_local_api_socket_unless_given() {
        let default = Path::new(weft_proto::local::DEFAULT_SOCKET);
        assert_eq!(
            node_api_socket(None, default),
            Some(PathBuf::from("/run/weft/node.sock"))
        );
        // A second agent (its own --socket) gets its own node API socket.
        assert_eq!(
            node_api_socket(None, Path::new("/tmp/lab/n1.sock")),
            Some(PathBuf::from("/tmp/lab/n1-node.sock"))
        );
        assert_eq!(
            node_api_socket(Some("/x/api.sock"), default),
            Some(PathBuf::from("/x/api.sock"))
        );
        assert_eq!(node_api_socket(Some("off"), default), None);
    }
}

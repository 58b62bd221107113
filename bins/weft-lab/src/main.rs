//! `weft-lab`: builds real network topologies from Linux namespaces for weft's
//! end-to-end tests and demo. This file only parses arguments and prints; the
//! work is in the `weft-lab` library.

#![allow(
    clippy::disallowed_methods,
    reason = "the lab is an I/O shell and reads the clock to wait"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weft_lab::Nat;
use weft_lab::probe::{self, ProbeOptions};
use weft_lab::selftest::{self, SelftestOptions};

/// Real network topologies for weft, from Linux network namespaces.
///
/// Builds hosts (namespaces), LANs (bridges), a shared "internet" segment
/// (198.18.0.0/16) and routers with NAT profiles (nftables), impairs links with
/// tc netem (or, on kernels without netem, a userspace delay/loss wire), and
/// runs real processes in them. Everything lives in namespaces
/// named wl-<run id>-<node> and is removed when the run ends, also when it is
/// killed. Needs root.
#[derive(Parser)]
#[command(name = "weft-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prove every NAT profile behaves as named, then clean up.
    ///
    /// Builds a lab with two observers and a third host on the internet and, per
    /// profile, a router with a host behind it. Each host sends from one UDP
    /// socket to both observers (which answer with the address they saw: the
    /// mapped address) and connects to one over TCP; the third host then sends
    /// to the mapped address. Prints a table and exits non-zero on any deviation.
    ///
    /// Profiles: open (no NAT), easy (endpoint-independent mapping, filtered),
    /// hard (a new mapped port per destination), fullcone (mapped port open to
    /// anyone), udp-blocked (only TCP leaves), cgnat (home NAT behind a carrier
    /// NAT in 100.64.0.0/10).
    Selftest {
        /// Test only this profile (repeatable): open, easy, hard, fullcone,
        /// udp-blocked, cgnat. Default: all.
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<Nat>,
    },
    /// The NAT traversal matrix: every pair of NAT profiles (open, easy, fullcone,
    /// hard, udp-blocked, cgnat), each side behind its own router, with a real
    /// controller, relay and agents. Prints per pair the path reached and the time
    /// to the first packet and to a direct path; exits non-zero if any pair falls
    /// short of what its NATs allow.
    Grid {
        /// Only these profiles (repeatable); default all six.
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<Nat>,
        /// Seconds each pair may take to connect and go direct.
        #[arg(long, default_value_t = 20)]
        settle_secs: u64,
        /// Delay added to every router's uplink, each direction, in ms (netem,
        /// or the lab's userspace wire on kernels without it).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Loss on every router's uplink, each direction, in percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
    /// Remove what crashed runs left behind (namespaces, processes, log state of
    /// runs whose owner is dead).
    ///
    /// Every run records its owner process in /run/weft-lab/<run id>/owner. Runs
    /// of live owners are left alone. Labs also sweep when they start.
    Sweep,
    /// Benchmark: iperf3 throughput and ping RTT between two weft nodes (each
    /// behind an easy NAT) over the direct path and over the relay (forced by
    /// dropping the data plane's UDP at one router), in the same run; prints
    /// medians and the relay/direct ratio. Used by bench/relay-vs-direct.
    BenchPaths {
        /// iperf3 seconds per measurement.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Rounds (each measures direct, then relay).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// Pings per RTT measurement (10 ms apart).
        #[arg(long, default_value_t = 200)]
        pings: u32,
        /// iperf3 parallel streams.
        #[arg(long, default_value_t = 1)]
        streams: u32,
    },
    /// The quickstart: a controller and 3 agents on a shared LAN behind a NAT,
    /// joined with a token; waits until every pair pings over the overlay, prints a
    /// status table, then runs until Ctrl-C and cleans up.
    Demo {
        /// Exit 0 after the table if the mesh is complete (1 if not) instead of
        /// waiting for Ctrl-C; for scripts and CI.
        #[arg(long)]
        check: bool,
        /// Number of agents.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=8))]
        nodes: u8,
    },
    /// Run the fault suite: hostile and unlucky events against real weft
    /// binaries in lab namespaces, each checked with counts.
    ///
    /// Cases (in order; --case picks some):
    ///   spoofed-source      a packet with another node's inner source is dropped
    ///                       and counted (spoofed_source)
    ///   replayed-packets    encrypted datagrams captured on the underlay and sent
    ///                       again are not delivered twice (replay counted)
    ///   wrong-network       a node of network `other` cannot reach network `lab`
    ///   unauthorized-peer   a peer the policy does not allow, and a WireGuard key
    ///                       in no map, are dropped and counted
    ///   policy-churn        100 policy edits under iperf3, ping and open flows: no
    ///                       allowed flow cut, every disallowed flow cut
    ///   agent-sigkill       kill -9 weftd, restart from its cache (controller down,
    ///                       then up): interface, routes, nft, DNS and pings back
    ///   relay-restart       relay-only peers reconnect after the relay restarts
    ///   stream-flapping     a node's map stream closes repeatedly; its peers see no
    ///                       map change
    ///   challenge-flood     a registration succeeds while one source floods
    ///                       /v1/register/challenge
    ///   idle-connections    2000 idle connections each to controller and relay, 50
    ///                       slowloris: the controller still answers within 2 s
    ///   token-cleartext     weft up with http:// to a non-loopback controller is
    ///                       refused and sends nothing
    ///   controller-sigkill  kill -9 the controller under admin writes: every
    ///                       acknowledged write is still there
    ///   state-loss          a deleted TLS key (controller, relay) or an empty
    ///                       database is refused at start, naming the file
    ///
    /// Prints a table (case, result, time, counts, what was done and checked) and
    /// exits 1 if any case failed. Needs root, python3, iperf3 and the weft
    /// binaries (cargo build --workspace --bins); takes about 4 minutes. Logs of
    /// every process stay in /tmp/weft-lab/<run id>/.
    #[command(verbatim_doc_comment)]
    Faults {
        /// Run only this case (repeatable); default all.
        #[arg(long = "case", value_name = "CASE",
              value_parser = clap::builder::PossibleValuesParser::new(weft_lab::faults::case_names()))]
        cases: Vec<String>,
    },
    /// Send WireGuard handshake initiations from random keys (fault-suite helper).
    #[command(name = "__wg-stranger", hide = true)]
    WgStranger {
        #[arg(long)]
        peer_key: weft_lab::faults::stranger::NodeKey,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// With a node's own identity, handshake with a peer and send it UDP packets
    /// with any inner source (fault-suite helper: a rogue node).
    #[command(name = "__wg-spoof", hide = true)]
    WgSpoof {
        #[arg(long)]
        identity: PathBuf,
        #[arg(long)]
        peer_key: weft_lab::faults::stranger::NodeKey,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        src: std::net::Ipv4Addr,
        #[arg(long)]
        dst: std::net::Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value = "spoof")]
        tag: String,
    },
    /// Answer UDP and TCP probes with the source address seen (self-test helper).
    #[command(name = "__udp-observer", hide = true)]
    UdpObserver {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Probe observers from one UDP socket and report mappings as JSON (self-test helper).
    #[command(name = "__udp-probe", hide = true)]
    UdpProbe {
        #[arg(long = "to")]
        udp: Vec<SocketAddr>,
        #[arg(long = "tcp")]
        tcp: Vec<SocketAddr>,
        #[arg(long, default_value_t = 0)]
        listen_ms: u64,
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// Send unsolicited datagrams to an address (self-test helper).
    #[command(name = "__udp-send", hide = true)]
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 5)]
        count: u32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Build a small lab and sleep until killed (crash-cleanup test helper).
    #[command(name = "__hold", hide = true)]
    Hold,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, reason = "this is the binary's output")]
fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match command {
        Cmd::Selftest { profiles } => {
            install_ctrlc()?;
            let mut opts = SelftestOptions::default();
            if !profiles.is_empty() {
                opts.profiles = profiles;
            }
            let report = selftest::run(&opts).context("self-test could not run")?;
            print!("{report}");
            return Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Sweep => print!("{}", weft_lab::sweep()?),
        Cmd::BenchPaths {
            duration,
            runs,
            pings,
            streams,
        } => {
            install_ctrlc()?;
            let opts = weft_lab::pathbench::PathBenchOptions {
                duration: Duration::from_secs(duration),
                runs: runs.max(1),
                pings: pings.max(1),
                streams: streams.max(1),
            };
            print!("{}", weft_lab::pathbench::run(&opts)?);
        }
        Cmd::Grid {
            profiles,
            settle_secs,
            delay_ms,
            loss,
        } => {
            install_ctrlc()?;
            let profiles = if profiles.is_empty() {
                weft_lab::grid::PROFILES.to_vec()
            } else {
                profiles
            };
            let uplink =
                weft_lab::Impairment::delay(Duration::from_millis(delay_ms)).with_loss(loss);
            let report =
                weft_lab::grid::run_impaired(&profiles, Duration::from_secs(settle_secs), uplink)?;
            print!("{report}");
            return Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Faults { cases } => {
            install_ctrlc()?;
            let opts = weft_lab::faults::FaultsOptions { cases };
            let report = weft_lab::faults::run(&opts, &mut |r| {
                eprintln!(
                    "weft-lab faults: {} {} ({:.1}s)",
                    r.def.name,
                    if r.passed() { "PASS" } else { "FAIL" },
                    r.took.as_secs_f64()
                );
            })?;
            print!("{report}");
            return Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::WgStranger {
            peer_key,
            to,
            count,
        } => {
            let sent = weft_lab::faults::stranger::send_initiations(&peer_key, to, count)?;
            println!("sent {sent} handshake initiations to {to}");
        }
        Cmd::WgSpoof {
            identity,
            peer_key,
            to,
            src,
            dst,
            port,
            count,
            tag,
        } => {
            let sent = weft_lab::faults::stranger::send_as(
                &identity,
                &peer_key,
                to,
                (src, dst, port),
                count,
                &tag,
            )?;
            println!("sent {sent} packets from {src} to {dst}:{port} through a session with {to}");
        }
        Cmd::Demo { check, nodes } => {
            install_ctrlc()?;
            return demo(check, nodes);
        }
        Cmd::UdpObserver { listen } => probe::run_observer(listen, &mut stdout)?,
        Cmd::UdpProbe {
            udp,
            tcp,
            listen_ms,
            stop_file,
        } => {
            let opts = ProbeOptions {
                udp,
                tcp,
                listen: Duration::from_millis(listen_ms),
                stop_file,
            };
            probe::run_probe(&opts, &mut stdout)?;
        }
        Cmd::UdpSend {
            to,
            count,
            interval_ms,
        } => probe::run_send(to, count, Duration::from_millis(interval_ms))?,
        Cmd::Hold => {
            install_ctrlc()?;
            selftest::hold(&weft_lab::bin_path("weft-lab")?, &mut stdout)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// On Ctrl-C / SIGTERM: tear down this process's labs, then exit 130.
fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("weft-lab: interrupted, removing the lab");
        weft_lab::teardown_active_runs();
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

#[allow(clippy::print_stdout, reason = "this is the binary's output")]
fn demo(check: bool, nodes: u8) -> anyhow::Result<ExitCode> {
    use std::time::Instant;
    use weft_lab::mesh::{Mesh, NetworkSpec};
    use weft_lab::{Lab, Net, Topology};

    let names: Vec<String> = (0..nodes).map(|i| format!("node{}", i + 1)).collect();
    let mut topo = Topology::new().host("controller", Net::Internet).router(
        "office",
        Net::Internet,
        Nat::Easy,
    );
    for n in &names {
        topo = topo.host(n, Net::lan("office"));
    }
    let start = Instant::now();
    println!(
        "building the lab: a controller on the internet, {nodes} machines on an office LAN behind NAT"
    );
    let lab = Lab::build(&topo).context("building the lab")?;
    println!("starting weft-controller and creating network `lab` (100.64.0.0/24)");
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default())?;
    println!(
        "  controller {} (certificate {})",
        mesh.controller.url, mesh.controller.fingerprint
    );
    let token = mesh.token_file(u32::from(nodes))?;
    for n in &names {
        println!("starting weftd on {n} and joining with the token");
        mesh.start_agent(n, Some(&token))?;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    println!("waiting until every pair pings over the overlay...");
    let result = mesh.wait_full_mesh(&refs, Duration::from_secs(30));
    println!();
    print!("{}", mesh.status_table());
    println!();
    match &result {
        Ok(()) => println!(
            "full mesh: all {} pairs ping each other over the overlay ({:.1}s from an empty machine)",
            refs.len() * (refs.len() - 1),
            start.elapsed().as_secs_f64()
        ),
        Err(e) => println!("mesh incomplete: {e:#}"),
    }
    println!("logs: {}", lab.log_dir().display());
    if check {
        return Ok(if result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!(
        "running; try: ip netns exec {} {} --socket {} status   (Ctrl-C to stop and clean up)",
        lab.netns(&names[0])?,
        weft_lab::bin_path("weft")?.display(),
        mesh.agents
            .get(&names[0])
            .map(|a| a.socket.display().to_string())
            .unwrap_or_default()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

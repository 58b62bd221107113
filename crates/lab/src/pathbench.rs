//! Relay vs direct: throughput (iperf3) and round-trip time (ping) between two
//! weft nodes over their direct path and over the relay, in one run, so the
//! ratio is measured against a reference taken on the same machine minutes
//! apart. Behind `weft-lab bench-paths` and `bench/relay-vs-direct`.
//!
//! Topology: `infra` (controller and relay) on the internet segment, `a` and
//! `b` behind their own easy NATs (`ra`, `rb`), so the direct path is a real
//! hole-punched one. The relay path is forced by dropping the data plane's UDP
//! (port 51820) in `ra`'s forward chain, as a firewall would; removing the rule
//! brings the direct path back. Each round measures direct, then relay.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::mesh::{Mesh, NetworkSpec};
use crate::{Lab, Nat, Net, Topology};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PathBenchOptions {
    /// iperf3 run length per measurement.
    pub duration: Duration,
    /// Rounds (each: direct then relay); the report shows medians.
    pub runs: u32,
    /// Pings per RTT measurement (10 ms apart).
    pub pings: u32,
    /// iperf3 parallel streams.
    pub streams: u32,
}

impl Default for PathBenchOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(5),
            runs: 1,
            pings: 200,
            streams: 1,
        }
    }
}

/// One measurement of one path.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathSample {
    /// iperf3 receiver throughput, Mbit/s.
    pub mbps: f64,
    /// Average ping RTT, ms.
    pub rtt_avg_ms: f64,
    /// Minimum ping RTT, ms.
    pub rtt_min_ms: f64,
    /// Ping loss, percent.
    pub loss_pct: f64,
    /// iperf3 sender retransmissions.
    pub retransmits: u64,
}

/// Every sample, per path.
#[derive(Debug, Clone, Default)]
pub struct PathBenchReport {
    /// Direct path samples, one per round.
    pub direct: Vec<PathSample>,
    /// Relay path samples, one per round.
    pub relay: Vec<PathSample>,
    /// Options used.
    pub duration: Duration,
    /// Streams used.
    pub streams: u32,
}

/// A table column: heading, value, decimals.
type Column = (&'static str, fn(&PathSample) -> f64, usize);

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

impl std::fmt::Display for PathBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = |s: &[PathSample], g: fn(&PathSample) -> f64| median(s.iter().map(g).collect());
        let cols: [Column; 5] = [
            ("throughput Mbit/s", |s| s.mbps, 1),
            ("RTT avg ms", |s| s.rtt_avg_ms, 3),
            ("RTT min ms", |s| s.rtt_min_ms, 3),
            ("ping loss %", |s| s.loss_pct, 1),
            ("TCP retransmits", |s| s.retransmits as f64, 0),
        ];
        writeln!(
            f,
            "relay vs direct: {} round(s), iperf3 {} s x {} stream(s), medians",
            self.direct.len(),
            self.duration.as_secs(),
            self.streams
        )?;
        write!(f, "{:<14}", "path")?;
        for (name, _, _) in &cols {
            write!(f, "{name:>20}")?;
        }
        writeln!(f)?;
        for (label, samples) in [("direct", &self.direct), ("relay", &self.relay)] {
            write!(f, "{label:<14}")?;
            for (_, g, prec) in &cols {
                write!(f, "{:>20.*}", *prec, m(samples, *g))?;
            }
            writeln!(f)?;
        }
        write!(f, "{:<14}", "relay/direct")?;
        for (i, (_, g, _)) in cols.iter().enumerate() {
            if i < 3 {
                write!(f, "{:>20.3}", m(&self.relay, *g) / m(&self.direct, *g))?;
            } else {
                write!(f, "{:>20}", "-")?;
            }
        }
        writeln!(f)
    }
}

/// Builds the lab, starts the mesh and measures.
pub fn run(opts: &PathBenchOptions) -> anyhow::Result<PathBenchReport> {
    let lab = Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .router("ra", Net::Internet, Nat::Easy)
            .router("rb", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("b", Net::lan("rb")),
    )?;
    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default())?;
    mesh.start_relay("infra")?;
    let token = mesh.token_file(2)?;
    mesh.start_agent("a", Some(&token))?;
    mesh.start_agent("b", Some(&token))?;
    mesh.wait_full_mesh(&["a", "b"], Duration::from_secs(30))?;
    let ip_b = mesh.overlay_ip("b")?;
    let mut server = Command::new("iperf3");
    server.args(["-s", "-B", &ip_b.to_string(), "-p", "5201"]);
    let mut srv = lab.spawn("b", "iperf3-server", &server)?;
    srv.wait_for_tcp_listen(5201, Duration::from_secs(10))?;

    let mut report = PathBenchReport {
        duration: opts.duration,
        streams: opts.streams,
        ..PathBenchReport::default()
    };
    for round in 1..=opts.runs {
        unblock_udp(&lab)?;
        wait_path(&mesh, true)?;
        let s = measure(&lab, &ip_b.to_string(), opts)?;
        eprintln!("round {round}: direct {s:?}");
        report.direct.push(s);
        block_udp(&lab)?;
        wait_path(&mesh, false)?;
        let s = measure(&lab, &ip_b.to_string(), opts)?;
        eprintln!("round {round}: relay  {s:?}");
        report.relay.push(s);
    }
    unblock_udp(&lab)?;
    Ok(report)
}

fn block_udp(lab: &Lab) -> anyhow::Result<()> {
    let chain = "{ type filter hook forward priority -10 ; }";
    lab.run("ra", &["nft", "add", "table", "ip", "wl_bench"])?;
    lab.run(
        "ra",
        &["nft", "add", "chain", "ip", "wl_bench", "block", chain],
    )?;
    for dir in ["dport", "sport"] {
        lab.run(
            "ra",
            &[
                "nft", "add", "rule", "ip", "wl_bench", "block", "udp", dir, "51820", "drop",
            ],
        )
        .context("blocking UDP at ra")?;
    }
    Ok(())
}

fn unblock_udp(lab: &Lab) -> anyhow::Result<()> {
    // Absent is fine: create then delete.
    lab.run(
        "ra",
        &[
            "sh",
            "-c",
            "nft add table ip wl_bench && nft delete table ip wl_bench",
        ],
    )
    .map(drop)
    .context("unblocking UDP at ra")
}

fn wait_path(mesh: &Mesh<'_>, direct: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ok = |n: &str, p: &str| {
            mesh.path(n, p).is_some_and(|x| {
                if direct {
                    x.starts_with("direct")
                } else {
                    x == "relay"
                }
            })
        };
        if ok("a", "b") && ok("b", "a") {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "the path did not become {} within 20 s: a->b {:?}, b->a {:?}",
                if direct { "direct" } else { "relay" },
                mesh.path("a", "b"),
                mesh.path("b", "a")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn measure(lab: &Lab, ip_b: &str, opts: &PathBenchOptions) -> anyhow::Result<PathSample> {
    let mut s = PathSample::default();
    let mut cmd = Command::new("ping");
    cmd.args([
        "-c",
        &opts.pings.to_string(),
        "-i",
        "0.01",
        "-W",
        "2",
        "-n",
        "-q",
        ip_b,
    ]);
    // Loss makes ping exit 1; its summary is still what we want.
    let mut cmd = crate::process::in_netns_like(&lab.netns("a")?, &cmd);
    let out = crate::cmd::output(&mut cmd, None)?;
    let ping = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in ping.lines() {
        if let Some(loss) = line
            .split(',')
            .find(|p| p.contains("packet loss"))
            .and_then(|p| p.trim().split('%').next())
            .and_then(|v| v.parse().ok())
        {
            s.loss_pct = loss;
        }
        if let Some(v) = line.split(" = ").nth(1) {
            let nums: Vec<f64> = v.split([' ', '/']).filter_map(|x| x.parse().ok()).collect();
            if nums.len() >= 2 {
                s.rtt_min_ms = nums[0];
                s.rtt_avg_ms = nums[1];
            }
        }
    }
    let secs = opts.duration.as_secs().max(1).to_string();
    let json = lab
        .run(
            "a",
            &[
                "iperf3",
                "-c",
                ip_b,
                "-p",
                "5201",
                "-t",
                &secs,
                "-O",
                "1",
                "-P",
                &opts.streams.to_string(),
                "-J",
            ],
        )
        .context("iperf3 over the overlay")?;
    let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 -J output")?;
    s.mbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no throughput in the iperf3 output")?
        / 1e6;
    s.retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(s)
}

//! The lab's self-test: proves each NAT profile behaves as named, with real
//! probes in real namespaces (see [`crate::probe`]).
//!
//! Topology: observers `obs1`, `obs2` and a third host `stranger` on the internet;
//! per profile `P`, a router `nat-P` (profile `P`) with a host `h-P` behind it
//! (for `cgnat`, `nat-cgnat` sits behind the carrier router `nat-cgnat-isp`).
//! Each host probes both observers from one UDP socket and one over TCP; the
//! stranger then sends to the mapped address. Profiles run in parallel.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::probe::{self, ProbeReport};
use crate::process::Process;
use crate::topology::{CGNAT_CARRIER_SUFFIX, Nat, Net, SHARED_CIDR, Topology};

/// The observers' port (STUN's).
pub const OBSERVER_PORT: u16 = 3478;

/// The longest the probe listens for the stranger's datagrams; it normally stops
/// [`STRANGER_GRACE`] after the stranger has sent its last one.
const LISTEN_MAX: Duration = Duration::from_secs(10);
/// Time for the stranger's last datagram to cross the lab.
const STRANGER_GRACE: Duration = Duration::from_millis(200);
/// Generous bound on any one wait (the whole test takes a few seconds).
const WAIT: Duration = Duration::from_secs(15);

/// Self-test settings.
#[derive(Clone, Debug)]
pub struct SelftestOptions {
    /// The profiles to test (all by default).
    pub profiles: Vec<Nat>,
    /// The `weft-lab` binary run inside the nodes (default: [`crate::bin_path`]).
    pub lab_bin: Option<PathBuf>,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        Self {
            profiles: Nat::ALL.to_vec(),
            lab_bin: None,
        }
    }
}

/// The observed facts for one profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The probing host's own address.
    pub host: Option<Ipv4Addr>,
    /// The router's public (uplink) address; for `cgnat` the carrier's.
    pub public: Option<Ipv4Addr>,
    /// For `cgnat`: the home router's uplink address (inside the carrier LAN).
    pub home_wan: Option<Ipv4Addr>,
    /// For `cgnat`: whether the home router's conntrack shows the probe's flow
    /// translated to `home_wan`.
    pub home_nat_seen: Option<bool>,
    /// The stranger's address.
    pub stranger: Option<Ipv4Addr>,
    /// What the probe reported.
    pub probe: ProbeReport,
}

/// One row of the result table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The profile.
    pub profile: Nat,
    /// What was observed.
    pub facts: Facts,
    /// Every deviation from the expectation; empty means PASS.
    pub failures: Vec<String>,
}

/// The self-test's outcome.
#[derive(Clone, Debug)]
pub struct SelftestReport {
    /// The lab run the test used.
    pub run_id: String,
    /// Its log directory.
    pub log_dir: PathBuf,
    /// One row per profile.
    pub rows: Vec<Row>,
    /// Wall time, build to teardown.
    pub elapsed: Duration,
}

impl SelftestReport {
    /// Whether every profile behaved as expected.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.failures.is_empty())
    }
}

/// What each profile must show, in words (the table's EXPECTATION column).
pub fn expectation(profile: Nat) -> &'static str {
    match profile {
        Nat::Open => "mapped = own address; 3rd host gets in",
        Nat::Easy => "same mapping for both; 3rd host filtered",
        Nat::Hard => "new mapped port per destination",
        Nat::FullCone => "same mapping for both; 3rd host gets in",
        Nat::UdpBlocked => "no UDP reply at all; TCP works",
        Nat::Cgnat => "mapped = carrier; home NAT in 100.64/10",
    }
}

/// Checks `facts` against what `profile` promises. Returns the deviations. Pure.
pub fn evaluate(profile: Nat, facts: &Facts) -> Vec<String> {
    let mut fail = Vec::new();
    let udp: Vec<Option<SocketAddr>> = facts.probe.udp.iter().map(|m| m.mapped).collect();
    let tcp = facts.probe.tcp.first().and_then(|m| m.mapped);
    let expect_ip =
        |addr: Option<SocketAddr>, want: Option<Ipv4Addr>, what: &str, fail: &mut Vec<String>| {
            match (addr, want) {
                (Some(a), Some(w)) if a.ip() == IpAddr::V4(w) => {}
                (a, w) => fail.push(format!(
                    "{what}: expected address {}, got {}",
                    show_ip(w),
                    show(a)
                )),
            }
        };
    let [first, second] = match udp.as_slice() {
        [a, b] => [*a, *b],
        _ => {
            fail.push(format!("expected 2 UDP observations, got {}", udp.len()));
            return fail;
        }
    };
    let public = match profile {
        Nat::Open => facts.host,
        _ => facts.public,
    };
    if profile == Nat::UdpBlocked {
        if first.is_some() || second.is_some() {
            fail.push(format!(
                "UDP got through: {} / {}",
                show(first),
                show(second)
            ));
        }
    } else {
        expect_ip(first, public, "UDP via obs1", &mut fail);
        expect_ip(second, public, "UDP via obs2", &mut fail);
        match profile {
            Nat::Hard => {
                if first.is_some() && first.map(|a| a.port()) == second.map(|a| a.port()) {
                    fail.push(format!(
                        "same mapped port for both observers ({})",
                        show(first)
                    ));
                }
            }
            _ => {
                if first != second {
                    fail.push(format!(
                        "mapping differs per destination: {} vs {}",
                        show(first),
                        show(second)
                    ));
                }
            }
        }
        if profile == Nat::Open && first.map(|a| a.port()) != Some(facts.probe.local_port) {
            fail.push(format!(
                "open must keep the port {}",
                facts.probe.local_port
            ));
        }
    }
    expect_ip(tcp, public, "TCP via obs1", &mut fail);
    let unsolicited_in = matches!(profile, Nat::Open | Nat::FullCone);
    match (unsolicited_in, facts.probe.unsolicited) {
        (true, Some(from)) if Some(from.ip()) == facts.stranger.map(IpAddr::V4) => {}
        (true, got) => fail.push(format!(
            "the 3rd host's datagram did not arrive (got {})",
            show(got)
        )),
        (false, Some(from)) => fail.push(format!("unsolicited datagram from {from} got through")),
        (false, None) => {}
    }
    if profile == Nat::Cgnat {
        match facts.home_wan {
            Some(home) if SHARED_CIDR.contains(home) => {
                if first.is_some_and(|a| a.ip() == IpAddr::V4(home)) {
                    fail.push("mapped address is the home router's, not the carrier's".to_owned());
                }
            }
            other => fail.push(format!(
                "home router uplink {} is not in {SHARED_CIDR}",
                show_ip(other)
            )),
        }
        if facts.home_nat_seen != Some(true) {
            fail.push("the home router's conntrack shows no NAT of the probe's flow".to_owned());
        }
    }
    fail
}

/// Builds the self-test lab, probes every requested profile, tears down.
pub fn run(opts: &SelftestOptions) -> Result<SelftestReport> {
    crate::require_root()?;
    let start = Instant::now();
    let bin = match &opts.lab_bin {
        Some(bin) => bin.clone(),
        None => crate::bin_path("weft-lab")?,
    };
    let mut profiles = opts.profiles.clone();
    profiles.sort();
    profiles.dedup();
    let mut topo = Topology::new()
        .host("obs1", Net::Internet)
        .host("obs2", Net::Internet)
        .host("stranger", Net::Internet);
    for nat in &profiles {
        let router = router_name(*nat);
        topo = topo
            .router(&router, Net::Internet, *nat)
            .host(format!("h-{nat}"), Net::lan(&router));
    }
    let lab = Lab::build(&topo)?;
    let _observers = [
        start_observer(&lab, &bin, "obs1")?,
        start_observer(&lab, &bin, "obs2")?,
    ];
    let rows = std::thread::scope(|s| {
        let handles: Vec<_> = profiles
            .iter()
            .map(|nat| {
                let (lab, bin) = (&lab, &bin);
                s.spawn(move || test_profile(lab, bin, *nat))
            })
            .collect();
        handles
            .into_iter()
            .zip(&profiles)
            .map(|(h, nat)| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::Probe(format!("the {nat} probe thread panicked")))
                })
            })
            .collect::<Result<Vec<Row>>>()
    })?;
    let (run_id, log_dir) = (lab.run_id().to_owned(), lab.log_dir().to_path_buf());
    drop(_observers);
    lab.teardown()?;
    Ok(SelftestReport {
        run_id,
        log_dir,
        rows,
        elapsed: start.elapsed(),
    })
}

fn router_name(nat: Nat) -> String {
    format!("nat-{nat}")
}

fn start_observer(lab: &Lab, bin: &Path, node: &str) -> Result<Process> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "__udp-observer",
        "--listen",
        &format!("0.0.0.0:{OBSERVER_PORT}"),
    ]);
    let mut p = lab.spawn(node, "observer", &cmd)?;
    p.wait_for_log(probe::OBSERVER_READY, WAIT)?;
    p.wait_for_udp_bound(OBSERVER_PORT, WAIT)?;
    Ok(p)
}

fn test_profile(lab: &Lab, bin: &Path, nat: Nat) -> Result<Row> {
    let host = format!("h-{nat}");
    let router = router_name(nat);
    let obs1 = SocketAddr::new(lab.addr("obs1")?.into(), OBSERVER_PORT);
    let obs2 = SocketAddr::new(lab.addr("obs2")?.into(), OBSERVER_PORT);
    let stop_file = lab.log_dir().join(format!("{host}-probe.stop"));
    let mut cmd = Command::new(bin);
    cmd.arg("__udp-probe")
        .args(["--to", &obs1.to_string(), "--to", &obs2.to_string()])
        .args(["--tcp", &obs1.to_string()])
        .args(["--listen-ms", &LISTEN_MAX.as_millis().to_string()])
        .arg("--stop-file")
        .arg(&stop_file);
    let mut probe = lab.spawn(&host, "probe", &cmd)?;
    let line = probe.wait_for_log(probe::MAPPED_PREFIX, WAIT)?;
    let mapped = probe::parse_line(&line, probe::MAPPED_PREFIX)?;
    if let Some(target) = mapped.udp.first().and_then(|m| m.mapped) {
        let mut send = Command::new(bin);
        send.args([
            "__udp-send",
            "--to",
            &target.to_string(),
            "--count",
            "5",
            "--interval-ms",
            "50",
        ]);
        lab.exec("stranger", &send)?;
        std::thread::sleep(STRANGER_GRACE);
    }
    std::fs::write(&stop_file, b"")
        .map_err(|e| LabError::io(format!("cannot create {}", stop_file.display()), e))?;
    let status = probe.wait_exit(WAIT)?;
    let log = probe.log()?;
    if !status.success() {
        return Err(LabError::Probe(format!(
            "the {nat} probe exited with {status}:\n{log}"
        )));
    }
    let report = probe::parse_line(&log, probe::RESULT_PREFIX)?;
    let mut facts = Facts {
        host: Some(lab.addr(&host)?),
        public: Some(lab.addr(&router)?),
        stranger: Some(lab.addr("stranger")?),
        probe: report,
        ..Facts::default()
    };
    if nat == Nat::Cgnat {
        let home_wan = lab.addr(&router)?;
        facts.public = Some(lab.addr(&format!("{router}{CGNAT_CARRIER_SUFFIX}"))?);
        facts.home_wan = Some(home_wan);
        let conntrack = lab.run(&router, &["cat", "/proc/net/nf_conntrack"])?;
        let host_ip = format!("src={}", lab.addr(&host)?);
        let translated = format!("dst={home_wan}");
        facts.home_nat_seen = Some(
            conntrack
                .lines()
                .any(|l| l.contains(" udp ") && l.contains(&host_ip) && l.contains(&translated)),
        );
    }
    let failures = evaluate(nat, &facts);
    Ok(Row {
        profile: nat,
        facts,
        failures,
    })
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

fn show_ip(addr: Option<Ipv4Addr>) -> String {
    addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

impl fmt::Display for SelftestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "PROFILE",
            "HOST",
            "UDP MAPPED VIA OBS1",
            "UDP MAPPED VIA OBS2",
            "TCP VIA OBS1",
            "3RD HOST",
            "EXPECTATION",
            "RESULT",
        ];
        let rows: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                let udp = |i: usize| show(r.facts.probe.udp.get(i).and_then(|m| m.mapped));
                [
                    r.profile.to_string(),
                    show_ip(r.facts.host),
                    udp(0),
                    udp(1),
                    show(r.facts.probe.tcp.first().and_then(|m| m.mapped)),
                    if r.facts.probe.unsolicited.is_some() {
                        "got in".to_owned()
                    } else {
                        "blocked".to_owned()
                    },
                    expectation(r.profile).to_owned(),
                    if r.failures.is_empty() {
                        "PASS".to_owned()
                    } else {
                        "FAIL".to_owned()
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: &[&str], f: &mut fmt::Formatter<'_>| -> fmt::Result {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(f, "{}", padded.join("  ").trim_end())
        };
        line(&header, f)?;
        for (row, r) in rows.iter().zip(&self.rows) {
            line(&row.each_ref().map(String::as_str), f)?;
            for failure in &r.failures {
                writeln!(f, "    ! {failure}")?;
            }
        }
        let failed = self.rows.iter().filter(|r| !r.failures.is_empty()).count();
        writeln!(
            f,
            "\n{} of {} profiles passed in {:.1}s (run {}, logs in {})",
            self.rows.len() - failed,
            self.rows.len(),
            self.elapsed.as_secs_f64(),
            self.run_id,
            self.log_dir.display()
        )
    }
}

/// For crash tests (`weft-lab __hold`): builds a small lab (a server on the
/// internet, a host behind an easy NAT), starts an observer in it, writes
/// `HOLD run=<id> reaper=<pid> child=<pid>` to `out`, and sleeps until killed.
pub fn hold(bin: &Path, out: &mut impl std::io::Write) -> Result<()> {
    let lab = Lab::build(
        &Topology::new()
            .host("srv", Net::Internet)
            .router("home", Net::Internet, Nat::Easy)
            .host("a", Net::lan("home")),
    )?;
    let child = start_observer(&lab, bin, "srv")?;
    writeln!(
        out,
        "HOLD run={} reaper={} child={}",
        lab.run_id(),
        lab.reaper_pid().unwrap_or(0),
        child.pid()
    )
    .and_then(|()| out.flush())
    .map_err(|e| LabError::io("cannot write to stdout", e))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Mapping;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn facts(udp: [Option<&str>; 2], tcp: Option<&str>, unsolicited: Option<&str>) -> Facts {
        let obs = sa("198.18.0.10:3478");
        Facts {
            host: Some(Ipv4Addr::new(10, 1, 0, 10)),
            public: Some(Ipv4Addr::new(198, 18, 0, 20)),
            stranger: Some(Ipv4Addr::new(198, 18, 0, 12)),
            probe: ProbeReport {
                local_port: 40000,
                udp: udp
                    .iter()
                    .map(|m| Mapping {
                        observer: obs,
                        mapped: m.map(sa),
                    })
                    .collect(),
                tcp: vec![Mapping {
                    observer: obs,
                    mapped: tcp.map(sa),
                }],
                unsolicited: unsolicited.map(sa),
            },
            ..Facts::default()
        }
    }

    #[test]
    fn easy_passes_with_one_mapping_and_filtering() {
        let f = facts(
            [Some("198.18.0.20:40000"), Some("198.18.0.20:40000")],
            Some("198.18.0.20:5555"),
            None,
        );
        assert!(
            evaluate(Nat::Easy, &f).is_empty(),
            "{:?}",
            evaluate(Nat::Easy, &f)
        );
        // The same facts are not hard NAT (one port) and not full cone (filtered).
        assert!(!evaluate(Nat::Hard, &f).is_empty());
        assert!(!evaluate(Nat::FullCone, &f).is_empty());
        assert!(!evaluate(Nat::UdpBlocked, &f).is_empty());
    }

    #[test]
    fn hard_needs_different_ports() {
        let f = facts(
            [Some("198.18.0.20:1111"), Some("198.18.0.20:2222")],
            Some("198.18.0.20:3333"),
            None,
        );
        assert!(evaluate(Nat::Hard, &f).is_empty());
        assert!(!evaluate(Nat::Easy, &f).is_empty());
    }

    #[test]
    fn fullcone_needs_the_stranger() {
        let f = facts(
            [Some("198.18.0.20:40000"), Some("198.18.0.20:40000")],
            Some("198.18.0.20:5555"),
            Some("198.18.0.12:6000"),
        );
        assert!(evaluate(Nat::FullCone, &f).is_empty());
        assert!(!evaluate(Nat::Easy, &f).is_empty());
    }

    #[test]
    fn udp_blocked_needs_silence_and_tcp() {
        let f = facts([None, None], Some("198.18.0.20:5555"), None);
        assert!(evaluate(Nat::UdpBlocked, &f).is_empty());
        let no_tcp = facts([None, None], None, None);
        assert!(!evaluate(Nat::UdpBlocked, &no_tcp).is_empty());
    }

    #[test]
    fn cgnat_needs_the_home_router_in_shared_space() {
        let mut f = facts(
            [Some("198.18.0.20:40000"), Some("198.18.0.20:40000")],
            Some("198.18.0.20:5555"),
            None,
        );
        f.home_wan = Some(Ipv4Addr::new(100, 64, 1, 10));
        f.home_nat_seen = Some(true);
        assert!(evaluate(Nat::Cgnat, &f).is_empty());
        f.home_nat_seen = Some(false);
        assert!(!evaluate(Nat::Cgnat, &f).is_empty());
    }
}

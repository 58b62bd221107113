//! The NAT traversal grid: every pair of NAT profiles, each side behind its own
//! router, one controller and one relay on the "internet". For each pair it
//! measures the time until the first overlay ping answers and until the path is
//! direct, and checks the outcome against what the NAT types allow.
//!
//! All agents join one network in one lab, so every pair is set up at once; the
//! grid reads each pair's result from `weft status` and pings.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::mesh::{Mesh, NetworkSpec};
use crate::{Impairment, Lab, Nat, Net, Topology};

/// The profiles of the grid, in display order.
pub const PROFILES: [Nat; 6] = [
    Nat::Open,
    Nat::Easy,
    Nat::FullCone,
    Nat::Hard,
    Nat::UdpBlocked,
    Nat::Cgnat,
];

/// What a pair must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A direct path.
    Direct,
    /// Connected through the relay (direct is a welcome bonus).
    Relay,
}

/// The path the issue requires for a pair of profiles: direct when neither side
/// blocks UDP and one side is open or full-cone, or both map endpoint-
/// independently (easy or CGNAT); relay otherwise.
pub fn expected(a: Nat, b: Nat) -> Expect {
    use Nat::*;
    if a == UdpBlocked || b == UdpBlocked {
        return Expect::Relay;
    }
    let reachable = |n: Nat| matches!(n, Open | FullCone);
    let eim = |n: Nat| matches!(n, Easy | Cgnat);
    if reachable(a) || reachable(b) || (eim(a) && eim(b)) {
        Expect::Direct
    } else {
        Expect::Relay
    }
}

/// One pair's outcome.
#[derive(Debug, Clone)]
pub struct PairResult {
    /// Profiles.
    pub a: Nat,
    /// Profiles.
    pub b: Nat,
    /// What the issue requires.
    pub expect: Expect,
    /// Time until the first overlay ping answered.
    pub first_packet: Option<Duration>,
    /// Time until the path was direct (both directions).
    pub direct_after: Option<Duration>,
    /// The path at the end (`direct ...`, `relay`, `none`).
    pub final_path: String,
}

impl PairResult {
    /// Whether the pair met its expectation.
    pub fn passed(&self) -> bool {
        self.first_packet.is_some()
            && match self.expect {
                Expect::Direct => self.direct_after.is_some(),
                Expect::Relay => true,
            }
    }
}

/// The whole grid.
#[derive(Debug, Clone)]
pub struct GridReport {
    /// One entry per unordered pair of profiles.
    pub pairs: Vec<PairResult>,
    /// Wall time of the run.
    pub took: Duration,
    /// Where the logs are.
    pub log_dir: String,
}

impl GridReport {
    /// Whether every pair passed.
    pub fn passed(&self) -> bool {
        self.pairs.iter().all(PairResult::passed)
    }
}

impl std::fmt::Display for GridReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<12} {:<12} {:<8} {:<8} {:>12} {:>12}  RESULT",
            "A", "B", "EXPECT", "PATH", "FIRST PKT", "DIRECT AFTER"
        );
        for p in &self.pairs {
            let ms =
                |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
            let path = if p.final_path.starts_with("direct") {
                "direct"
            } else {
                p.final_path.as_str()
            };
            let _ = writeln!(
                o,
                "{:<12} {:<12} {:<8} {:<8} {:>12} {:>12}  {}",
                p.a.to_string(),
                p.b.to_string(),
                match p.expect {
                    Expect::Direct => "direct",
                    Expect::Relay => "relay",
                },
                path,
                ms(p.first_packet),
                ms(p.direct_after),
                if p.passed() { "PASS" } else { "FAIL" }
            );
        }
        let passed = self.pairs.iter().filter(|p| p.passed()).count();
        let _ = writeln!(
            o,
            "\n{passed} of {} pairs passed in {:.1}s (logs in {})",
            self.pairs.len(),
            self.took.as_secs_f64(),
            self.log_dir
        );
        f.write_str(&o)
    }
}

fn host(n: Nat, i: usize) -> String {
    format!("{}{i}", short(n))
}

fn short(n: Nat) -> &'static str {
    match n {
        Nat::Open => "open",
        Nat::Easy => "easy",
        Nat::FullCone => "fcone",
        Nat::Hard => "hard",
        Nat::UdpBlocked => "udpb",
        Nat::Cgnat => "cgn",
    }
}

/// Runs the grid over `profiles` (all pairs with repetition). `settle` bounds
/// how long each pair may take to reach its expected path.
pub fn run(profiles: &[Nat], settle: Duration) -> anyhow::Result<GridReport> {
    run_impaired(profiles, settle, Impairment::NONE)
}

/// [`run`] with `uplink` impairing every router's upstream link (for a CGNAT
/// pair, the carrier's and the home router's), as [`Lab::impair`] does.
pub fn run_impaired(
    profiles: &[Nat],
    settle: Duration,
    uplink: Impairment,
) -> anyhow::Result<GridReport> {
    let start = Instant::now();
    let mut topo = Topology::new().host("infra", Net::Internet);
    let mut nodes = Vec::new();
    for &p in profiles {
        for i in 1..=2 {
            let router = format!("r{}{i}", short(p));
            let h = host(p, i);
            topo = topo
                .router(&router, Net::Internet, p)
                .host(&h, Net::lan(&router));
            nodes.push(h);
        }
    }
    let lab = Lab::build(&topo)?;
    if !uplink.is_none() {
        let routers: Vec<String> = lab
            .plan()
            .nodes
            .iter()
            .filter(|n| n.nat().is_some())
            .map(|n| n.name.clone())
            .collect();
        for r in routers {
            lab.impair(&r, uplink)?;
        }
    }
    let spec = NetworkSpec {
        cidr: "100.64.0.0/24".into(),
        ..NetworkSpec::default()
    };
    let mut mesh = Mesh::start(&lab, "infra", spec)?;
    mesh.start_relay("infra")?;
    let token = mesh.token_file(u32::try_from(nodes.len()).unwrap_or(u32::MAX))?;
    for n in &nodes {
        mesh.start_agent(n, Some(&token))?;
    }
    let t0 = Instant::now();
    let mut pairs = Vec::new();
    for (i, &a) in profiles.iter().enumerate() {
        for &b in &profiles[i..] {
            pairs.push((a, b, host(a, 1), host(b, 2)));
        }
    }
    let ips: std::collections::BTreeMap<String, std::net::Ipv4Addr> = nodes
        .iter()
        .map(|n| Ok((n.clone(), mesh.overlay_ip(n)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut results: Vec<PairResult> = pairs
        .iter()
        .map(|(a, b, _, _)| PairResult {
            a: *a,
            b: *b,
            expect: expected(*a, *b),
            first_packet: None,
            direct_after: None,
            final_path: "none".into(),
        })
        .collect();
    // Poll every pair until each is settled or time runs out.
    let deadline = t0 + settle;
    loop {
        let mut pending = false;
        for (r, (_, _, ha, hb)) in results.iter_mut().zip(&pairs) {
            if r.first_packet.is_none() {
                if lab.ping(ha, ips[hb]).unwrap_or(false) {
                    r.first_packet = Some(t0.elapsed());
                } else {
                    pending = true;
                    continue;
                }
            }
            if r.direct_after.is_none() {
                let pa = mesh.path(ha, hb).unwrap_or_default();
                let pb = mesh.path(hb, ha).unwrap_or_default();
                if pa.starts_with("direct") && pb.starts_with("direct") {
                    r.direct_after = Some(t0.elapsed());
                } else if r.expect == Expect::Direct {
                    pending = true;
                }
            }
        }
        if !pending || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (r, (_, _, ha, hb)) in results.iter_mut().zip(&pairs) {
        r.final_path = mesh.path(ha, hb).unwrap_or_else(|| "none".into());
    }
    Ok(GridReport {
        pairs: results,
        took: start.elapsed(),
        log_dir: lab.log_dir().display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_the_issue() {
        use Nat::*;
        assert_eq!(expected(Easy, Easy), Expect::Direct);
        assert_eq!(expected(Cgnat, Easy), Expect::Direct);
        assert_eq!(expected(Hard, Open), Expect::Direct);
        assert_eq!(expected(Hard, FullCone), Expect::Direct);
        assert_eq!(expected(Hard, Easy), Expect::Relay);
        assert_eq!(expected(Hard, Hard), Expect::Relay);
        assert_eq!(expected(Hard, Cgnat), Expect::Relay);
        assert_eq!(expected(UdpBlocked, Open), Expect::Relay);
        // Symmetric.
        for a in PROFILES {
            for b in PROFILES {
                assert_eq!(expected(a, b), expected(b, a));
            }
        }
    }
}

//! The fault suite behind `weft-lab faults`: every case runs the real binaries
//! (`weftd`, `weft-controller`, `weft-relay`, `weft`) in lab namespaces, does
//! something hostile or unlucky to them (a spoofed or replayed packet, a stranger's
//! handshake, SIGKILL under load, a lost file, a flood, a flapping stream, policy
//! churn under traffic, thousands of idle connections) and checks what must hold,
//! with counts. [`run`] returns a [`FaultsReport`] whose `Display` is the table
//! the command prints.
//!
//! Cases run in sequence, grouped into two labs:
//! - [`overlay`]: a controller and four agents on an office LAN (three in network
//!   `lab`, one in network `other`): data-plane cases, policy churn, agent restart;
//! - [`control`]: a controller and relay on the internet, agents behind
//!   UDP-blocking NATs (so they only meet through the relay), a flooding host:
//!   controller and relay cases.
//!
//! Every wait is bounded; the labs (namespaces and processes) are removed when a
//! group ends, also when a case fails.

use std::fmt;
use std::time::{Duration, Instant};

mod churn;
mod control;
mod overlay;
mod py;
pub mod stranger;
mod util;

/// One case of the suite: its name and what it does and checks.
#[derive(Debug, Clone, Copy)]
pub struct CaseDef {
    /// The name `--case` selects.
    pub name: &'static str,
    /// What the case does.
    pub did: &'static str,
    /// What it checks.
    pub checked: &'static str,
}

/// The lab a case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Overlay,
    Control,
}

const fn case(name: &'static str, did: &'static str, checked: &'static str) -> CaseDef {
    CaseDef { name, did, checked }
}

/// Every case, in the order they run.
pub const CASES: [CaseDef; 13] = [
    case(
        "spoofed-source",
        "a writes UDP packets with c's overlay address as source into its weft0 (raw \
         socket); then a rogue a (a's own key, its own WireGuard session with b) sends b \
         packets with c's address as inner source, and some with a's own",
        "a's weftd refuses to send them (policy_no_rule); b delivers none of the rogue's \
         spoofed packets and counts each as spoofed_source (against peer a), delivers \
         the ones with a's source; the real a talks to b again afterwards",
    ),
    case(
        "replayed-packets",
        "captures a's encrypted data datagrams to b on a's underlay (AF_PACKET on eth0) \
         and sends the captured frames again, byte for byte",
        "b delivered each datagram exactly once and counts every resent one as replay",
    ),
    case(
        "wrong-network",
        "d (network `other`) adds a route to network `lab` into its weft0 and sends UDP \
         and pings to a; a does the same towards d",
        "nothing arrives on either side; each sender's weftd drops every packet as \
         no_route",
    ),
    case(
        "unauthorized-peer",
        "policy lets b reach c on tcp/22 only; c sends UDP to b; then a WireGuard \
         handshake initiation from a random key (not in any map) is sent to b's endpoint",
        "b receives none of c's UDP (c's weftd counts each as policy_no_rule); b counts \
         every stranger handshake as unknown_peer and still talks to a",
    ),
    case(
        "policy-churn",
        "100 policy edits alternating between two policies (a<->b always allowed; \
         c->b tcp/7000 allowed in every other one) while iperf3 and ping run a->b and \
         a long-lived TCP flow a->b echoes every 50 ms",
        "after each edit that allows c->b:7000 a connection opens; after each that \
         does not, the open c->b flow is cut and new ones refused; the a->b flow, \
         iperf3 (no empty second) and ping (no loss) are never cut",
    ),
    case(
        "agent-sigkill",
        "kill -9 c's weftd (c is in two networks), stop the controller, start weftd \
         again from its cache; then with the controller up, kill -9 and start again",
        "both interfaces with their addresses, the overlay routes (protocol 119), the \
         nftables table `inet weft` and overlay DNS (b's name resolves) are as before, \
         and c pings b again within 15 s, both times",
    ),
    case(
        "relay-restart",
        "a and b sit behind NATs that drop UDP, so they meet only through the relay; \
         kill -9 the relay and start it again",
        "a pings b through the relay before, and again within 15 s of the restart",
    ),
    case(
        "stream-flapping",
        "closes a's map stream (ss -K on a's sockets to the controller) six times, each \
         time once it is back",
        "b's map version does not move while a flaps (no peer_upsert reaches b), and a \
         reconnects each time",
    ),
    case(
        "challenge-flood",
        "one internet host floods POST /v1/register/challenge from 4 keep-alive \
         connections; once it has asked 70,000 times (more than the old 65,536-entry \
         pool) or 30 s passed, c registers from behind its NAT",
        "c registers and gets its overlay address within 60 s during the flood",
    ),
    case(
        "idle-connections",
        "one host opens 2000 idle TCP connections to the controller and 2000 to the \
         relay, and 50 slowloris TLS connections sending one header line a second, \
         and holds them for over 30 s",
        "fresh HTTPS requests to the controller are answered within 2 s each, an admin \
         command works, and a and b keep pinging through the relay",
    ),
    case(
        "token-cleartext",
        "`weft up --controller http://<controller>:8080` (not loopback) with a join \
         token, a plain TCP listener on that port",
        "weft up exits non-zero with an error about cleartext http, and the listener \
         saw no connection",
    ),
    case(
        "controller-sigkill",
        "an admin client creates join tokens in a loop (keep-alive HTTPS); kill -9 the \
         controller mid-way, restart it, keep writing",
        "every token whose creation got a 2xx answer is in the token list after the \
         restart",
    ),
    case(
        "state-loss",
        "stop the controller; delete tls/key.pem and start it; restore it, truncate \
         controller.db to 0 bytes and start it; restore it and start it; stop the \
         relay, delete its tls/key.pem and start it; restore it and start it",
        "every broken start exits non-zero (does not serve) with a message naming the \
         file; the restored controller starts with its old fingerprint, the relay starts",
    ),
];

fn group_of(name: &str) -> Group {
    match name {
        "spoofed-source" | "replayed-packets" | "wrong-network" | "unauthorized-peer"
        | "policy-churn" | "agent-sigkill" => Group::Overlay,
        _ => Group::Control,
    }
}

/// The names of every case, for `--case`.
pub fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct FaultsOptions {
    /// Only these cases (empty: all).
    pub cases: Vec<String>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Which case.
    pub def: CaseDef,
    /// What was counted (`acked 412, present 412`).
    pub counts: String,
    /// What did not hold (empty: passed), or why the case could not run.
    pub problems: Vec<String>,
    /// Wall-clock time of the case.
    pub took: Duration,
}

impl CaseResult {
    /// Whether everything checked held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Every case's result, in order.
#[derive(Debug, Clone, Default)]
pub struct FaultsReport {
    /// Results.
    pub results: Vec<CaseResult>,
    /// Total time.
    pub took: Duration,
}

impl FaultsReport {
    /// Whether every case passed (and at least one ran).
    pub fn passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(CaseResult::passed)
    }
}

impl fmt::Display for FaultsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<19} {:<6} {:>6}  COUNTS", "CASE", "RESULT", "TIME")?;
        for r in &self.results {
            writeln!(
                f,
                "{:<19} {:<6} {:>5.1}s  {}",
                r.def.name,
                if r.passed() { "PASS" } else { "FAIL" },
                r.took.as_secs_f64(),
                r.counts
            )?;
            writeln!(f, "    did:     {}", r.def.did)?;
            writeln!(f, "    checked: {}", r.def.checked)?;
            for p in &r.problems {
                writeln!(f, "    FAILED:  {p}")?;
            }
        }
        let failed = self.results.iter().filter(|r| !r.passed()).count();
        writeln!(
            f,
            "{} cases, {} passed, {failed} failed, {:.0}s",
            self.results.len(),
            self.results.len() - failed,
            self.took.as_secs_f64()
        )
    }
}

/// What a case measured: counts, and what did not hold.
#[derive(Debug, Default)]
struct Tally {
    counts: Vec<String>,
    problems: Vec<String>,
}

impl Tally {
    fn count(&mut self, what: impl Into<String>) {
        self.counts.push(what.into());
    }

    /// Records `problem` unless `ok`.
    fn require(&mut self, ok: bool, problem: impl Into<String>) {
        if !ok {
            self.problems.push(problem.into());
        }
    }
}

/// The definition of case `name` (a placeholder for a name not in [`CASES`]).
fn case_def(name: &str) -> CaseDef {
    CASES
        .iter()
        .find(|c| c.name == name)
        .copied()
        .unwrap_or(CaseDef {
            name: "?",
            did: "",
            checked: "",
        })
}

/// Runs one group: builds the lab from `topology`, brings the mesh up with
/// `setup`, then runs each of `names` through `case` (see [`run_case`]). When
/// the lab or the mesh does not come up, every case is a not-run result.
fn run_group(
    names: &[&str],
    progress: &mut dyn FnMut(&CaseResult),
    topology: &crate::Topology,
    setup: fn(&crate::Lab) -> anyhow::Result<crate::mesh::Mesh<'_>>,
    mut case: impl FnMut(&str, &mut crate::mesh::Mesh<'_>, &mut Tally) -> anyhow::Result<()>,
) -> Vec<CaseResult> {
    let lab = match crate::Lab::build(topology) {
        Ok(lab) => lab,
        Err(e) => return names.iter().map(|n| not_run(n, &e.to_string())).collect(),
    };
    let mut mesh = match setup(&lab) {
        Ok(m) => m,
        Err(e) => {
            return names
                .iter()
                .map(|n| not_run(n, &format!("{e:#}")))
                .collect();
        }
    };
    names
        .iter()
        .map(|&name| run_case(name, progress, |t| case(name, &mut mesh, t)))
        .collect()
}

/// Runs one case body, turning an error into a failed result.
fn run_case(
    name: &str,
    progress: &mut dyn FnMut(&CaseResult),
    body: impl FnOnce(&mut Tally) -> anyhow::Result<()>,
) -> CaseResult {
    let def = case_def(name);
    tracing::info!(case = name, "fault case starting");
    let start = Instant::now();
    let mut tally = Tally::default();
    if let Err(e) = body(&mut tally) {
        tally.problems.push(format!("{e:#}"));
    }
    let result = CaseResult {
        def,
        counts: tally.counts.join("; "),
        problems: tally.problems,
        took: start.elapsed(),
    };
    progress(&result);
    result
}

/// A case that could not run because its lab did not come up.
fn not_run(name: &str, why: &str) -> CaseResult {
    CaseResult {
        def: case_def(name),
        counts: "not run".into(),
        problems: vec![format!("the lab did not come up: {why}")],
        took: Duration::ZERO,
    }
}

/// Runs the selected cases (all by default) and returns their results;
/// `progress` sees each result as soon as its case ends. Needs root and the
/// binaries (see [`crate::bin_path`]). Fails only for a bad case name or
/// missing root; a case that cannot run is a failed result.
pub fn run(
    opts: &FaultsOptions,
    progress: &mut dyn FnMut(&CaseResult),
) -> crate::Result<FaultsReport> {
    crate::require_root()?;
    for name in &opts.cases {
        if !CASES.iter().any(|c| c.name == name) {
            return Err(crate::LabError::Topology(format!(
                "unknown fault case `{name}` (one of: {})",
                case_names().join(", ")
            )));
        }
    }
    let nofile = crate::sys::raise_nofile_limit();
    tracing::info!(?nofile, "open-file limit");
    let start = Instant::now();
    let selected: Vec<&'static str> = CASES
        .iter()
        .map(|c| c.name)
        .filter(|n| opts.cases.is_empty() || opts.cases.iter().any(|c| c == n))
        .collect();
    let mut results = Vec::new();
    for group in [Group::Overlay, Group::Control] {
        let names: Vec<&str> = selected
            .iter()
            .copied()
            .filter(|n| group_of(n) == group)
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut out = match group {
            Group::Overlay => overlay::run(&names, progress),
            Group::Control => control::run(&names, progress),
        };
        results.append(&mut out);
    }
    Ok(FaultsReport {
        results,
        took: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_group_and_text() {
        let overlay = CASES
            .iter()
            .filter(|c| group_of(c.name) == Group::Overlay)
            .count();
        assert_eq!(overlay, 6);
        for c in CASES {
            assert!(!c.did.is_empty() && !c.checked.is_empty(), "{}", c.name);
        }
        let mut names = case_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }

    #[test]
    fn table_shows_fail_and_counts() {
        let report = FaultsReport {
            results: vec![CaseResult {
                def: CASES[0],
                counts: "sent 20, delivered 0".into(),
                problems: vec!["b delivered 3".into()],
                took: Duration::from_millis(1500),
            }],
            took: Duration::from_secs(2),
        };
        let text = report.to_string();
        assert!(text.contains("spoofed-source      FAIL     1.5s  sent 20, delivered 0"));
        assert!(text.contains("FAILED:  b delivered 3"));
        assert!(!report.passed());
    }
}

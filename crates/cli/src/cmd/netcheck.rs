//! `weft netcheck`: what the underlay lets this machine do.
//!
//! It asks the local agent for the relays in its map (or takes `--stun` and
//! `--relay` for a standalone check), then probes from one UDP socket of its own:
//! a STUN Binding request to every relay's STUN port and, when the answer names
//! an alternate STUN address (RFC 5780 OTHER-ADDRESS; `weft-relay
//! --stun-alt-port`), to that one too. From the answers:
//! - UDP works if any STUN server answered;
//! - the reflexive address is what the servers saw;
//! - the NAT maps endpoint-independently if every server saw the same address
//!   (hole punching between two such NATs works), endpoint-dependently if they
//!   differ (a new mapping per destination: peers behind it need the relay
//!   unless the other side is open);
//! - latency to each relay is the STUN round trip and the TCP connect time of
//!   its TLS port.
//!
//! The agent's own reflexive addresses (seen on its data-plane socket) are shown
//! next to this socket's.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use rand_core::RngCore as _;
use serde::Serialize;
use weft_proto::relay_api::RelayUrl;
use weft_proto::stun;

use super::agent::SocketArg;
use crate::clock::now;

#[derive(Debug, Args)]
pub struct NetcheckArgs {
    /// Do not ask the agent: probe only the servers given with --stun and
    /// --relay.
    #[arg(long)]
    standalone: bool,
    /// Also probe this STUN server (HOST:PORT; repeatable).
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// Also measure the TCP connect time to this relay URL
    /// (https://HOST[:PORT]; repeatable).
    #[arg(long = "relay", value_name = "URL")]
    relay: Vec<String>,
    /// How long to wait for STUN answers, in milliseconds (requests are
    /// resent every 250 ms until then).
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    timeout_ms: u64,
}

/// How the NAT in front of this machine maps a UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// The same external address towards every destination.
    EndpointIndependent,
    /// A different external address per destination.
    EndpointDependent,
    /// Fewer than two STUN endpoints answered: cannot tell.
    Unknown,
}

/// One STUN probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StunProbe {
    /// The relay it belongs to (name or URL), or `--stun`.
    pub via: String,
    /// The STUN server address probed.
    pub server: SocketAddr,
    /// Whether it is the server's alternate address (from OTHER-ADDRESS).
    pub alternate: bool,
    /// The address the server saw, if it answered.
    pub mapped: Option<SocketAddr>,
    /// Round-trip time of the answered request, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// TCP connect time to a relay's TLS port.
#[derive(Debug, Clone, Serialize)]
pub struct RelayLatency {
    /// Relay name or URL.
    pub relay: String,
    /// The TLS address.
    pub addr: Option<SocketAddr>,
    /// The best of three TCP connects, in milliseconds.
    pub tcp_connect_ms: Option<f64>,
    /// Why it could not be measured.
    pub error: Option<String>,
}

/// The whole result (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct NetcheckReport {
    /// Whether any STUN server answered over UDP.
    pub udp: bool,
    /// The distinct reflexive addresses the servers saw for this check's socket.
    pub reflexive: Vec<SocketAddr>,
    /// How the NAT maps (see [`Mapping`]).
    pub mapping: Mapping,
    /// The agent's reflexive addresses (its data-plane socket), if asked.
    pub agent_reflexive: Vec<String>,
    /// Every STUN probe.
    pub stun: Vec<StunProbe>,
    /// Latency to every relay's TLS port.
    pub relays: Vec<RelayLatency>,
}

/// Classifies the mapping from (server, mapped address) answers.
pub fn classify(answers: &[(SocketAddr, SocketAddr)]) -> Mapping {
    let servers: BTreeSet<SocketAddr> = answers.iter().map(|(s, _)| *s).collect();
    if servers.len() < 2 {
        return Mapping::Unknown;
    }
    let mapped: BTreeSet<SocketAddr> = answers.iter().map(|(_, m)| *m).collect();
    if mapped.len() == 1 {
        Mapping::EndpointIndependent
    } else {
        Mapping::EndpointDependent
    }
}

/// The alternate STUN address an answer from `server` names: an unspecified
/// IP in OTHER-ADDRESS means the server's own address.
pub fn alternate_of(server: SocketAddr, other: SocketAddr) -> SocketAddr {
    if other.ip().is_unspecified() {
        SocketAddr::new(server.ip(), other.port())
    } else {
        other
    }
}

/// A relay URL's host and port ([`RelayUrl`], the same parser the controller
/// and agents use).
fn url_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let u = RelayUrl::parse(url).with_context(|| format!("bad relay URL {url}"))?;
    Ok((u.host, u.port))
}

fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let ip: Option<IpAddr> = host.parse().ok();
    if let Some(ip) = ip {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))
}

/// `weft netcheck`.
pub fn run(sock: &SocketArg, a: NetcheckArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut stun_targets: Vec<(String, SocketAddr)> = Vec::new();
    let mut tls_targets: Vec<(String, anyhow::Result<SocketAddr>)> = Vec::new();
    let mut agent_reflexive = Vec::new();
    if !a.standalone {
        let st = super::agent::status_of(&sock.socket).context(
            "asking the agent for its relays (use --standalone with --stun/--relay without an agent)",
        )?;
        agent_reflexive.clone_from(&st.reflexive);
        for r in &st.relays {
            let label = r.name.clone().unwrap_or_else(|| r.url.clone());
            let hp = url_host_port(&r.url);
            match hp {
                Ok((host, port)) => {
                    if let Some(sp) = r.stun_port {
                        match resolve(&host, sp) {
                            Ok(addr) => stun_targets.push((label.clone(), addr)),
                            Err(e) => tls_targets.push((label.clone(), Err(e))),
                        }
                    }
                    tls_targets.push((label, resolve(&host, port)));
                }
                Err(e) => tls_targets.push((label, Err(e))),
            }
        }
    }
    for s in &a.stun {
        let (host, port) = s
            .rsplit_once(':')
            .with_context(|| format!("--stun {s}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("--stun {s}: bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        stun_targets.push(("--stun".to_owned(), resolve(host, port)?));
    }
    for r in &a.relay {
        let (host, port) = url_host_port(r)?;
        tls_targets.push((r.clone(), resolve(&host, port)));
    }
    if stun_targets.is_empty() && tls_targets.is_empty() {
        bail!(
            "nothing to probe: the agent's map has no relays (or use --stun HOST:PORT / --relay URL)"
        );
    }
    let report = check(
        &stun_targets,
        &tls_targets,
        agent_reflexive,
        Duration::from_millis(a.timeout_ms),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn check(
    stun_targets: &[(String, SocketAddr)],
    tls_targets: &[(String, anyhow::Result<SocketAddr>)],
    agent_reflexive: Vec<String>,
    timeout: Duration,
) -> anyhow::Result<NetcheckReport> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    let mut probes: Vec<StunProbe> = stun_targets
        .iter()
        .map(|(via, server)| StunProbe {
            via: via.clone(),
            server: *server,
            alternate: false,
            mapped: None,
            rtt_ms: None,
        })
        .collect();
    let first = probe_all(&sock, &probes, timeout)?;
    let mut alternates = Vec::new();
    for (p, answer) in probes.iter_mut().zip(first) {
        if let Some(ans) = answer {
            p.mapped = Some(ans.mapped);
            p.rtt_ms = Some(ans.rtt.as_secs_f64() * 1000.0);
            if let Some(other) = ans.other {
                let alt = alternate_of(p.server, other);
                if !stun_targets.iter().any(|(_, s)| *s == alt)
                    && !alternates.iter().any(|q: &StunProbe| q.server == alt)
                {
                    alternates.push(StunProbe {
                        via: p.via.clone(),
                        server: alt,
                        alternate: true,
                        mapped: None,
                        rtt_ms: None,
                    });
                }
            }
        }
    }
    if !alternates.is_empty() {
        let second = probe_all(&sock, &alternates, timeout)?;
        for (p, answer) in alternates.iter_mut().zip(second) {
            if let Some(ans) = answer {
                p.mapped = Some(ans.mapped);
                p.rtt_ms = Some(ans.rtt.as_secs_f64() * 1000.0);
            }
        }
        probes.extend(alternates);
    }
    let answers: Vec<(SocketAddr, SocketAddr)> = probes
        .iter()
        .filter_map(|p| Some((p.server, p.mapped?)))
        .collect();
    let reflexive: BTreeSet<SocketAddr> = answers.iter().map(|(_, m)| *m).collect();
    let relays = tls_targets
        .iter()
        .map(|(relay, addr)| match addr {
            Ok(addr) => match tcp_connect_time(*addr, timeout) {
                Ok(d) => RelayLatency {
                    relay: relay.clone(),
                    addr: Some(*addr),
                    tcp_connect_ms: Some(d.as_secs_f64() * 1000.0),
                    error: None,
                },
                Err(e) => RelayLatency {
                    relay: relay.clone(),
                    addr: Some(*addr),
                    tcp_connect_ms: None,
                    error: Some(format!("{e:#}")),
                },
            },
            Err(e) => RelayLatency {
                relay: relay.clone(),
                addr: None,
                tcp_connect_ms: None,
                error: Some(format!("{e:#}")),
            },
        })
        .collect();
    Ok(NetcheckReport {
        udp: !answers.is_empty(),
        reflexive: reflexive.into_iter().collect(),
        mapping: classify(&answers),
        agent_reflexive,
        stun: probes,
        relays,
    })
}

struct Answer {
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    rtt: Duration,
}

/// What [`probe_all`] needs of a UDP socket and a clock (a trait so a test can
/// make a send take time).
trait StunIo {
    /// Sends one datagram (an error is a missing answer, reported as such).
    fn send(&mut self, msg: &[u8], to: SocketAddr);
    /// Receives one datagram within `wait`.
    fn recv(&mut self, buf: &mut [u8], wait: Duration) -> Option<(usize, SocketAddr)>;
    /// Now.
    fn now(&self) -> Instant;
}

struct UdpIo<'a>(&'a UdpSocket);

impl StunIo for UdpIo<'_> {
    fn send(&mut self, msg: &[u8], to: SocketAddr) {
        // A send error (no route, ICMP unreachable earlier) is a missing
        // answer, reported as such.
        let _ = self.0.send_to(msg, to);
    }

    fn recv(&mut self, buf: &mut [u8], wait: Duration) -> Option<(usize, SocketAddr)> {
        self.0.set_read_timeout(Some(wait)).ok()?;
        self.0.recv_from(buf).ok()
    }

    fn now(&self) -> Instant {
        now()
    }
}

/// Sends a Binding request to every probe's server (resent every 250 ms with
/// a fresh transaction id) until each answered or `timeout` passed.
fn probe_all(
    sock: &UdpSocket,
    probes: &[StunProbe],
    timeout: Duration,
) -> anyhow::Result<Vec<Option<Answer>>> {
    Ok(probe_with(&mut UdpIo(sock), probes, timeout))
}

fn probe_with(
    io: &mut impl StunIo,
    probes: &[StunProbe],
    timeout: Duration,
) -> Vec<Option<Answer>> {
    const RESEND: Duration = Duration::from_millis(250);
    let mut answers: Vec<Option<Answer>> = probes.iter().map(|_| None).collect();
    // (transaction id, probe index, sent at)
    let mut sent: Vec<([u8; 12], usize, Instant)> = Vec::new();
    let start = io.now();
    let mut next_send = start;
    let mut buf = [0_u8; 1500];
    let mut msg = Vec::with_capacity(32);
    loop {
        let t = io.now();
        if answers.iter().all(Option::is_some) || t.duration_since(start) >= timeout {
            return answers;
        }
        if t >= next_send {
            for (i, p) in probes.iter().enumerate() {
                if answers[i].is_some() {
                    continue;
                }
                let mut id = [0_u8; 12];
                rand_core::OsRng.fill_bytes(&mut id);
                msg.clear();
                stun::encode_binding_request(&id, true, &mut msg);
                // The clock is read before the send: on a veth path the request
                // reaches the server (and its answer may come back) inside
                // send_to, so a time taken after it left out the way there
                // ("0.02 ms" next to a 0.2 ms TCP connect).
                let at = io.now();
                io.send(&msg, p.server);
                sent.push((id, i, at));
            }
            next_send = t + RESEND;
        }
        let until_send = next_send.saturating_duration_since(io.now());
        let until_end = timeout.saturating_sub(io.now().duration_since(start));
        let wait = until_send.min(until_end).max(Duration::from_millis(1));
        let Some((n, from)) = io.recv(&mut buf, wait) else {
            continue;
        };
        let Ok(resp) = stun::parse_binding_response(&buf[..n]) else {
            continue;
        };
        let Some(&(_, i, at)) = sent
            .iter()
            .find(|(id, i, _)| *id == resp.transaction_id && probes[*i].server == from)
        else {
            continue;
        };
        if answers[i].is_none() {
            answers[i] = Some(Answer {
                mapped: resp.mapped,
                other: resp.other_address,
                rtt: io.now().duration_since(at),
            });
        }
    }
}

/// The best of three TCP connects to `addr`.
fn tcp_connect_time(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Duration> {
    let mut best: Option<Duration> = None;
    let mut last_err = None;
    for _ in 0..3 {
        let t = now();
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let d = now().duration_since(t);
                drop(s);
                best = Some(best.map_or(d, |b| b.min(d)));
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (best, last_err) {
        (Some(d), _) => Ok(d),
        (None, Some(e)) => Err(e).with_context(|| format!("TCP connect to {addr}")),
        (None, None) => bail!("TCP connect to {addr}: no attempt"),
    }
}

/// The human rendering.
pub fn render(r: &NetcheckReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let udp = if r.udp {
        "yes"
    } else {
        "no (no STUN server answered over UDP: peers will use the relay)"
    };
    let _ = writeln!(o, "UDP         {udp}");
    if !r.reflexive.is_empty() {
        let list: Vec<String> = r.reflexive.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "reflexive   {}", list.join(", "));
    }
    let answered = r.stun.iter().filter(|p| p.mapped.is_some()).count();
    let mapping = match r.mapping {
        Mapping::EndpointIndependent => format!(
            "endpoint-independent (the same address towards {answered} STUN endpoints: hole punching works)"
        ),
        Mapping::EndpointDependent => format!(
            "endpoint-dependent (a different address per destination across {answered} STUN endpoints: \
             direct paths only to open or full-cone peers)"
        ),
        Mapping::Unknown => format!(
            "unknown ({answered} STUN endpoint(s) answered; need two, e.g. a relay with --stun-alt-port)"
        ),
    };
    let _ = writeln!(o, "mapping     {mapping}");
    if !r.agent_reflexive.is_empty() {
        let _ = writeln!(
            o,
            "agent       {} (its data-plane socket, as STUN sees it)",
            r.agent_reflexive.join(", ")
        );
    }
    if !r.stun.is_empty() {
        let _ = writeln!(o, "stun");
        for p in &r.stun {
            let alt = if p.alternate { " (alternate)" } else { "" };
            match (p.mapped, p.rtt_ms) {
                (Some(m), Some(rtt)) => {
                    let _ = writeln!(
                        o,
                        "  {:<12} {}{alt}  {rtt:.2} ms  sees {m}",
                        p.via, p.server
                    );
                }
                _ => {
                    let _ = writeln!(o, "  {:<12} {}{alt}  no answer", p.via, p.server);
                }
            }
        }
    }
    if !r.relays.is_empty() {
        let _ = writeln!(o, "relays");
        for l in &r.relays {
            let addr = l.addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
            match (l.tcp_connect_ms, &l.error) {
                (Some(ms), _) => {
                    let _ = writeln!(o, "  {:<12} {addr}  tcp connect {ms:.2} ms", l.relay);
                }
                (None, Some(e)) => {
                    let _ = writeln!(o, "  {:<12} {addr}  unreachable: {e}", l.relay);
                }
                (None, None) => {
                    let _ = writeln!(o, "  {:<12} {addr}  unreachable", l.relay);
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    /// A send that takes 5 ms (the request crosses a veth path and is answered
    /// inside the syscall): the round trip counts it.
    struct SlowSend {
        t: Instant,
        answer: Option<(Vec<u8>, SocketAddr)>,
    }

    impl StunIo for SlowSend {
        fn send(&mut self, msg: &[u8], to: SocketAddr) {
            self.t += Duration::from_millis(5);
            let req = stun::parse_binding_request(msg).unwrap();
            let mut out = Vec::new();
            stun::encode_binding_response(&req, sa("192.0.2.7:4000"), &mut out);
            self.answer = Some((out, to));
        }

        fn recv(&mut self, buf: &mut [u8], wait: Duration) -> Option<(usize, SocketAddr)> {
            let Some((msg, from)) = self.answer.take() else {
                self.t += wait;
                return None;
            };
            buf[..msg.len()].copy_from_slice(&msg);
            Some((msg.len(), from))
        }

        fn now(&self) -> Instant {
            self.t
        }
    }

    #[test]
    fn the_stun_round_trip_includes_the_send() {
        let server = sa("198.51.100.1:3478");
        let probes = [StunProbe {
            via: "test".into(),
            server,
            alternate: false,
            mapped: None,
            rtt_ms: None,
        }];
        let mut io = SlowSend {
            t: now(),
            answer: None,
        };
        let answers = probe_with(&mut io, &probes, Duration::from_secs(1));
        let a = answers[0].as_ref().unwrap();
        assert_eq!(a.mapped, sa("192.0.2.7:4000"));
        assert_eq!(
            a.rtt,
            Duration::from_millis(5),
            "measured from after the send"
        );
    }

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_is_classified_from_two_endpoints() {
        let a = sa("198.18.0.10:3478");
        let b = sa("198.18.0.10:3479");
        let m1 = sa("198.18.0.20:40000");
        let m2 = sa("198.18.0.20:40001");
        assert_eq!(classify(&[]), Mapping::Unknown);
        assert_eq!(classify(&[(a, m1)]), Mapping::Unknown);
        assert_eq!(classify(&[(a, m1), (b, m1)]), Mapping::EndpointIndependent);
        assert_eq!(classify(&[(a, m1), (b, m2)]), Mapping::EndpointDependent);
    }

    #[test]
    fn unspecified_other_address_means_the_servers_ip() {
        assert_eq!(
            alternate_of(sa("198.18.0.10:3478"), sa("0.0.0.0:3479")),
            sa("198.18.0.10:3479")
        );
        assert_eq!(
            alternate_of(sa("198.18.0.10:3478"), sa("198.18.0.11:3479")),
            sa("198.18.0.11:3479")
        );
    }

    #[test]
    fn a_local_stun_server_with_an_alternate_port_is_found_and_compared() {
        // Two loopback STUN "servers" answering from threads: no NAT on
        // loopback, so the mapping is endpoint-independent.
        let s1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a1 = s1.local_addr().unwrap();
        let a2 = s2.local_addr().unwrap();
        let serve = |s: UdpSocket, other: SocketAddr| {
            std::thread::spawn(move || {
                let mut buf = [0_u8; 1500];
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let req = stun::parse_binding_request(&buf[..n]).unwrap();
                    let mut out = Vec::new();
                    stun::encode_binding_response_with_other(&req, from, Some(other), &mut out);
                    s.send_to(&out, from).unwrap();
                }
            })
        };
        let _t1 = serve(s1, sa(&format!("0.0.0.0:{}", a2.port())));
        let _t2 = serve(s2, a1);
        let r = check(
            &[("test".to_owned(), a1)],
            &[],
            Vec::new(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(r.udp);
        assert_eq!(r.stun.len(), 2, "{r:?}");
        assert!(r.stun[1].alternate);
        assert_eq!(r.stun[1].server, a2);
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.reflexive.len(), 1);
        assert!(render(&r).contains("endpoint-independent"));
    }
}

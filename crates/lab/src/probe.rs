//! The NAT probe and its observers: small UDP/TCP programs that run inside lab
//! nodes as hidden `weft-lab` subcommands (`__udp-observer`, `__udp-probe`,
//! `__udp-send`), so the self-test exercises real sockets in real namespaces.
//!
//! - The observer answers every probe datagram (and every TCP connection) with the
//!   source address it saw: the probe's mapped address.
//! - The probe sends from ONE UDP socket to each observer, connects over TCP,
//!   prints `MAPPED <json>`, then listens for a while for unsolicited datagrams
//!   (sent by `__udp-send` from a third host to the mapped address) and prints
//!   `RESULT <json>`.

use std::io::{Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// Payload of a probe datagram.
pub const PROBE_MAGIC: &[u8] = b"weft-lab probe";
/// Payload of an unsolicited datagram from a third host.
pub const UNSOLICITED_MAGIC: &[u8] = b"weft-lab unsolicited";
/// Prefix of the probe's line after mapping.
pub const MAPPED_PREFIX: &str = "MAPPED ";
/// Prefix of the probe's final line.
pub const RESULT_PREFIX: &str = "RESULT ";
/// Prefix of the observer's ready line.
pub const OBSERVER_READY: &str = "observer listening on";

/// How often the probe (re)sends to an observer before giving up.
const UDP_ATTEMPTS: u32 = 4;
/// How long it waits for each answer.
const UDP_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// TCP connect and read timeout.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);

/// An observer's answer: the address the datagram or connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The source address as the observer saw it.
    pub seen: SocketAddr,
}

/// What one observer saw of the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The observer.
    pub observer: SocketAddr,
    /// The probe's address as the observer saw it, `None` if no answer came back.
    pub mapped: Option<SocketAddr>,
}

/// Everything the probe learned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The local port of the probe's UDP socket.
    pub local_port: u16,
    /// Per UDP observer, in the order given.
    pub udp: Vec<Mapping>,
    /// Per TCP observer, in the order given.
    pub tcp: Vec<Mapping>,
    /// The source of the first unsolicited datagram received, if any.
    pub unsolicited: Option<SocketAddr>,
}

/// Probe settings.
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// UDP observers, probed in order from one socket.
    pub udp: Vec<SocketAddr>,
    /// TCP observers.
    pub tcp: Vec<SocketAddr>,
    /// The longest time to listen for unsolicited datagrams after mapping.
    pub listen: Duration,
    /// Stop listening as soon as this file exists (the orchestrator creates it once
    /// the third host has sent everything).
    pub stop_file: Option<PathBuf>,
}

/// Runs an observer on `listen` (UDP and TCP, same port) until killed. Writes
/// one ready line to `out` once both sockets are bound.
pub fn run_observer(listen: SocketAddr, out: &mut impl Write) -> Result<()> {
    let udp = UdpSocket::bind(listen)
        .map_err(|e| LabError::io(format!("cannot bind UDP {listen}"), e))?;
    let tcp = TcpListener::bind(listen)
        .map_err(|e| LabError::io(format!("cannot bind TCP {listen}"), e))?;
    writeln!(out, "{OBSERVER_READY} udp+tcp {listen}")
        .and_then(|()| out.flush())
        .map_err(|e| LabError::io("cannot write to stdout", e))?;
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            if let Ok(peer) = stream.peer_addr() {
                let _ = answer_tcp(stream, peer);
            }
        }
    });
    let mut buf = [0_u8; 1500];
    loop {
        let (len, from) = udp
            .recv_from(&mut buf)
            .map_err(|e| LabError::io("observer cannot receive", e))?;
        if buf[..len].starts_with(PROBE_MAGIC) {
            let reply = serde_json::to_vec(&Seen { seen: from })
                .map_err(|e| LabError::Probe(e.to_string()))?;
            // A failed reply (e.g. ICMP unreachable) is the probe's problem to notice.
            let _ = udp.send_to(&reply, from);
        }
    }
}

fn answer_tcp(mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    let reply = serde_json::to_string(&Seen { seen: peer }).map_err(std::io::Error::other)?;
    stream.write_all(reply.as_bytes())?;
    stream.write_all(b"\n")
}

/// Runs the probe (see the module docs), writing `MAPPED` and `RESULT` lines to `out`.
pub fn run_probe(opts: &ProbeOptions, out: &mut impl Write) -> Result<ProbeReport> {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| LabError::io("cannot bind the probe socket", e))?;
    let local_port = socket
        .local_addr()
        .map_err(|e| LabError::io("cannot read the probe socket's address", e))?
        .port();
    let mut report = ProbeReport {
        local_port,
        ..ProbeReport::default()
    };
    for observer in &opts.udp {
        let mapped = probe_udp(&socket, *observer)?;
        report.udp.push(Mapping {
            observer: *observer,
            mapped,
        });
    }
    for observer in &opts.tcp {
        report.tcp.push(Mapping {
            observer: *observer,
            mapped: probe_tcp(*observer),
        });
    }
    emit(out, MAPPED_PREFIX, &report)?;
    report.unsolicited =
        listen_unsolicited(&socket, &opts.udp, opts.listen, opts.stop_file.as_deref())?;
    emit(out, RESULT_PREFIX, &report)?;
    Ok(report)
}

/// Sends `count` unsolicited datagrams to `to`, `interval` apart, from a fresh socket.
pub fn run_send(to: SocketAddr, count: u32, interval: Duration) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| LabError::io("cannot bind the sender socket", e))?;
    for i in 0..count {
        // Errors (ICMP unreachable from an earlier datagram) do not stop the burst.
        let _ = socket.send_to(UNSOLICITED_MAGIC, to);
        if i + 1 < count {
            std::thread::sleep(interval);
        }
    }
    Ok(())
}

/// Parses the JSON after `prefix` on the first log line that starts with it.
pub fn parse_line(log: &str, prefix: &str) -> Result<ProbeReport> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .ok_or_else(|| {
            LabError::Probe(format!(
                "no `{}` line in probe output:\n{log}",
                prefix.trim()
            ))
        })?;
    serde_json::from_str(line).map_err(|e| LabError::Probe(format!("`{line}`: {e}")))
}

fn emit(out: &mut impl Write, prefix: &str, report: &ProbeReport) -> Result<()> {
    let json = serde_json::to_string(report).map_err(|e| LabError::Probe(e.to_string()))?;
    writeln!(out, "{prefix}{json}")
        .and_then(|()| out.flush())
        .map_err(|e| LabError::io("cannot write to stdout", e))
}

fn probe_udp(socket: &UdpSocket, observer: SocketAddr) -> Result<Option<SocketAddr>> {
    let mut buf = [0_u8; 1500];
    for _ in 0..UDP_ATTEMPTS {
        // A send error (ICMP unreachable from a previous attempt) counts as no answer.
        let _ = socket.send_to(PROBE_MAGIC, observer);
        let deadline = Instant::now() + UDP_ATTEMPT_TIMEOUT;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| LabError::io("cannot set a socket timeout", e))?;
            match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == observer => {
                    if let Ok(seen) = serde_json::from_slice::<Seen>(&buf[..len]) {
                        return Ok(Some(seen.seen));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(None)
}

fn probe_tcp(observer: SocketAddr) -> Option<SocketAddr> {
    let mut stream = TcpStream::connect_timeout(&observer, TCP_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TCP_TIMEOUT)).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    serde_json::from_str::<Seen>(text.trim())
        .ok()
        .map(|s| s.seen)
}

/// How often the listener checks for the stop file.
const STOP_POLL: Duration = Duration::from_millis(50);

fn listen_unsolicited(
    socket: &UdpSocket,
    observers: &[SocketAddr],
    listen: Duration,
    stop_file: Option<&Path>,
) -> Result<Option<SocketAddr>> {
    let mut buf = [0_u8; 1500];
    let deadline = Instant::now() + listen;
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        socket
            .set_read_timeout(Some(left.min(STOP_POLL)))
            .map_err(|e| LabError::io("cannot set a socket timeout", e))?;
        match socket.recv_from(&mut buf) {
            Ok((len, from)) if !observers.contains(&from) && &buf[..len] == UNSOLICITED_MAGIC => {
                return Ok(Some(from));
            }
            // Late observer answers and ICMP errors from earlier sends are skipped.
            Ok(_) | Err(_) => {}
        }
        if stop_file.is_some_and(Path::exists) {
            break;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_against_a_local_observer() {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::thread::spawn(move || run_observer(listen, &mut std::io::sink()));
        // Give the observer a moment to bind (the probe also retries).
        std::thread::sleep(Duration::from_millis(100));
        let mut out = Vec::new();
        let report = run_probe(
            &ProbeOptions {
                udp: vec![listen],
                tcp: vec![listen],
                listen: Duration::from_millis(300),
                stop_file: None,
            },
            &mut out,
        )
        .unwrap();
        let mapped = report.udp[0].mapped.unwrap();
        assert_eq!(mapped.port(), report.local_port);
        assert_eq!(report.tcp[0].mapped.unwrap().ip(), mapped.ip());
        assert_eq!(report.unsolicited, None);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(parse_line(&text, RESULT_PREFIX).unwrap(), report);
        assert!(parse_line(&text, MAPPED_PREFIX).is_ok());
    }

    #[test]
    fn unsolicited_datagrams_are_reported() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        std::thread::spawn(move || run_send(to, 5, Duration::from_millis(20)));
        let from = listen_unsolicited(&socket, &[], Duration::from_secs(2), None).unwrap();
        assert!(from.is_some());
    }

    #[test]
    fn the_stop_file_ends_listening() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("weft-lab-stop-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let start = Instant::now();
        let from = listen_unsolicited(&socket, &[], Duration::from_secs(10), Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(from, None);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

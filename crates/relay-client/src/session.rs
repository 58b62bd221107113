//! One session with the relay: connect, TLS, login bound to the TLS channel,
//! then packets both ways with keepalive and silence probes until it ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use weft_proto::NodeKey;
use weft_proto::relay_api::RelayUrl;
use weft_relay_core::frame::{
    Frame, FrameDecoder, LOGIN_SIGNATURE_CONTEXT, PROTOCOL_VERSION, Reason, TLS_EXPORTER_LABEL,
    encode_send, login_signed_message,
};

use crate::Stats;
use crate::types::{RelayClientConfig, RelayClientError, RelayEvent, Signer};

/// A session that has heard nothing from the relay for this long pings it
/// before sending more: an underlay change (roaming, a NAT that lost its
/// mapping) kills a TCP connection silently, and the sender should notice in
/// seconds, not after three keepalive intervals.
const PROBE_AFTER_SILENCE: Duration = Duration::from_secs(2);
/// How long a probing ping may go unanswered (by any frame) before the session
/// is considered dead and reconnected.
const PONG_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Session {
    pub(crate) cfg: RelayClientConfig,
    pub(crate) url: RelayUrl,
    pub(crate) name: ServerName<'static>,
    pub(crate) connector: TlsConnector,
    /// The certificate the relay last presented (for a refusal's hint).
    pub(crate) seen: weft_api_client::SeenCert,
    pub(crate) signer: Signer,
    pub(crate) stats: Arc<Stats>,
    pub(crate) events: mpsc::Sender<RelayEvent>,
}

/// How a session ended.
pub(crate) enum End {
    /// The client was dropped or the caller stopped reading events for good.
    Stop,
    /// The relay is restarting: reconnect after its hint.
    Restarting(Duration),
    /// Failed; `established` says whether it had logged in.
    Failed {
        error: RelayClientError,
        established: bool,
    },
}

fn io(e: std::io::Error) -> RelayClientError {
    RelayClientError::Io(e.to_string())
}

impl Session {
    pub(crate) async fn session(&self, out: &mut mpsc::Receiver<(NodeKey, Bytes)>) -> End {
        let setup = tokio::time::timeout(self.cfg.connect_timeout, self.login()).await;
        let (mut rd, mut wr, mut decoder) = match setup {
            Ok(Ok(x)) => x,
            Ok(Err(error)) => {
                return End::Failed {
                    error,
                    established: false,
                };
            }
            Err(_) => {
                return End::Failed {
                    error: RelayClientError::Timeout("connecting and logging in to the relay"),
                    established: false,
                };
            }
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(1, Ordering::Relaxed);
        if self.events.send(RelayEvent::Connected).await.is_err() {
            return End::Stop;
        }
        let fail = |error| End::Failed {
            error,
            established: true,
        };
        let mut keepalive = tokio::time::interval(self.cfg.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut silent_ticks = 0u32;
        let mut last_rx = tokio::time::Instant::now();
        // Set while a ping is outstanding on a session that was silent.
        let mut probe_deadline: Option<tokio::time::Instant> = None;
        let mut buf = vec![0u8; 16 * 1024];
        let mut wbuf = Vec::with_capacity(64 * 1024);
        let mut ping = 0u64;
        // Frames decoded during login but not yet handled.
        let mut pending = Vec::new();
        while let Some(r) = decoder.next_frame() {
            pending.push(r);
        }
        loop {
            for r in pending.drain(..) {
                let frame = match r {
                    Ok(f) => f,
                    Err(e) if e.is_fatal() => {
                        return fail(RelayClientError::Protocol(e.to_string()));
                    }
                    Err(_) => continue,
                };
                match frame {
                    Frame::Recv { src, payload } => {
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                        let ev = RelayEvent::Packet {
                            src,
                            payload: payload.into_bytes(),
                        };
                        match self.events.try_send(ev) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                self.stats.recv_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return End::Stop,
                        }
                    }
                    Frame::PeerGone { key, reason } => {
                        if self
                            .events
                            .send(RelayEvent::PeerGone { key, reason })
                            .await
                            .is_err()
                        {
                            return End::Stop;
                        }
                    }
                    Frame::Restarting { retry_after_ms } => {
                        return End::Restarting(Duration::from_millis(u64::from(retry_after_ms)));
                    }
                    Frame::Closed { reason } | Frame::LoginRefused { reason } => {
                        return fail(RelayClientError::Closed(reason));
                    }
                    Frame::Ping { data } => {
                        wbuf.clear();
                        Frame::Pong { data }.encode(&mut wbuf);
                        if let Err(e) = write(&mut wr, &wbuf).await {
                            return fail(e);
                        }
                    }
                    Frame::Pong { .. } | Frame::LoginOk => {}
                    other => {
                        return fail(RelayClientError::Protocol(format!(
                            "unexpected {} frame",
                            other.name()
                        )));
                    }
                }
            }
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return fail(RelayClientError::Io("the relay closed the connection".into())),
                    Ok(n) => {
                        silent_ticks = 0;
                        last_rx = tokio::time::Instant::now();
                        probe_deadline = None;
                        decoder.feed(&buf[..n]);
                        while let Some(r) = decoder.next_frame() {
                            pending.push(r);
                        }
                    }
                    Err(e) => return fail(io(e)),
                },
                p = out.recv() => {
                    let Some((dst, payload)) = p else { return End::Stop };
                    wbuf.clear();
                    let mut n = 0u64;
                    if encode_send(&dst, &payload, &mut wbuf).is_ok() {
                        n += 1;
                    }
                    // Batch whatever else is queued into one write.
                    while wbuf.len() < 64 * 1024 {
                        let Ok((dst, payload)) = out.try_recv() else { break };
                        if encode_send(&dst, &payload, &mut wbuf).is_ok() {
                            n += 1;
                        }
                    }
                    let now = tokio::time::Instant::now();
                    if probe_deadline.is_none() && now.duration_since(last_rx) >= PROBE_AFTER_SILENCE {
                        ping += 1;
                        Frame::Ping { data: ping.to_be_bytes() }.encode(&mut wbuf);
                        probe_deadline = Some(now + PONG_TIMEOUT);
                    }
                    if let Err(e) = write(&mut wr, &wbuf).await {
                        return fail(e);
                    }
                    self.stats.sent.fetch_add(n, Ordering::Relaxed);
                }
                () = sleep_until_or_never(probe_deadline), if probe_deadline.is_some() => {
                    return fail(RelayClientError::Timeout("the relay did not answer a ping within 3 s"));
                }
                _ = keepalive.tick() => {
                    silent_ticks += 1;
                    if silent_ticks >= 3 {
                        return fail(RelayClientError::Timeout("relay silent for three keepalive intervals"));
                    }
                    ping += 1;
                    wbuf.clear();
                    Frame::Ping { data: ping.to_be_bytes() }.encode(&mut wbuf);
                    if let Err(e) = write(&mut wr, &wbuf).await {
                        return fail(e);
                    }
                    if probe_deadline.is_none() {
                        probe_deadline = Some(tokio::time::Instant::now() + PONG_TIMEOUT);
                    }
                }
            }
        }
    }

    /// Connects, verifies TLS, and logs in. Returns the stream halves and the
    /// decoder (which may hold frames that arrived right after `LoginOk`).
    async fn login(&self) -> Result<(RdHalf, WrHalf, FrameDecoder), RelayClientError> {
        let addr = format!("{}:{}", self.url.host, self.url.port);
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| RelayClientError::Connect {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| {
                RelayClientError::Tls(
                    match weft_api_client::tls_failure_hint(&e, self.seen.get(), &self.cfg.trust) {
                        Some(hint) => format!("{e}: {hint}"),
                        None => e.to_string(),
                    },
                )
            })?;
        let mut binding = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut binding, TLS_EXPORTER_LABEL, None)
            .map_err(|e| RelayClientError::Tls(format!("exporter: {e}")))?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let nonce = match next_frame(&mut rd, &mut decoder, &mut buf).await? {
            Frame::ServerChallenge { nonce } => nonce,
            Frame::LoginRefused { reason } => return Err(RelayClientError::Refused(reason)),
            other => {
                return Err(RelayClientError::Protocol(format!(
                    "expected a challenge, got {}",
                    other.name()
                )));
            }
        };
        let signature = (self.signer)(
            LOGIN_SIGNATURE_CONTEXT,
            &login_signed_message(&nonce, &binding),
        );
        let login = Frame::ClientLogin {
            node_key: self.cfg.node_key,
            signature,
            version: PROTOCOL_VERSION,
        };
        write(&mut wr, &login.to_vec()).await?;
        match next_frame(&mut rd, &mut decoder, &mut buf).await? {
            Frame::LoginOk => Ok((rd, wr, decoder)),
            Frame::LoginRefused { reason } => Err(RelayClientError::Refused(reason)),
            Frame::Restarting { .. } => Err(RelayClientError::Closed(Reason::Overloaded)),
            other => Err(RelayClientError::Protocol(format!(
                "expected the login answer, got {}",
                other.name()
            ))),
        }
    }
}

type RdHalf = tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>;
type WrHalf = tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>;

async fn write(wr: &mut WrHalf, bytes: &[u8]) -> Result<(), RelayClientError> {
    wr.write_all(bytes).await.map_err(io)?;
    wr.flush().await.map_err(io)
}

/// Reads until one valid frame (bad non-fatal frames are skipped).
async fn next_frame(
    rd: &mut RdHalf,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Frame, RelayClientError> {
    loop {
        while let Some(r) = decoder.next_frame() {
            match r {
                Ok(f) => return Ok(f),
                Err(e) if e.is_fatal() => return Err(RelayClientError::Protocol(e.to_string())),
                Err(_) => {}
            }
        }
        let n = rd.read(buf).await.map_err(io)?;
        if n == 0 {
            return Err(RelayClientError::Io(
                "the relay closed the connection during login".into(),
            ));
        }
        decoder.feed(&buf[..n]);
    }
}

/// Sleeps until `deadline`, or forever without one (for a `select!` branch
/// guarded by `deadline.is_some()`).
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

//! Carrying one accepted TCP stream to a service instance: connect from weftd
//! to a usable instance's overlay address and the service port (the one the
//! stream's hash picks first, the next usable ones when a connect fails), then
//! copy both ways with half-close until both directions end. The stream is
//! kernel TCP over the tunnel, so a relay restart or a path switch only delays
//! its packets.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_proto::service::{Health, ServiceView};

use super::store::Target;

/// Most streams one consumer carries at once; more are closed at accept.
pub(crate) const MAX_STREAMS: u64 = 4096;
/// Each direction's copy buffer (tokio's default, 8 KiB, costs a read and a
/// write per 8 KiB: a quarter of the listener's throughput).
const COPY_BUF: usize = 64 * 1024;
/// How long one connect to an instance may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One consumer's live side, shared with its listener and streams: where
/// it goes now, its counters, and the switch that stops its streams.
#[derive(Debug)]
pub(crate) struct Entry {
    target: Mutex<Option<Target>>,
    pub(crate) streams_total: AtomicU64,
    pub(crate) streams_open: AtomicU64,
    pub(crate) bytes: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            target: Mutex::new(None),
            streams_total: AtomicU64::new(0),
            streams_open: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            stop: watch::Sender::new(false),
        }
    }
}

impl Entry {
    /// Where new streams go (`None`: nowhere, they are closed).
    pub(crate) fn set_target(&self, target: Option<Target>) {
        if let Ok(mut t) = self.target.lock() {
            *t = target;
        }
    }

    /// Whether new streams have a service to go to.
    pub(crate) fn target(&self) -> Option<Target> {
        self.target.lock().ok().and_then(|t| t.clone())
    }

    /// Ends every stream it carries (new ones are closed at once) until
    /// [`Entry::restart`].
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Lets streams run again after [`Entry::stop`].
    pub(crate) fn restart(&self) {
        self.stop.send_replace(false);
    }
}

/// The instance addresses to try for a stream, in order: first the one
/// [`ServiceView::pick`] gives for `hash`, then the other usable instances of
/// its pool (healthy ones, or unknown ones when none is healthy), then unknown
/// ones after healthy ones. Never an unhealthy instance.
pub(crate) fn candidates(view: &ServiceView, hash: u64) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let Some(first) = view.pick(hash) else {
        return out;
    };
    out.push(first.addr);
    for h in [Health::Healthy, Health::Unknown] {
        let pool: Vec<Ipv4Addr> = view
            .instances
            .iter()
            .filter(|i| i.health == h)
            .map(|i| i.addr)
            .collect();
        let n = pool.len();
        // Rotated to start after the first pick, so failovers spread too.
        let start = pool.iter().position(|a| *a == first.addr).unwrap_or(0);
        for k in 1..=n {
            let a = pool[(start + k) % n];
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// A stream's hash: its two ends, keyed per process.
fn flow_hash(keys: &std::hash::RandomState, peer: SocketAddr, local: SocketAddr) -> u64 {
    let mut h = keys.build_hasher();
    h.write(peer.to_string().as_bytes());
    h.write(local.to_string().as_bytes());
    h.finish()
}

/// Accepts streams on `listener` for `entry` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, entry: Arc<Entry>) {
    let keys = std::hash::RandomState::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let local = stream.local_addr().unwrap_or(peer);
                spawn(stream, entry.clone(), flow_hash(&keys, peer, local));
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// Accepts intercepted streams on the transparent listener: each one's local
/// address is its original destination, which `route` maps to its consumer
/// (`None`: no consumer intercepts it any more; the stream is closed).
pub(crate) async fn serve_transparent(
    listener: TcpListener,
    route: impl Fn(SocketAddr) -> Option<Arc<Entry>> + Send + 'static,
) {
    let keys = std::hash::RandomState::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(original) = stream.local_addr() else {
                    continue;
                };
                match route(original) {
                    Some(entry) => spawn(stream, entry, flow_hash(&keys, peer, original)),
                    None => {
                        tracing::debug!(%peer, %original, "no consumer intercepts this; closed")
                    }
                }
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// An accept error (no file descriptors left, say): logged, and a pause so a
/// persistent one does not spin.
async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accepting a service stream failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn(stream: TcpStream, entry: Arc<Entry>, hash: u64) {
    if entry.streams_open.load(Ordering::Relaxed) >= MAX_STREAMS {
        tracing::warn!(
            max = MAX_STREAMS,
            "too many open streams for one service consumer; closing a new one"
        );
        return;
    }
    tokio::spawn(carry(stream, entry, hash));
}

/// Decrements the open count however the stream ends.
struct Open<'a>(&'a AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn carry(inbound: TcpStream, entry: Arc<Entry>, hash: u64) {
    let mut stop = entry.stop.subscribe();
    if *stop.borrow_and_update() {
        return;
    }
    let Some(target) = entry.target() else {
        return;
    };
    entry.streams_total.fetch_add(1, Ordering::Relaxed);
    entry.streams_open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&entry.streams_open);
    let _ = inbound.set_nodelay(true);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut outbound = tokio::select! {
        s = connect(&target, hash) => match s {
            Some(s) => s,
            None => return,
        },
        () = &mut stopped => return,
    };
    let mut inbound = Counted {
        inner: inbound,
        bytes: &entry.bytes,
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, COPY_BUF, COPY_BUF) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, service = %target.view.name, "service stream ended with an error");
            }
        }
        () = &mut stopped => {}
    }
}

/// A stream that adds what is read from it and written to it to `bytes` as
/// it goes (so `weft service list` shows a long stream's progress).
struct Counted<'a> {
    inner: TcpStream,
    bytes: &'a AtomicU64,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection to the first instance of [`candidates`] that answers.
async fn connect(target: &Target, hash: u64) -> Option<TcpStream> {
    let addrs = candidates(&target.view, hash);
    if addrs.is_empty() {
        tracing::warn!(
            service = %target.view.name,
            network = %target.view.network,
            "no usable instance (none healthy or unknown); stream closed"
        );
        return None;
    }
    for addr in addrs {
        let to = SocketAddr::from((addr, target.port));
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            Ok(Err(e)) => {
                tracing::warn!(%to, error = %e, service = %target.view.name, "connect to a service instance failed; trying the next");
            }
            Err(_) => {
                tracing::warn!(%to, service = %target.view.name, "connect to a service instance timed out; trying the next");
            }
        }
    }
    tracing::warn!(service = %target.view.name, "no instance answered; stream closed");
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use weft_proto::NodeKey;
    use weft_proto::service::ServiceInstance;

    use super::*;

    fn inst(b: u8, health: Health) -> ServiceInstance {
        ServiceInstance {
            node_key: NodeKey::from_bytes([b; 32]),
            node: format!("n{b}"),
            addr: Ipv4Addr::new(127, 0, 0, b),
            health,
            checked_ms: None,
        }
    }

    fn view(instances: Vec<ServiceInstance>) -> ServiceView {
        let mut v = super::super::store::tests::view("db", "prod", "5432");
        v.instances = instances;
        v
    }

    #[test]
    fn candidates_start_with_the_pick_and_never_list_unhealthy() {
        let v = view(vec![
            inst(1, Health::Healthy),
            inst(2, Health::Unhealthy),
            inst(3, Health::Healthy),
            inst(4, Health::Unknown),
        ]);
        for h in 0..4 {
            let c = candidates(&v, h);
            assert_eq!(c[0], v.pick(h).unwrap().addr);
            assert_eq!(c.len(), 3, "{c:?}");
            assert!(!c.contains(&Ipv4Addr::new(127, 0, 0, 2)));
            assert_eq!(c[2], Ipv4Addr::new(127, 0, 0, 4), "unknown last");
        }
        assert_ne!(candidates(&v, 0)[0], candidates(&v, 1)[0], "spread");
        assert!(candidates(&view(vec![inst(1, Health::Unhealthy)]), 0).is_empty());
    }

    /// An echo server on `127.0.0.X:port` (0: any port on 127.0.0.1).
    async fn echo(ip: Ipv4Addr, port: u16) -> SocketAddr {
        let l = TcpListener::bind((ip, port)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_stream_is_carried_both_ways_with_half_close_after_a_failed_instance() {
        // Instance 127.0.0.1 answers; 127.0.0.9 refuses (nothing listens on
        // that port there), and comes first for some hashes.
        let up = echo(Ipv4Addr::LOCALHOST, 0).await;
        let entry = Arc::new(Entry::default());
        entry.set_target(Some(Target {
            view: view(vec![inst(9, Health::Healthy), inst(1, Health::Healthy)]),
            port: up.port(),
        }));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let task = tokio::spawn(serve(l, entry.clone()));
        for _ in 0..4 {
            let mut c = TcpStream::connect(at).await.unwrap();
            let data = vec![7u8; 300_000];
            c.write_all(&data).await.unwrap();
            // Half-close: the echo still answers everything after our FIN.
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data);
        }
        // The counters settle once the streams' tasks end.
        for _ in 0..100 {
            if entry.streams_open.load(Ordering::Relaxed) == 0
                && entry.bytes.load(Ordering::Relaxed) == 4 * 600_000
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(entry.streams_total.load(Ordering::Relaxed), 4);
        assert_eq!(entry.streams_open.load(Ordering::Relaxed), 0);
        assert_eq!(entry.bytes.load(Ordering::Relaxed), 4 * 600_000);

        // Stopped: an open stream ends, a new one is closed at once.
        let mut c = TcpStream::connect(at).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        entry.stop();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(n.is_err() || rest.is_empty());
        task.abort();
    }

    #[tokio::test]
    async fn without_a_usable_instance_the_stream_is_closed() {
        let entry = Arc::new(Entry::default());
        entry.set_target(Some(Target {
            view: view(vec![inst(1, Health::Unhealthy)]),
            port: 9,
        }));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let task = tokio::spawn(serve(l, entry.clone()));
        let mut c = TcpStream::connect(at).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(r.is_err() || buf.is_empty());
        assert_eq!(entry.streams_total.load(Ordering::Relaxed), 1);
        task.abort();
    }
}

//! The map stream: SSE over a long-lived response, parsed with the bounded
//! parser from `weft_proto::sse`, and a reconnecting subscription on top
//! that moves between a controller's URLs.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use weft_proto::netmap::{MapEvent, StreamEvent};
use weft_proto::sse::SseParser;

use crate::{Client, ClientError};

/// One open map stream. Dropping it closes the connection.
pub struct MapStream {
    body: Incoming,
    _sender: SendRequest<Full<Bytes>>,
    parser: SseParser,
    pending: VecDeque<Result<StreamEvent, ClientError>>,
    last_event_id: Option<u64>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for MapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

impl MapStream {
    pub(crate) fn new(
        body: Incoming,
        sender: SendRequest<Full<Bytes>>,
        last_event_id: Option<u64>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            body,
            _sender: sender,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            last_event_id,
            idle_timeout,
        }
    }

    /// The version of the last event received: send it as `Last-Event-ID` when
    /// reconnecting.
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    /// The next event: a map event, a task notice or the controller's
    /// `reconnect` notice (it is shutting down). `None` when the controller
    /// ended the stream; an error when it broke or stayed silent (not even a
    /// keepalive) for the idle timeout.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ClientError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let frame = match tokio::time::timeout(self.idle_timeout, self.body.frame()).await {
                Err(_) => return Some(Err(ClientError::Timeout("map stream idle (no keepalive)"))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(ClientError::Stream(e.to_string()))),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Err(e) = self.parser.feed(&data) {
                return Some(Err(ClientError::Stream(e.to_string())));
            }
            while let Some(ev) = self.parser.next_event() {
                let decoded = StreamEvent::decode(&ev.event, ev.id.as_deref(), &ev.data)
                    .map_err(|e| ClientError::Stream(e.to_string()));
                if let Ok(StreamEvent::Map(m)) = &decoded {
                    self.last_event_id = Some(m.version());
                }
                self.pending.push_back(decoded);
            }
        }
    }
}

impl MapStream {
    /// The next map event, skipping task notices (for callers that only follow
    /// the map). `None` also when the controller asked to reconnect elsewhere.
    pub async fn next_map(&mut self) -> Option<Result<MapEvent, ClientError>> {
        loop {
            match self.next().await? {
                Ok(StreamEvent::Map(m)) => return Some(Ok(m)),
                Ok(StreamEvent::Task(_)) => {}
                Ok(StreamEvent::Reconnect(_)) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A random wait in `[0, max)` (jitter between reconnects; not for secrets).
pub fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    // A fresh RandomState is keyed from the OS's randomness.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ms);
    Duration::from_millis(h.finish() % ms)
}

/// How long a subscription waits, at most, before opening a stream on the
/// next controller URL after the one in use broke (a random share of it, so
/// a fleet does not arrive at once).
const FAILOVER_SPREAD: Duration = Duration::from_secs(2);

/// A map stream that reconnects by itself and resumes with `Last-Event-ID`,
/// so after a reconnect the caller gets only what changed, or a snapshot.
/// Each reconnect leaves the URL and address in use ([`Client::fail_over`]).
/// With several controller URLs a broken stream moves to the next one after
/// a random wait under 2 s; the controller's `reconnect` notice too, after a
/// random wait within the spread it asks for. Once every URL failed in a row,
/// exponential backoff from 250 ms to 30 s (reset after a successful event).
pub struct MapSubscription {
    client: Client,
    stream: Option<MapStream>,
    last_event_id: Option<u64>,
    idle_timeout: Duration,
    backoff: Duration,
    /// Waits before the next connection attempt (jitter after a failover).
    wait: Duration,
    /// Connection attempts or streams that failed since the last event.
    failures: usize,
}

impl MapSubscription {
    pub(crate) fn new(client: Client, last_event_id: Option<u64>, idle_timeout: Duration) -> Self {
        Self {
            client,
            stream: None,
            last_event_id,
            idle_timeout,
            backoff: Duration::ZERO,
            wait: Duration::ZERO,
            failures: 0,
        }
    }

    /// The client (its [`Client::current`] controller).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The stream in use failed: the next URL (when there are several) after
    /// a random wait, or the backoff once every URL failed in a row.
    fn failed(&mut self) {
        self.stream = None;
        self.failures += 1;
        let n = self.client.urls().len();
        // With one URL this still moves to the next of its name's addresses.
        self.client.fail_over();
        if n > 1 && self.failures < n {
            self.wait = jitter(FAILOVER_SPREAD);
        } else {
            self.wait = self.backoff;
            self.backoff =
                (self.backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
        }
    }

    /// The version of the last event delivered.
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    /// The next event. Transient failures are retried internally; an error is
    /// returned only when retrying cannot help (credential refused, node
    /// disabled or removed).
    /// The `reconnect` notice is obeyed here, never returned.
    pub async fn next(&mut self) -> Result<StreamEvent, ClientError> {
        loop {
            if self.stream.is_none() {
                let wait = std::mem::take(&mut self.wait);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match self
                    .client
                    .map_stream(self.last_event_id, self.idle_timeout)
                    .await
                {
                    Ok(s) => self.stream = Some(s),
                    Err(e) if e.is_permanent() => return Err(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "map stream connect failed; retrying");
                        self.failed();
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.next().await {
                Some(Ok(StreamEvent::Reconnect(n))) => {
                    tracing::info!(reason = %n.reason, within_ms = n.within_ms, "the controller asked to reconnect elsewhere");
                    self.stream = None;
                    self.client.fail_over();
                    self.wait = jitter(Duration::from_millis(n.within_ms));
                }
                Some(Ok(ev)) => {
                    if let StreamEvent::Map(m) = &ev {
                        self.last_event_id = Some(m.version());
                    }
                    self.backoff = Duration::ZERO;
                    self.failures = 0;
                    return Ok(ev);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "map stream broke; reconnecting");
                    self.failed();
                }
                None => self.failed(),
            }
        }
    }
}

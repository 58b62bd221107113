//! The relay member stream: SSE parsed with the bounded `weft_proto::sse`
//! parser into [`MembersEvent`]s, and the controller's `reconnect` notice
//! ([`MembersStreamEvent`]). It tracks the version of the last event, to
//! resume from with `Last-Event-ID` on the next connection.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use weft_proto::netmap::{EVENT_RECONNECT, ReconnectNotice};
use weft_proto::relay_api::MembersEvent;
use weft_proto::sse::SseParser;

use crate::ClientError;

/// What a member stream brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersStreamEvent {
    /// A snapshot or delta of the member set.
    Members(MembersEvent),
    /// The controller is shutting down: reconnect elsewhere within the
    /// notice's spread, resuming from [`MembersStream::last_event_id`].
    Reconnect(ReconnectNotice),
}

/// One open member stream. Dropping it closes the connection.
pub struct MembersStream {
    body: Incoming,
    _sender: SendRequest<Full<Bytes>>,
    parser: SseParser,
    pending: VecDeque<Result<MembersStreamEvent, ClientError>>,
    idle_timeout: Duration,
    last_event_id: Option<u64>,
}

impl std::fmt::Debug for MembersStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembersStream").finish_non_exhaustive()
    }
}

impl MembersStream {
    pub(crate) fn new(
        body: Incoming,
        sender: SendRequest<Full<Bytes>>,
        idle_timeout: Duration,
        last_event_id: Option<u64>,
    ) -> Self {
        Self {
            body,
            _sender: sender,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            idle_timeout,
            last_event_id,
        }
    }

    /// The version of the last member event received (or the one the
    /// stream resumed from): send it as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    /// The next member event. `None` when the controller ended the stream
    /// (relay removed, controller stopping) or asked to reconnect
    /// elsewhere; an error when it broke, sent something invalid, or stayed
    /// silent (not even a keepalive) for the idle timeout.
    pub async fn next(&mut self) -> Option<Result<MembersEvent, ClientError>> {
        match self.next_event().await? {
            Ok(MembersStreamEvent::Members(ev)) => Some(Ok(ev)),
            Ok(MembersStreamEvent::Reconnect(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The next event, the controller's `reconnect` notice included.
    /// `None` when the controller ended the stream; an error as for
    /// [`MembersStream::next`].
    pub async fn next_event(&mut self) -> Option<Result<MembersStreamEvent, ClientError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let frame = match tokio::time::timeout(self.idle_timeout, self.body.frame()).await {
                Err(_) => {
                    return Some(Err(ClientError::Timeout(
                        "member stream idle (no keepalive)",
                    )));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(ClientError::MemberStream(e.to_string()))),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Err(e) = self.parser.feed(&data) {
                return Some(Err(ClientError::MemberStream(e.to_string())));
            }
            while let Some(ev) = self.parser.next_event() {
                let decoded = if ev.event == EVENT_RECONNECT {
                    ReconnectNotice::decode(&ev.data)
                        .map(MembersStreamEvent::Reconnect)
                        .map_err(|e| ClientError::MemberStream(e.to_string()))
                } else {
                    MembersEvent::decode(&ev.event, &ev.data)
                        .map(MembersStreamEvent::Members)
                        .map_err(|e| ClientError::MemberStream(e.to_string()))
                };
                if let Ok(MembersStreamEvent::Members(m)) = &decoded {
                    self.last_event_id = Some(m.version());
                }
                self.pending.push_back(decoded);
            }
        }
    }
}

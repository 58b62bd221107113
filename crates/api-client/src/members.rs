//! The relay member stream: SSE parsed with the bounded `weft_proto::sse`
//! parser into [`MembersEvent`]s.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use weft_proto::relay_api::MembersEvent;
use weft_proto::sse::SseParser;

use crate::ClientError;

/// One open member stream. Dropping it closes the connection.
pub struct MembersStream {
    body: Incoming,
    _sender: SendRequest<Full<Bytes>>,
    parser: SseParser,
    pending: VecDeque<Result<MembersEvent, ClientError>>,
    idle_timeout: Duration,
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
    ) -> Self {
        Self {
            body,
            _sender: sender,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            idle_timeout,
        }
    }

    /// The next event. `None` when the controller ended the stream (relay
    /// removed, controller stopping); an error when it broke, sent something
    /// invalid, or stayed silent (not even a keepalive) for the idle timeout.
    pub async fn next(&mut self) -> Option<Result<MembersEvent, ClientError>> {
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
                self.pending.push_back(
                    MembersEvent::decode(&ev.event, &ev.data)
                        .map_err(|e| ClientError::MemberStream(e.to_string())),
                );
            }
        }
    }
}

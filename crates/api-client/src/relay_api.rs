//! The API a relay uses (bearer: a relay token): its report, and the member
//! set it may serve (once, or as a stream).

use std::time::Duration;

use http::Method;
use weft_proto::relay_api::{MemberSnapshot, RelayInfo, RelayReportRequest};

use crate::ClientError;
use crate::client::Client;
use crate::members::MembersStream;

impl Client {
    /// `POST /v1/relay/report`: the relay's TLS fingerprint and STUN port.
    pub async fn relay_report(&self, req: &RelayReportRequest) -> Result<RelayInfo, ClientError> {
        self.request(Method::POST, "/v1/relay/report", Some(req))
            .await
    }

    /// `GET /v1/relay/members`: the node keys the relay may serve.
    pub async fn relay_members(&self) -> Result<MemberSnapshot, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/relay/members", None)
            .await
    }

    /// Opens the member stream (`GET /v1/relay/members/stream`): a snapshot,
    /// then deltas. `idle_timeout` bounds the silence between events or
    /// keepalives. It does not reconnect by itself.
    pub async fn relay_members_stream(
        &self,
        idle_timeout: Duration,
    ) -> Result<MembersStream, ClientError> {
        self.relay_members_stream_from(None, idle_timeout).await
    }

    /// Opens the member stream resuming after `last_event_id` (the version
    /// of the last member event received, on this controller or another
    /// replica): the deltas since, or a snapshot when the controller no
    /// longer has them all.
    pub async fn relay_members_stream_from(
        &self,
        last_event_id: Option<u64>,
        idle_timeout: Duration,
    ) -> Result<MembersStream, ClientError> {
        let mut extra = vec![("accept", "text/event-stream".to_owned())];
        if let Some(v) = last_event_id {
            extra.push(("last-event-id", v.to_string()));
        }
        let (body, sender) = self
            .open_stream(
                "/v1/relay/members/stream",
                &extra,
                "opening the member stream",
            )
            .await?;
        Ok(MembersStream::new(
            body,
            sender,
            idle_timeout,
            last_event_id,
        ))
    }
}

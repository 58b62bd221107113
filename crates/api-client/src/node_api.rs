//! The API a node uses (bearer: its credential): health, registration, its
//! map (once, as a stream, or as a self-reconnecting subscription), reports.

use std::time::Duration;

use http::Method;
use weft_proto::NodeKey;
use weft_proto::api::{
    CHALLENGE_LEN, ChallengeResponse, Health, REGISTER_SIGNATURE_CONTEXT, RegisterRequest,
    RegisterResponse, ReportRequest, register_signed_message,
};
use weft_proto::netmap::NetworkMap;

use crate::ClientError;
use crate::client::Client;
use crate::stream::{MapStream, MapSubscription};

impl Client {
    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.request::<(), _>(Method::GET, "/healthz", None).await
    }

    /// `POST /v1/register/challenge`.
    pub async fn register_challenge(&self) -> Result<ChallengeResponse, ClientError> {
        self.request::<(), _>(Method::POST, "/v1/register/challenge", None)
            .await
    }

    /// `POST /v1/register` with a prepared request.
    pub async fn register_raw(
        &self,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        self.request(Method::POST, "/v1/register", Some(req)).await
    }

    /// Registers a key: fetches a challenge, has `sign(context, message)` sign
    /// it (pass `|c, m| identity.sign(c, m)`), and registers.
    pub async fn register(
        &self,
        token: &str,
        node_key: NodeKey,
        pow_nonce: u64,
        sign: impl FnOnce(&str, &[u8]) -> [u8; 64],
        name: Option<String>,
        hostname: Option<String>,
    ) -> Result<RegisterResponse, ClientError> {
        let req = RegisterRequest {
            api_version: None,
            token: token.to_owned(),
            node_key,
            pow_nonce,
            challenge: String::new(),
            signature: String::new(),
            name,
            hostname,
            facts: None,
        };
        self.register_signed(req, sign).await
    }

    /// Registers `req` (its `challenge` and `signature` are filled in here):
    /// fetches a challenge, has `sign(context, message)` sign it, and
    /// registers. [`Client::register`] with every field of the request.
    pub async fn register_signed(
        &self,
        mut req: RegisterRequest,
        sign: impl FnOnce(&str, &[u8]) -> [u8; 64],
    ) -> Result<RegisterResponse, ClientError> {
        use base64::Engine as _;
        let ch = self.register_challenge().await?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&ch.challenge)
            .map_err(|_| ClientError::Decode("challenge is not base64".into()))?;
        let challenge: [u8; CHALLENGE_LEN] = bytes
            .try_into()
            .map_err(|_| ClientError::Decode("challenge has the wrong length".into()))?;
        let sig = sign(
            REGISTER_SIGNATURE_CONTEXT,
            &register_signed_message(&challenge, &req.token),
        );
        req.challenge = ch.challenge;
        req.signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
        self.register_raw(&req).await
    }

    /// `GET /v1/map`.
    pub async fn map(&self) -> Result<NetworkMap, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/map", None).await
    }

    /// `POST /v1/node/report`.
    pub async fn report(&self, req: &ReportRequest) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/report", Some(req))
            .await
    }

    /// `POST /v1/node/rotate-key`: replaces this node's identity key (see
    /// [`weft_proto::api::RotateKeyRequest`]).
    pub async fn rotate_key(
        &self,
        req: &weft_proto::api::RotateKeyRequest,
    ) -> Result<weft_proto::api::RotateKeyResponse, ClientError> {
        self.request(Method::POST, "/v1/node/rotate-key", Some(req))
            .await
    }

    /// `POST /v1/node/usage`: monotonic usage counters (one share of them when
    /// they do not fit one upload).
    pub async fn upload_usage(
        &self,
        req: &weft_proto::usage::UsageUpload,
    ) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/usage", Some(req))
            .await
    }

    /// `POST /v1/node/events`: anomaly events, oldest first.
    pub async fn upload_events(
        &self,
        req: &weft_proto::events::NodeEventsRequest,
    ) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/events", Some(req))
            .await
    }

    /// `POST /v1/node/metrics`: a batch of forwarded samples, oldest first.
    pub async fn upload_metrics(
        &self,
        req: &weft_proto::samples::MetricsUpload,
    ) -> Result<weft_proto::samples::MetricsAccepted, ClientError> {
        self.request(Method::POST, "/v1/node/metrics", Some(req))
            .await
    }

    /// Opens the map stream once (`Last-Event-ID: last_event_id` if given).
    /// `idle_timeout` bounds the silence between events or keepalives.
    pub async fn map_stream(
        &self,
        last_event_id: Option<u64>,
        idle_timeout: Duration,
    ) -> Result<MapStream, ClientError> {
        let mut extra = vec![("accept", "text/event-stream".to_owned())];
        if let Some(id) = last_event_id {
            extra.push(("last-event-id", id.to_string()));
        }
        let (body, sender) = self
            .open_stream("/v1/map/stream", &extra, "opening the map stream")
            .await?;
        Ok(MapStream::new(body, sender, last_event_id, idle_timeout))
    }

    /// A self-reconnecting map subscription starting after `last_event_id`.
    pub fn subscribe_map(
        &self,
        last_event_id: Option<u64>,
        idle_timeout: Duration,
    ) -> MapSubscription {
        MapSubscription::new(self.clone(), last_event_id, idle_timeout)
    }
}

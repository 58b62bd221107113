//! Controller HTTP API bodies (JSON) and the registration signature format.
//!
//! Every path is under `/v1/`. Request bodies may carry `api_version`; a value
//! other than [`API_VERSION`] is refused with `400 unsupported_api_version`.
//! Errors are always [`ErrorBody`] `{code, message}`.
//!
//! Secrets (join tokens, node credentials, the admin token) only ever travel in
//! bodies and the `Authorization: Bearer` header; the `Debug` impls of the types
//! that hold them print `<redacted>`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::NodeKey;
use crate::facts::HostFacts;
use crate::net::{Ipv4Net, Ipv6Net};

/// The API and wire format version of this build.
pub const API_VERSION: u32 = 1;

/// File in the controller's data directory holding the admin token (0600),
/// read by `weft admin --data-dir`.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File in the controller's data directory holding its URL
/// (`https://host:port`), read by `weft admin --data-dir`.
pub const CONTROLLER_URL_FILE: &str = "controller.url";

/// Signature context of a registration (see [`register_signed_message`]).
pub const REGISTER_SIGNATURE_CONTEXT: &str = "weft/register/v1";

/// Length of a registration challenge in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// The message a node signs, under [`REGISTER_SIGNATURE_CONTEXT`], to register:
/// `challenge (32 bytes) || SHA-256(join token as UTF-8) (32 bytes)`.
///
/// The challenge proves freshness (the controller issued it, it is single-use and
/// short-lived); the token hash binds the signature to the token it is presented
/// with, so a signature cannot be replayed with another token. The signature
/// itself is `Identity::sign(REGISTER_SIGNATURE_CONTEXT, message)` from
/// `weft-identity` (Ed25519 over a context-prefixed message), sent as unpadded
/// URL-safe base64.
pub fn register_signed_message(challenge: &[u8; CHALLENGE_LEN], token: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(challenge);
    out[32..].copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

/// Every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, for example `token_expired`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the controller answers.
    pub status: String,
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The controller's current map version.
    pub map_version: u64,
}

/// `GET /readyz`: whether this controller should get traffic now (200
/// `ready`, 503 `not_ready` with the reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyStatus {
    /// `ready` or `not_ready`.
    pub status: String,
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Why it is not ready (empty when ready).
    #[serde(default)]
    pub reasons: Vec<ErrorBody>,
}

/// `POST /v1/register/challenge` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes, unpadded URL-safe base64. Single use.
    pub challenge: String,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
}

/// `POST /v1/register` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// The join token (secret).
    pub token: String,
    /// The node's identity key.
    pub node_key: NodeKey,
    /// The proof-of-work nonce for `node_key`.
    pub pow_nonce: u64,
    /// A challenge from `POST /v1/register/challenge`.
    pub challenge: String,
    /// Signature over [`register_signed_message`], unpadded URL-safe base64.
    pub signature: String,
    /// Requested node name (a DNS label); defaults to one derived from `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The machine's host name, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The host's facts (OS, kernel, CPU, memory, weftd's version and hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
}

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("token", &"<redacted>")
            .field("node_key", &self.node_key)
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// A node's address in one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// The network's name.
    pub network: String,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address, if the network has an IPv6 prefix.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

/// `POST /v1/register` response.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The registered key.
    pub node_key: NodeKey,
    /// The node's name.
    pub name: String,
    /// The per-node credential (secret): send as `Authorization: Bearer` on every
    /// later call. Registering again returns a new one and revokes the old.
    pub credential: String,
    /// The node's addresses.
    pub addresses: Vec<NodeAddress>,
}

impl fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("node_key", &self.node_key)
            .field("name", &self.name)
            .field("credential", &"<redacted>")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/node/report` body: liveness, and optionally the node's candidate
/// endpoints (replacing the previous list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// Candidate underlay addresses; `None` keeps the previous list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<SocketAddr>>,
    /// The host's facts, sent when they changed (and on a session's first
    /// report); `None` keeps the stored ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
}

/// Signature context of a key rotation (`POST /v1/node/rotate-key`).
pub const ROTATE_KEY_SIGNATURE_CONTEXT: &str = "weft/rotate-key/v1";

/// The message the NEW key signs, under [`ROTATE_KEY_SIGNATURE_CONTEXT`], to
/// rotate: `old key (32 bytes) || new key (32 bytes)`. The node credential
/// authenticates the node (the old key's holder); the signature proves the
/// node holds the new key's secret and binds it to the key it replaces.
pub fn rotate_key_signed_message(old: &NodeKey, new: &NodeKey) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(old.as_bytes());
    out[32..].copy_from_slice(new.as_bytes());
    out
}

/// `POST /v1/node/rotate-key` body (authenticated by the node credential): the
/// node's identity key changes from `old_node_key` to `new_node_key`; its id,
/// name, tags, addresses and credential stay. Sending it again after it
/// succeeded (a retry after a crash) succeeds again and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// The key being replaced (the node's key now, or, on a retry, before).
    pub old_node_key: NodeKey,
    /// The new key.
    pub new_node_key: NodeKey,
    /// The new key's proof-of-work nonce (it must meet the difficulty of every
    /// network the node is in).
    pub pow_nonce: u64,
    /// The new key's signature over [`rotate_key_signed_message`], unpadded
    /// URL-safe base64.
    pub signature: String,
}

/// `POST /v1/node/rotate-key` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The node's key now (the new one).
    pub node_key: NodeKey,
    /// The node's name (unchanged).
    pub name: String,
    /// `false` when the key had already been rotated to `new_node_key` (a retry).
    pub rotated: bool,
}

/// `POST /v1/admin/networks` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// A DNS label: lowercase letters, digits, `-`; 1 to 63 characters.
    pub name: String,
    /// IPv4 prefix, prefix length 8 to 30, for example `100.64.0.0/24`.
    pub ipv4_cidr: String,
    /// Optional IPv6 prefix, prefix length 8 to 96.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<String>,
    /// DNS domain; default [`crate::netmap::DEFAULT_DNS_DOMAIN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Proof-of-work bits required to join (0 to 40); default 24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pow_difficulty: Option<u32>,
}

/// A network as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Name.
    pub name: String,
    /// IPv4 prefix.
    pub ipv4_cidr: Ipv4Net,
    /// IPv6 prefix.
    #[serde(default)]
    pub ipv6_prefix: Option<Ipv6Net>,
    /// DNS domain.
    pub dns_domain: String,
    /// Proof-of-work bits required to join.
    pub pow_difficulty: u32,
    /// Number of member nodes.
    pub node_count: u64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// The anomaly thresholds the admin set (`None`: the agents' defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::events::AnomalyThresholds>,
}

/// `GET /v1/admin/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkList {
    /// Sorted by name.
    pub networks: Vec<Network>,
}

fn one_use() -> Option<u32> {
    Some(1)
}

/// `POST /v1/admin/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// Networks a node joins with this token (at least one).
    pub networks: Vec<String>,
    /// Tags given to nodes that join with it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Lifetime in seconds (1 to 10 years' worth).
    pub expires_in_secs: u64,
    /// How many registrations it allows: absent = 1 (one-shot), `null` = unlimited.
    #[serde(default = "one_use")]
    pub max_uses: Option<u32>,
    /// Free text for the admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A join token's metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Identifier used to revoke it.
    pub id: u64,
    /// Networks it grants.
    pub networks: Vec<String>,
    /// Tags it gives.
    pub tags: Vec<String>,
    /// Allowed registrations; `None` = unlimited.
    pub max_uses: Option<u32>,
    /// Registrations so far.
    pub uses: u32,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: u64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// `active`, `expired`, `exhausted` or `revoked`.
    pub state: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /v1/admin/tokens` response: the secret is shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenResponse {
    /// The join token (secret).
    pub token: String,
    /// Its metadata.
    pub info: TokenInfo,
}

impl fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

/// `GET /v1/admin/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// Sorted by id.
    pub tokens: Vec<TokenInfo>,
}

/// A node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Identity key.
    pub node_key: NodeKey,
    /// Name.
    pub name: String,
    /// Host name it reported at registration.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Disabled nodes are in nobody's map and their credential is refused.
    pub disabled: bool,
    /// Connected to the controller, debounced like a map's `Peer::online`
    /// (online once a map stream stayed open 5 s, offline after 15 s without).
    pub online: bool,
    /// Reported endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Last contact, Unix milliseconds.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// Registration time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Addresses per network.
    pub addresses: Vec<NodeAddress>,
    /// The host facts it last reported (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
    /// When those facts last changed, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_changed_ms: Option<u64>,
    /// What it runs against what the admin expects and approved (`ok`,
    /// `mismatch`, `unknown`; see [`crate::integrity`]).
    #[serde(default)]
    pub integrity: crate::integrity::IntegrityState,
}

/// `GET /v1/admin/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    /// Sorted by name.
    pub nodes: Vec<NodeInfo>,
}

/// `PATCH /v1/admin/nodes/{node}` body; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateNodeRequest {
    /// Must be [`API_VERSION`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New tag set (replaces the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Disable (`true`) or enable (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: u64,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Who: `admin` or `node:<key>`.
    pub actor: String,
    /// What, for example `network.create`, `node.rename`.
    pub action: String,
    /// On what, for example a network name or node key.
    pub target: String,
    /// Details (never secrets).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// `GET /v1/admin/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// `GET /v1/admin/policy` and the answer to `PUT /v1/admin/policy`: the
/// controller's one policy document (the `weft-policy` TOML format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    /// Version: 0 while the policy is the one generated from the networks and
    /// never stored, then +1 per change.
    pub version: u64,
    /// The policy text.
    pub text: String,
    /// Who set this version (`admin`, `system`).
    pub author: String,
    /// When, Unix milliseconds (0 for a generated policy).
    pub at_ms: u64,
}

/// `PUT /v1/admin/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPolicyRequest {
    /// Optional; if present must equal [`API_VERSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// The new policy text. Refused (400 `policy_invalid`, with line numbers)
    /// when it does not parse, and (422 `policy_tests_failed`) when one of its
    /// `[[test]]` blocks fails against the current nodes.
    pub text: String,
    /// Only store if the current version is this one (optimistic locking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
}

/// `POST /v1/admin/policy/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheckRequest {
    /// Optional; if present must equal [`API_VERSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// Initiator: a selector (`tag:web`, `node:web1`, `network:prod`, ...) or a
    /// bare node name.
    pub from: String,
    /// Destination, same forms.
    pub to: String,
    /// `any` (default), `tcp`, `udp`, `icmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Destination port (tcp/udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One decided pair of a policy check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPairDecision {
    /// Initiating node.
    pub from_node: String,
    /// Its address used.
    pub from_addr: std::net::IpAddr,
    /// Destination node.
    pub to_node: String,
    /// Its address used.
    pub to_addr: std::net::IpAddr,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The deciding rule's name (absent for an unnamed rule or default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The deciding rule's number (1-based; absent for default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_number: Option<u32>,
    /// The deciding rule's line in the policy text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// One line: `web (100.64.0.2) -> db (100.64.0.3): allowed by rule "x" (line 3)`.
    pub explanation: String,
}

/// Answer to `POST /v1/admin/policy/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheckResponse {
    /// The policy version checked against.
    pub version: u64,
    /// Whether every pair is allowed (false when there is no pair).
    pub allowed: bool,
    /// Every pair decided.
    pub pairs: Vec<PolicyPairDecision>,
    /// A side matched no node and a representative node stood in.
    pub representative: bool,
    /// Only the first pairs were checked.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_uses_default_is_one_and_null_is_unlimited() {
        let r: CreateTokenRequest =
            serde_json::from_str(r#"{"networks":["a"],"expires_in_secs":60}"#).unwrap();
        assert_eq!(r.max_uses, Some(1));
        let r: CreateTokenRequest =
            serde_json::from_str(r#"{"networks":["a"],"expires_in_secs":60,"max_uses":null}"#)
                .unwrap();
        assert_eq!(r.max_uses, None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let req = RegisterRequest {
            api_version: None,
            token: "weft_j_SECRET".into(),
            node_key: NodeKey::from_bytes([1; 32]),
            pow_nonce: 0,
            challenge: String::new(),
            signature: String::new(),
            name: None,
            hostname: None,
            facts: None,
        };
        assert!(!format!("{req:?}").contains("SECRET"));
    }

    #[test]
    fn signed_message_binds_challenge_and_token() {
        let a = register_signed_message(&[1; 32], "t1");
        assert_ne!(a, register_signed_message(&[1; 32], "t2"));
        assert_ne!(a, register_signed_message(&[2; 32], "t1"));
        assert_eq!(&a[..32], &[1; 32]);
    }
}

/// `POST /v1/node/routes` body: the subnets this node advertises (replacing
/// what it advertised before). Each is IPv4 CIDR text, e.g. `192.168.50.0/24`;
/// new ones wait for an admin's approval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseRoutesRequest {
    /// The subnets.
    pub routes: Vec<String>,
}

/// `POST /v1/admin/routes` (admin-set route, approved at once) and
/// `POST /v1/admin/routes/{approve,reject,withdraw}` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// The gateway node (key or name).
    pub node: String,
    /// The subnet (IPv4 CIDR text).
    pub prefix: String,
    /// The network; may be left out when the node is in exactly one network
    /// (approve, reject, withdraw: every network where the node has the route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// One advertised route as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The gateway node's name.
    pub node: String,
    /// The gateway node's key.
    pub node_key: NodeKey,
    /// The network.
    pub network: String,
    /// The subnet.
    pub prefix: String,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    /// `node` (advertised by the agent) or `admin` (set by an admin).
    pub source: String,
    /// Whether this gateway carries the subnet now (approved, and the first
    /// approved gateway that is online).
    pub primary: bool,
    /// Whether the gateway is online (debounced like a map's `Peer::online`).
    pub online: bool,
}

/// `GET /v1/admin/routes` response (and the body of route changes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteList {
    /// Routes, by network, prefix and approval order.
    pub routes: Vec<RouteInfo>,
}

/// `DELETE /v1/admin/networks/{network}/members/{node}`: removes a node from one
/// network (its address there is released; its other networks stay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveResponse {
    /// The node's name.
    pub node: String,
    /// The network it left.
    pub network: String,
}

/// `DELETE /v1/admin/networks/{name}`: what deleting the network removed.
/// Its members stay registered (a node left in no network keeps its
/// identity and credential); each receives a map without the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRemoveResponse {
    /// The network's name.
    pub network: String,
    /// How many nodes were members.
    pub members: u64,
    /// How many of them are now in no network.
    pub orphaned: u64,
    /// Subnet routes that went with it.
    pub routes: u64,
    /// Its services' names, sorted (removed with their instances).
    #[serde(default)]
    pub services: Vec<String>,
    /// Data entries scoped to it that went.
    pub data_keys: u64,
    /// Join tokens that still grant other networks, without this one.
    #[serde(default)]
    pub tokens_changed: Vec<u64>,
    /// Join tokens that granted only this network: revoked.
    #[serde(default)]
    pub tokens_revoked: Vec<u64>,
    /// Whether its generated default rule was taken out of the policy (an
    /// edited policy is left as it is).
    pub policy_rule_removed: bool,
}

//! The admin API (bearer: the admin token): policy, networks, tokens, nodes,
//! routes, relays, audit log. What `weft admin` calls.

use http::Method;
use weft_proto::api::{
    AuditList, CreateNetworkRequest, CreateTokenRequest, CreateTokenResponse, Network, NetworkList,
    NodeInfo, NodeList, PolicyCheckRequest, PolicyCheckResponse, PolicyDoc, SetPolicyRequest,
    TokenInfo, TokenList, UpdateNodeRequest,
};
use weft_proto::relay_api::{CreateRelayRequest, CreateRelayResponse, RelayInfo, RelayList};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `GET /v1/admin/policy`.
    pub async fn get_policy(&self) -> Result<PolicyDoc, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/policy", None)
            .await
    }

    /// `PUT /v1/admin/policy`.
    pub async fn set_policy(&self, req: &SetPolicyRequest) -> Result<PolicyDoc, ClientError> {
        self.request(Method::PUT, "/v1/admin/policy", Some(req))
            .await
    }

    /// `POST /v1/admin/policy/check`.
    pub async fn check_policy(
        &self,
        req: &PolicyCheckRequest,
    ) -> Result<PolicyCheckResponse, ClientError> {
        self.request(Method::POST, "/v1/admin/policy/check", Some(req))
            .await
    }

    /// `POST /v1/admin/networks`.
    pub async fn create_network(&self, req: &CreateNetworkRequest) -> Result<Network, ClientError> {
        self.request(Method::POST, "/v1/admin/networks", Some(req))
            .await
    }

    /// `GET /v1/admin/networks`.
    pub async fn list_networks(&self) -> Result<NetworkList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/networks", None)
            .await
    }

    /// `GET /v1/admin/networks/{name}`.
    pub async fn show_network(&self, name: &str) -> Result<Network, ClientError> {
        self.request::<(), _>(
            Method::GET,
            &format!("/v1/admin/networks/{}", escape(name)),
            None,
        )
        .await
    }

    /// `POST /v1/admin/tokens` (the secret is in the response, once).
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ClientError> {
        self.request(Method::POST, "/v1/admin/tokens", Some(req))
            .await
    }

    /// `GET /v1/admin/tokens`.
    pub async fn list_tokens(&self) -> Result<TokenList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/tokens", None)
            .await
    }

    /// `DELETE /v1/admin/tokens/{id}`.
    pub async fn revoke_token(&self, id: u64) -> Result<TokenInfo, ClientError> {
        self.request::<(), _>(Method::DELETE, &format!("/v1/admin/tokens/{id}"), None)
            .await
    }

    /// `GET /v1/admin/nodes[?network=]`.
    pub async fn list_nodes(&self, network: Option<&str>) -> Result<NodeList, ClientError> {
        let path = match network {
            Some(n) => format!("/v1/admin/nodes?network={}", escape(n)),
            None => "/v1/admin/nodes".to_owned(),
        };
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/admin/nodes/{key-or-name}`.
    pub async fn show_node(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.request::<(), _>(
            Method::GET,
            &format!("/v1/admin/nodes/{}", escape(node)),
            None,
        )
        .await
    }

    /// `PATCH /v1/admin/nodes/{key-or-name}`.
    pub async fn update_node(
        &self,
        node: &str,
        req: &UpdateNodeRequest,
    ) -> Result<NodeInfo, ClientError> {
        self.request(
            Method::PATCH,
            &format!("/v1/admin/nodes/{}", escape(node)),
            Some(req),
        )
        .await
    }

    /// `DELETE /v1/admin/nodes/{key-or-name}`.
    pub async fn remove_node(&self, node: &str) -> Result<(), ClientError> {
        self.request_no_content::<()>(
            Method::DELETE,
            &format!("/v1/admin/nodes/{}", escape(node)),
            None,
        )
        .await
    }

    /// `GET /v1/admin/nodes/{key-or-name}/metrics[?since=]`: the node's
    /// forwarded history (`since`: Unix milliseconds; default the whole 24 h).
    pub async fn node_metrics(
        &self,
        node: &str,
        since_ms: Option<u64>,
    ) -> Result<weft_proto::samples::NodeMetrics, ClientError> {
        let mut path = format!("/v1/admin/nodes/{}/metrics", escape(node));
        if let Some(s) = since_ms {
            path.push_str(&format!("?since={s}"));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/node/routes`: the subnets this node advertises.
    pub async fn advertise_routes(
        &self,
        req: &weft_proto::api::AdvertiseRoutesRequest,
    ) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/routes", Some(req))
            .await
    }

    /// `GET /v1/admin/routes`.
    pub async fn list_routes(&self) -> Result<weft_proto::api::RouteList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/routes", None)
            .await
    }

    /// `POST /v1/admin/routes` (`op` = `add`) or
    /// `POST /v1/admin/routes/{op}` (`approve`, `reject`, `withdraw`).
    pub async fn route(
        &self,
        op: &str,
        req: &weft_proto::api::RouteRequest,
    ) -> Result<weft_proto::api::RouteList, ClientError> {
        let path = if op == "add" {
            "/v1/admin/routes".to_owned()
        } else {
            format!("/v1/admin/routes/{}", escape(op))
        };
        self.request(Method::POST, &path, Some(req)).await
    }

    /// `DELETE /v1/admin/networks/{network}/members/{node}`.
    pub async fn leave_network(
        &self,
        network: &str,
        node: &str,
    ) -> Result<weft_proto::api::LeaveResponse, ClientError> {
        self.request::<(), _>(
            Method::DELETE,
            &format!(
                "/v1/admin/networks/{}/members/{}",
                escape(network),
                escape(node)
            ),
            None,
        )
        .await
    }

    /// `DELETE /v1/admin/networks/{name}`: deletes the network, its
    /// memberships, routes, services and data (its nodes stay registered).
    pub async fn remove_network(
        &self,
        name: &str,
    ) -> Result<weft_proto::api::NetworkRemoveResponse, ClientError> {
        self.request::<(), _>(
            Method::DELETE,
            &format!("/v1/admin/networks/{}", escape(name)),
            None,
        )
        .await
    }

    /// `POST /v1/admin/relays` (the relay token is in the response, once).
    pub async fn create_relay(
        &self,
        req: &CreateRelayRequest,
    ) -> Result<CreateRelayResponse, ClientError> {
        self.request(Method::POST, "/v1/admin/relays", Some(req))
            .await
    }

    /// `GET /v1/admin/relays`.
    pub async fn list_relays(&self) -> Result<RelayList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/relays", None)
            .await
    }

    /// `GET /v1/admin/relays/{name}`.
    pub async fn show_relay(&self, name: &str) -> Result<RelayInfo, ClientError> {
        self.request::<(), _>(
            Method::GET,
            &format!("/v1/admin/relays/{}", escape(name)),
            None,
        )
        .await
    }

    /// `DELETE /v1/admin/relays/{name}`.
    pub async fn remove_relay(&self, name: &str) -> Result<(), ClientError> {
        self.request_no_content::<()>(
            Method::DELETE,
            &format!("/v1/admin/relays/{}", escape(name)),
            None,
        )
        .await
    }

    /// `GET /v1/admin/events[?node=&since=&limit=]`: the anomaly event log,
    /// oldest first.
    pub async fn events(
        &self,
        node: Option<&str>,
        since_ms: Option<u64>,
        limit: Option<u32>,
    ) -> Result<weft_proto::events::EventList, ClientError> {
        let mut query = Vec::new();
        if let Some(n) = node {
            query.push(format!("node={}", escape(n)));
        }
        if let Some(s) = since_ms {
            query.push(format!("since={s}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let mut path = "/v1/admin/events".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `PUT /v1/admin/networks/{name}/anomaly`.
    pub async fn set_network_anomaly(
        &self,
        name: &str,
        req: &weft_proto::events::SetAnomalyRequest,
    ) -> Result<Network, ClientError> {
        self.request(
            Method::PUT,
            &format!("/v1/admin/networks/{}/anomaly", escape(name)),
            Some(req),
        )
        .await
    }

    /// `GET /v1/admin/usage?by=&since=`: usage growth since `since_ms` (Unix
    /// milliseconds; default a day ago), grouped `by`.
    pub async fn usage(
        &self,
        by: weft_proto::usage::UsageBy,
        since_ms: Option<u64>,
    ) -> Result<weft_proto::usage::UsageReport, ClientError> {
        let mut path = format!("/v1/admin/usage?by={}", by.as_str());
        if let Some(s) = since_ms {
            path.push_str(&format!("&since={s}"));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/admin/audit`.
    pub async fn audit(
        &self,
        limit: u32,
        before: Option<u64>,
        target: Option<&str>,
    ) -> Result<AuditList, ClientError> {
        let mut path = format!("/v1/admin/audit?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        if let Some(t) = target {
            path.push_str(&format!("&target={}", escape(t)));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }
}

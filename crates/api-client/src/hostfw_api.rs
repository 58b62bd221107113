//! The host firewall: `weft admin firewall` (the declared file and the
//! dynamic rules).

use http::Method;
use weft_proto::hostfw::{
    AllowRuleRequest, FirewallDoc, FirewallRuleInfo, FirewallRuleList, SetFirewallRequest,
};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `GET /v1/admin/firewall`: the file in force and the nodes it selects.
    pub async fn get_firewall(&self) -> Result<FirewallDoc, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/firewall", None)
            .await
    }

    /// `PUT /v1/admin/firewall`: replace the file (400 `firewall_invalid`
    /// with every mistake's line when it does not parse).
    pub async fn set_firewall(&self, req: &SetFirewallRequest) -> Result<FirewallDoc, ClientError> {
        self.request(Method::PUT, "/v1/admin/firewall", Some(req))
            .await
    }

    /// `POST /v1/admin/firewall/check`: validate a file without storing it.
    pub async fn check_firewall(
        &self,
        req: &SetFirewallRequest,
    ) -> Result<FirewallDoc, ClientError> {
        self.request(Method::POST, "/v1/admin/firewall/check", Some(req))
            .await
    }

    /// `GET /v1/admin/firewall/rules[?node=]`: the dynamic rules.
    pub async fn firewall_rules(
        &self,
        node: Option<&str>,
    ) -> Result<FirewallRuleList, ClientError> {
        let path = match node {
            Some(n) => format!("/v1/admin/firewall/rules?node={}", escape(n)),
            None => "/v1/admin/firewall/rules".to_owned(),
        };
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/admin/firewall/rules`: add a dynamic rule.
    pub async fn allow_firewall_rule(
        &self,
        req: &AllowRuleRequest,
    ) -> Result<FirewallRuleInfo, ClientError> {
        self.request(Method::POST, "/v1/admin/firewall/rules", Some(req))
            .await
    }

    /// `DELETE /v1/admin/firewall/rules/{id}`: revoke a dynamic rule.
    pub async fn revoke_firewall_rule(&self, id: &str) -> Result<FirewallRuleInfo, ClientError> {
        let path = format!("/v1/admin/firewall/rules/{}", escape(id));
        self.request::<(), _>(Method::DELETE, &path, None).await
    }
}

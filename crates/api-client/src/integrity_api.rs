//! Hooks and integrity: the node's report (`POST /v1/node/integrity`, its
//! credential) and the admin's approvals and expectations (the admin token).
//! What weftd's integrity reporter and `weft admin hook|integrity` call.

use http::Method;
use weft_proto::integrity::{
    ApproveHookRequest, ExpectRequest, ExpectedWeftd, HookApprovalList, IntegrityOverview,
    IntegrityReport, NodeIntegrity,
};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `POST /v1/node/integrity`: what this node runs; answers its state.
    pub async fn report_integrity(
        &self,
        req: &IntegrityReport,
    ) -> Result<NodeIntegrity, ClientError> {
        self.request(Method::POST, "/v1/node/integrity", Some(req))
            .await
    }

    /// `GET /v1/admin/hooks`.
    pub async fn list_hook_approvals(&self) -> Result<HookApprovalList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/hooks", None)
            .await
    }

    /// `PUT /v1/admin/hooks/{name}`: approve `sha256` for hook `name`.
    pub async fn approve_hook(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<HookApprovalList, ClientError> {
        let req = ApproveHookRequest {
            api_version: None,
            sha256: sha256.to_owned(),
        };
        self.request(
            Method::PUT,
            &format!("/v1/admin/hooks/{}", escape(name)),
            Some(&req),
        )
        .await
    }

    /// `DELETE /v1/admin/hooks/{name}[?sha256=]`: revoke one approved hash of
    /// hook `name`, or all of them.
    pub async fn revoke_hook(
        &self,
        name: &str,
        sha256: Option<&str>,
    ) -> Result<HookApprovalList, ClientError> {
        let mut path = format!("/v1/admin/hooks/{}", escape(name));
        if let Some(h) = sha256 {
            path.push_str(&format!("?sha256={}", escape(h)));
        }
        self.request::<(), _>(Method::DELETE, &path, None).await
    }

    /// `PUT /v1/admin/integrity/expect`.
    pub async fn expect_weftd(&self, req: &ExpectRequest) -> Result<ExpectedWeftd, ClientError> {
        self.request(Method::PUT, "/v1/admin/integrity/expect", Some(req))
            .await
    }

    /// `GET /v1/admin/integrity[?node=]`.
    pub async fn integrity(&self, node: Option<&str>) -> Result<IntegrityOverview, ClientError> {
        let path = match node {
            Some(n) => format!("/v1/admin/integrity?node={}", escape(n)),
            None => "/v1/admin/integrity".to_owned(),
        };
        self.request::<(), _>(Method::GET, &path, None).await
    }
}

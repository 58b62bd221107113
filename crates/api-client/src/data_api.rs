//! The admin API of node data and sealed secrets (`weft admin data|secret`).
//! Keys travel in bodies, never in URLs.

use http::Method;
use weft_proto::data::{
    DataList, SecretItem, SecretList, SetDataRequest, SetSecretRequest, UnsetDataRequest,
    UnsetSecretRequest,
};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `PUT /v1/admin/data`.
    pub async fn set_data(&self, req: &SetDataRequest) -> Result<DataList, ClientError> {
        self.request(Method::PUT, "/v1/admin/data", Some(req)).await
    }

    /// `DELETE /v1/admin/data`.
    pub async fn unset_data(&self, req: &UnsetDataRequest) -> Result<DataList, ClientError> {
        self.request(Method::DELETE, "/v1/admin/data", Some(req))
            .await
    }

    /// `GET /v1/admin/data[?node=|tag=|network=][&resolved=true]`: `filter`
    /// is one of `("node", name)`, `("tag", tag)`, `("network", name)`.
    pub async fn list_data(
        &self,
        filter: Option<(&str, &str)>,
        resolved: bool,
    ) -> Result<DataList, ClientError> {
        let mut path = "/v1/admin/data".to_owned();
        if let Some((kind, name)) = filter {
            path.push_str(&format!("?{kind}={}", escape(name)));
            if resolved {
                path.push_str("&resolved=true");
            }
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `PUT /v1/admin/secrets`: `req.sealed` is already sealed to the node.
    pub async fn set_secret(&self, req: &SetSecretRequest) -> Result<SecretItem, ClientError> {
        self.request(Method::PUT, "/v1/admin/secrets", Some(req))
            .await
    }

    /// `DELETE /v1/admin/secrets`.
    pub async fn unset_secret(&self, req: &UnsetSecretRequest) -> Result<(), ClientError> {
        self.request_no_content(Method::DELETE, "/v1/admin/secrets", Some(req))
            .await
    }

    /// `GET /v1/admin/secrets[?node=]`: keys, sizes and versions, never values.
    pub async fn list_secrets(&self, node: Option<&str>) -> Result<SecretList, ClientError> {
        let path = match node {
            Some(n) => format!("/v1/admin/secrets?node={}", escape(n)),
            None => "/v1/admin/secrets".to_owned(),
        };
        self.request::<(), _>(Method::GET, &path, None).await
    }
}

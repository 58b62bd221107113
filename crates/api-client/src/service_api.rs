//! Named services and SSH: the node's reports (its credential) and the admin's
//! `weft admin service` (the admin token).

use http::Method;
use weft_proto::service::{
    AdvertiseServiceRequest, AdvertiseServiceResponse, CreateServiceRequest, HealthReport,
    ServiceInfo, ServiceList,
};
use weft_proto::ssh::{SshServerReport, SshSessionReport};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `POST /v1/node/services/advertise`: offer (or, with no ports, withdraw)
    /// a service this node provides.
    pub async fn advertise_service(
        &self,
        req: &AdvertiseServiceRequest,
    ) -> Result<AdvertiseServiceResponse, ClientError> {
        self.request(Method::POST, "/v1/node/services/advertise", Some(req))
            .await
    }

    /// `POST /v1/node/services/health`: this node's instance checks.
    pub async fn report_service_health(&self, req: &HealthReport) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/services/health", Some(req))
            .await
    }

    /// `POST /v1/node/ssh/server`: this node's SSH server (port, host key) or
    /// its absence.
    pub async fn report_ssh_server(&self, req: &SshServerReport) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/ssh/server", Some(req))
            .await
    }

    /// `POST /v1/node/ssh/sessions`: sessions this node's SSH server saw
    /// (idempotent by record id).
    pub async fn report_ssh_sessions(&self, req: &SshSessionReport) -> Result<(), ClientError> {
        self.request_no_content(Method::POST, "/v1/node/ssh/sessions", Some(req))
            .await
    }

    /// `POST /v1/admin/services`: create (or with `replace`, replace) a service.
    pub async fn create_service(
        &self,
        req: &CreateServiceRequest,
    ) -> Result<ServiceInfo, ClientError> {
        self.request(Method::POST, "/v1/admin/services", Some(req))
            .await
    }

    /// `GET /v1/admin/services`.
    pub async fn list_services(&self) -> Result<ServiceList, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/admin/services", None)
            .await
    }

    /// `GET /v1/admin/services/{network}/{name}`.
    pub async fn show_service(
        &self,
        network: &str,
        name: &str,
    ) -> Result<ServiceInfo, ClientError> {
        let path = format!("/v1/admin/services/{}/{}", escape(network), escape(name));
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `DELETE /v1/admin/services/{network}/{name}`.
    pub async fn remove_service(
        &self,
        network: &str,
        name: &str,
    ) -> Result<ServiceInfo, ClientError> {
        let path = format!("/v1/admin/services/{}/{}", escape(network), escape(name));
        self.request::<(), _>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/admin/services/{network}/{name}/{approve|reject}/{node}`: decide
    /// on a node's advertisement.
    pub async fn decide_service_instance(
        &self,
        network: &str,
        name: &str,
        node: &str,
        approve: bool,
    ) -> Result<ServiceInfo, ClientError> {
        let verb = if approve { "approve" } else { "reject" };
        let path = format!(
            "/v1/admin/services/{}/{}/{verb}/{}",
            escape(network),
            escape(name),
            escape(node)
        );
        self.request::<(), _>(Method::POST, &path, None).await
    }
}

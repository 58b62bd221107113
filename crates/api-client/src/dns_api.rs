//! The DNS blocklist: the admin's `weft admin dns blocklist` and the node's
//! fetch of the list its map names.

use http::Method;
use weft_proto::dnsblock::{DnsBlocklist, DnsBlocklistStatus, SetDnsBlocklistRequest};

use crate::ClientError;
use crate::client::Client;

impl Client {
    /// `PUT /v1/admin/dns/blocklist`: replace the list (400
    /// `dns_blocklist_invalid` with the bad lines when it does not parse).
    pub async fn set_dns_blocklist(
        &self,
        req: &SetDnsBlocklistRequest,
    ) -> Result<DnsBlocklistStatus, ClientError> {
        self.request(Method::PUT, "/v1/admin/dns/blocklist", Some(req))
            .await
    }

    /// `GET /v1/admin/dns/blocklist[?domains=true]`.
    pub async fn get_dns_blocklist(
        &self,
        domains: bool,
    ) -> Result<DnsBlocklistStatus, ClientError> {
        let path = if domains {
            "/v1/admin/dns/blocklist?domains=true"
        } else {
            "/v1/admin/dns/blocklist"
        };
        self.request::<(), _>(Method::GET, path, None).await
    }

    /// `DELETE /v1/admin/dns/blocklist`.
    pub async fn clear_dns_blocklist(&self) -> Result<DnsBlocklistStatus, ClientError> {
        self.request::<(), _>(Method::DELETE, "/v1/admin/dns/blocklist", None)
            .await
    }

    /// `GET /v1/node/dns/blocklist` (node credential): the list itself.
    pub async fn fetch_dns_blocklist(&self) -> Result<DnsBlocklist, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/node/dns/blocklist", None)
            .await
    }
}

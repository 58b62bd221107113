//! The DNS blocklist's row (migration 0012). What it means and how it is set
//! is [`crate::model`]'s `dns_blocklist` module.

use std::fmt;
use std::sync::Arc;

use weft_proto::dnsblock::DnsBlocklist;

/// The stored blocklist.
#[derive(Clone, PartialEq, Eq)]
pub struct DnsBlocklistRecord {
    /// The list (version, mode, sorted unique domains), shared with the model.
    pub list: Arc<DnsBlocklist>,
    /// Who set it (an actor label).
    pub set_by: String,
    /// When, Unix milliseconds.
    pub set_at_ms: u64,
}

impl fmt::Debug for DnsBlocklistRecord {
    /// Without the domains (up to 500,000): their count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsBlocklistRecord")
            .field("version", &self.list.version)
            .field("mode", &self.list.mode)
            .field("entries", &self.list.domains.len())
            .field("set_by", &self.set_by)
            .field("set_at_ms", &self.set_at_ms)
            .finish()
    }
}

//! Fuzz entry points, shared by the cargo-fuzz target in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. No function here may panic on any input; the
//! assertions inside are the properties being fuzzed.

use serde::de::DeserializeOwned;
use weft_proto::api::{
    API_VERSION, AdvertiseRoutesRequest, CreateNetworkRequest, CreateTokenRequest,
    PolicyCheckRequest, RegisterRequest, ReportRequest, RouteRequest, SetPolicyRequest,
    UpdateNodeRequest,
};
use weft_proto::relay_api::{CreateRelayRequest, RelayReportRequest, RelayUrl, is_tls_fingerprint};

use crate::error::ApiError;
use crate::model::World;
use crate::validate;

/// Decodes a body as the controller's JSON extractor does, with its version check.
fn decode<T: DeserializeOwned>(body: &[u8], version: impl Fn(&T) -> Option<u32>) -> Option<T> {
    let value: T = serde_json::from_slice(body).ok()?;
    match version(&value) {
        None => Some(value),
        Some(v) if v == API_VERSION => Some(value),
        Some(_) => None,
    }
}

/// Every error message is bounded (it quotes at most a clipped part of the input).
fn check(r: Result<(), ApiError>) {
    if let Err(e) = r {
        assert!(e.to_string().len() < 2048);
    }
}

/// Host facts as the handlers check them (a bounded error), and the property
/// the agent relies on: whatever it collected, once sanitized, passes.
fn check_facts(facts: Option<weft_proto::facts::HostFacts>) {
    if let Some(f) = facts {
        check(validate::facts(&f));
        assert_eq!(f.sanitized().check(), Ok(()));
    }
}

/// A controller request body: `data[0]` picks which POST/PATCH body type
/// (register, report, networks, tokens, nodes, policy, policy check, routes,
/// relays), the rest is decoded as it, then put through the checks the
/// controller's handlers make before touching state (`validate`, the policy
/// parser, a policy check against an empty world). Derived node names are
/// always valid names.
pub fn controller_request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 11 {
        0 => {
            if let Some(r) = decode::<RegisterRequest>(body, |r| r.api_version) {
                if let Some(n) = &r.name {
                    check(validate::name("node", n));
                }
                if let Some(h) = &r.hostname {
                    check(validate::hostname(h));
                }
                let derived = validate::derive_node_name(r.hostname.as_deref(), &r.node_key);
                assert!(validate::name("node", &derived).is_ok(), "{derived:?}");
                check_facts(r.facts);
            }
        }
        1 => {
            if let Some(r) = decode::<ReportRequest>(body, |r| r.api_version) {
                let _ = r.endpoints.map(|e| e.len() <= validate::MAX_ENDPOINTS);
                check_facts(r.facts);
            }
        }
        2 => {
            if let Some(r) = decode::<CreateNetworkRequest>(body, |r| r.api_version) {
                check(validate::name("network", &r.name));
                let _ = r.ipv4_cidr.parse::<weft_proto::net::Ipv4Net>();
                if let Some(d) = &r.dns_domain {
                    check(validate::domain(d));
                }
            }
        }
        3 => {
            if let Some(r) = decode::<CreateTokenRequest>(body, |r| r.api_version) {
                for n in &r.networks {
                    check(validate::name("network", n));
                }
                check(validate::tags(&r.tags));
            }
        }
        4 => {
            if let Some(r) = decode::<UpdateNodeRequest>(body, |r| r.api_version) {
                if let Some(n) = &r.name {
                    check(validate::name("node", n));
                }
                if let Some(t) = &r.tags {
                    check(validate::tags(t));
                }
            }
        }
        5 => {
            if let Some(r) = decode::<SetPolicyRequest>(body, |r| r.api_version)
                && let Ok(p) = weft_policy::parse(&r.text)
            {
                let _ = p.validate();
            }
        }
        6 => {
            if let Some(r) = decode::<PolicyCheckRequest>(body, |r| r.api_version) {
                let _ = crate::api::views::check_policy(&World::default(), &r);
            }
        }
        7 => {
            if let Some(r) = decode::<AdvertiseRoutesRequest>(body, |_| None) {
                for route in &r.routes {
                    let _ = route.parse::<weft_proto::net::Ipv4Net>();
                }
            }
        }
        8 => {
            if let Some(r) = decode::<RouteRequest>(body, |_| None)
                && let Some(n) = &r.network
            {
                check(validate::name("network", n));
            }
        }
        9 => {
            if let Some(r) = decode::<CreateRelayRequest>(body, |r| r.api_version) {
                check(validate::name("relay", &r.name));
                if let Ok(url) = RelayUrl::parse(&r.url) {
                    let again = RelayUrl::parse(&url.to_string());
                    assert!(again.is_ok_and(|u| u == url), "{url} does not parse back");
                }
            }
        }
        _ => {
            if let Some(r) = decode::<RelayReportRequest>(body, |r| r.api_version)
                && let Some(f) = &r.tls_fingerprint
            {
                let _ = is_tls_fingerprint(f);
            }
        }
    }
}

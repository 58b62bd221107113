//! Hardening of what nodes and admins may put into the controller (issue 14),
//! against the real controller binary: one validator for network CIDRs and
//! subnet routes, reported endpoints peers could not use, and names that could
//! spoof admin output.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_api_client::ClientError;
use weft_proto::api::{CreateNetworkRequest, RouteRequest, UpdateNodeRequest};

/// The status, code and message of a refused call.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api { status, body }) => {
            assert!(!body.message.is_empty());
            (status, body.code, body.message)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// IPv4 ranges that are never a subnet, each with a word the refusal names.
const BAD_V4: [(&str, &str); 10] = [
    ("0.0.0.0/8", "this network"),
    ("0.0.0.0/16", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("127.0.0.0/24", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("239.255.0.0/16", "multicast"),
    ("240.0.0.0/8", "reserved"),
    ("255.255.255.0/24", "reserved"),
    ("255.255.255.255/32", "broadcast"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cidrs_and_routes_refuse_the_same_unroutable_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();

    // Network create: every unroutable IPv4 range (prefix lengths the network
    // API accepts, 8 to 30).
    for (cidr, what) in BAD_V4 {
        let len: u8 = cidr.rsplit('/').next().unwrap().parse().unwrap();
        if !(8..=30).contains(&len) {
            continue;
        }
        let (status, code, msg) = refused(admin.create_network(&network("bad", cidr, 0)).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_cidr"),
            "{cidr}: {msg}"
        );
        assert!(msg.contains(what) && msg.contains(cidr), "{cidr}: {msg}");
    }
    // IPv6 prefixes: link-local, multicast, loopback-holding and mapped space.
    for (prefix, what) in [
        ("fe80::/64", "link-local"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("ff02::/16", "multicast"),
        ("::/96", "unspecified"),
        ("::ffff:0:0/96", "IPv4-mapped"),
    ] {
        let req = CreateNetworkRequest {
            ipv6_prefix: Some(prefix.into()),
            ..network("bad6", "100.70.0.0/24", 0)
        };
        let (status, code, msg) = refused(admin.create_network(&req).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_cidr"),
            "{prefix}: {msg}"
        );
        assert!(
            msg.contains(what) && msg.contains(prefix),
            "{prefix}: {msg}"
        );
    }
    assert!(admin.list_networks().await.unwrap().networks.is_empty());

    // A valid network and a gateway to put routes on.
    let req = CreateNetworkRequest {
        ipv6_prefix: Some("fd7a:115c:a1e0::/48".into()),
        ..network("lab", "100.64.0.0/24", 0)
    };
    admin.create_network(&req).await.unwrap();
    let tok = admin
        .create_token(&token_req(&["lab"], None, 3600))
        .await
        .unwrap();
    let client = ctl.client();
    let gw = register(&client, &tok.token, &identity(0)).await.unwrap();
    admin
        .update_node(
            &gw.name,
            &UpdateNodeRequest {
                tags: Some(vec!["gateway".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let gwc = client.with_bearer(&gw.credential).unwrap();

    // Route add (admin) and advertise (node): the same ranges, the same refusal.
    for (cidr, what) in BAD_V4 {
        let req = RouteRequest {
            node: gw.name.clone(),
            prefix: cidr.into(),
            network: None,
        };
        let (status, code, msg) = refused(admin.route("add", &req).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_cidr"),
            "{cidr}: {msg}"
        );
        assert!(msg.contains(what) && msg.contains(cidr), "{cidr}: {msg}");
        let adv = weft_proto::api::AdvertiseRoutesRequest {
            routes: vec![cidr.into()],
        };
        let (status, code, msg) = refused(gwc.advertise_routes(&adv).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_cidr"),
            "{cidr}: {msg}"
        );
        assert!(msg.contains(what), "{cidr}: {msg}");
    }
    assert!(admin.list_routes().await.unwrap().routes.is_empty());
    // A routable subnet still works on both paths.
    let ok = RouteRequest {
        node: gw.name.clone(),
        prefix: "192.168.50.0/24".into(),
        network: None,
    };
    admin.route("add", &ok).await.unwrap();
    admin
        .create_network(&network("site", "10.20.0.0/16", 0))
        .await
        .unwrap();
}

//! Subnet routes and many networks against the real controller binary: bad
//! input is refused with a clear `{code, message}`, approval puts a route in
//! the maps of the peers allowed to reach it, and membership changes are exact.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_proto::api::{AdvertiseRoutesRequest, RouteRequest};

fn route(node: &str, prefix: &str) -> RouteRequest {
    RouteRequest {
        node: node.into(),
        prefix: prefix.into(),
        network: None,
    }
}

fn advertise(routes: &[&str]) -> AdvertiseRoutesRequest {
    AdvertiseRoutesRequest {
        routes: routes.iter().map(|s| s.to_string()).collect(),
    }
}

const POLICY: &str = r#"
[[rule]]
name = "members of lab may reach each other"
action = "allow"
from = "network:lab"
to = "network:lab"

[[rule]]
name = "to the site LAN"
action = "allow"
from = "network:lab"
to = "subnet:192.168.50.0/24"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_validated_permitted_approved_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    admin
        .create_network(&network("lab", "100.64.0.0/24", 8))
        .await
        .unwrap();
    admin
        .set_policy(&weft_proto::api::SetPolicyRequest {
            api_version: None,
            text: POLICY.into(),
            expect_version: None,
        })
        .await
        .unwrap();
    let tok = admin
        .create_token(&token_req(&["lab"], Some(10), 3600))
        .await
        .unwrap();
    let client = ctl.client();
    let gw_id = identity(8);
    let gw = register(&client, &tok.token, &gw_id).await.unwrap();
    let peer_id = identity(8);
    let peer = register(&client, &tok.token, &peer_id).await.unwrap();
    let gwc = client.with_bearer(&gw.credential).unwrap();
    let peerc = client.with_bearer(&peer.credential).unwrap();

    // Not permitted: a node without the tag `gateway`.
    let (status, code, msg) = refused(gwc.advertise_routes(&advertise(&["192.168.50.0/24"])).await);
    assert_eq!((status, code.as_str()), (403, "route_not_permitted"));
    assert!(msg.contains("gateway"), "{msg}");

    tag_gateway(&admin, &gw.name).await;

    // Invalid CIDRs.
    for (bad, needle) in [
        ("192.168.50.0/33", "not an IPv4 CIDR"),
        ("192.168.50.1/24", "192.168.50.1/24"),
        ("nonsense", "not an IPv4 CIDR"),
        ("0.0.0.0/0", "default route"),
        ("127.0.0.0/8", "loopback"),
    ] {
        let (status, code, msg) = refused(gwc.advertise_routes(&advertise(&[bad])).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_cidr"),
            "{bad}: {msg}"
        );
        assert!(msg.contains(needle), "{bad}: {msg}");
    }
    // Overlapping the overlay, and a host route to an overlay address.
    let (status, code, msg) = refused(gwc.advertise_routes(&advertise(&["100.64.0.0/16"])).await);
    assert_eq!((status, code.as_str()), (409, "route_overlaps_overlay"));
    assert!(msg.contains("\"lab\""), "{msg}");
    let (_, code, msg) = refused(gwc.advertise_routes(&advertise(&["100.64.0.7/32"])).await);
    assert_eq!(code, "route_overlaps_overlay");
    assert!(msg.contains("host route"), "{msg}");
    // The same through the admin API.
    let (status, code, _) = refused(admin.route("add", &route(&gw.name, "100.64.0.0/25")).await);
    assert_eq!((status, code.as_str()), (409, "route_overlaps_overlay"));
    let (status, code, _) = refused(admin.route("add", &route(&gw.name, "10.0.0.0/40")).await);
    assert_eq!((status, code.as_str()), (400, "invalid_cidr"));
    let (status, code, _) = refused(
        admin
            .route("approve", &route(&gw.name, "10.9.0.0/24"))
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "route_not_found"));

    // A valid advertisement is pending: in no map yet.
    gwc.advertise_routes(&advertise(&["192.168.50.0/24"]))
        .await
        .unwrap();
    let list = admin.list_routes().await.unwrap().routes;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, "pending");
    assert_eq!(list[0].source, "node");
    let m = peerc.map().await.unwrap();
    assert!(m.networks[0].routes.is_empty());

    // Approved: the peer routes the subnet through the gateway; the gateway serves it.
    let approved = admin
        .route("approve", &route(&gw.name, "192.168.50.0/24"))
        .await
        .unwrap();
    assert_eq!(approved.routes[0].state, "approved");
    let m = peerc.map().await.unwrap();
    assert_eq!(m.networks[0].routes.len(), 1);
    assert_eq!(m.networks[0].routes[0].via, gw_id.node_key());
    assert_eq!(
        m.networks[0].routes[0].prefix.to_string(),
        "192.168.50.0/24"
    );
    let gm = gwc.map().await.unwrap();
    assert!(
        gm.networks[0].routes.is_empty(),
        "no route to its own subnet"
    );
    assert_eq!(gm.networks[0].serves.len(), 1);

    // Routes are durable: after kill -9 and a restart they are still there.
    ctl.kill9();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let client = ctl.client();
    let gwc = client.with_bearer(&gw.credential).unwrap();
    let peerc = client.with_bearer(&peer.credential).unwrap();
    let list = admin.list_routes().await.unwrap().routes;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].state.as_str(), list[0].source.as_str()),
        ("approved", "node")
    );
    let m = peerc.map().await.unwrap();
    assert_eq!(m.networks[0].routes.len(), 1);
    // The CLI shows the same.
    let (ok, out, err) = ctl.cli(&["route", "list", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("192.168.50.0/24"), "{out}");
    // A new network overlapping an approved route is refused.
    let (status, code, msg) = refused(
        admin
            .create_network(&network("other", "192.168.0.0/16", 8))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "cidr_overlap"));
    assert!(msg.contains("192.168.50.0/24"), "{msg}");

    // Withdrawn: gone from the maps.
    admin
        .route("withdraw", &route(&gw.name, "192.168.50.0/24"))
        .await
        .unwrap();
    assert!(admin.list_routes().await.unwrap().routes.is_empty());
    let m = peerc.map().await.unwrap();
    assert!(m.networks[0].routes.is_empty());

    // Rejected routes stay rejected when advertised again.
    gwc.advertise_routes(&advertise(&["192.168.50.0/24"]))
        .await
        .unwrap();
    admin
        .route("reject", &route(&gw.name, "192.168.50.0/24"))
        .await
        .unwrap();
    gwc.advertise_routes(&advertise(&["192.168.50.0/24"]))
        .await
        .unwrap();
    assert_eq!(
        admin.list_routes().await.unwrap().routes[0].state,
        "rejected"
    );

    // Every change is audited.
    let audit = admin.audit(200, None, None).await.unwrap();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "route.advertise",
        "route.approve",
        "route.withdraw",
        "route.reject",
    ] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_two_networks_leaves_one_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    admin
        .create_network(&network("a", "100.64.1.0/24", 8))
        .await
        .unwrap();
    admin
        .create_network(&network("b", "100.64.2.0/24", 8))
        .await
        .unwrap();
    // Overlapping networks are refused (no node could be in both).
    let (status, code, msg) = refused(
        admin
            .create_network(&network("c", "100.64.2.128/25", 8))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "cidr_overlap"));
    assert!(msg.contains("\"b\""), "{msg}");

    let both = admin
        .create_token(&token_req(&["a", "b"], Some(5), 3600))
        .await
        .unwrap();
    let client = ctl.client();
    let id = identity(8);
    let r = register(&client, &both.token, &id).await.unwrap();
    assert_eq!(r.addresses.len(), 2);
    let c = client.with_bearer(&r.credential).unwrap();
    assert_eq!(c.map().await.unwrap().networks.len(), 2);

    let (status, code, _) = refused(admin.leave_network("nope", &r.name).await);
    assert_eq!((status, code.as_str()), (404, "network_not_found"));
    let left = admin.leave_network("b", &r.name).await.unwrap();
    assert_eq!(left.network, "b");
    let m = c.map().await.unwrap();
    assert_eq!(m.networks.len(), 1);
    assert_eq!(m.networks[0].name, "a");
    let (status, code, _) = refused(admin.leave_network("b", &r.name).await);
    assert_eq!((status, code.as_str()), (409, "not_a_member"));
    let node = admin.show_node(&r.name).await.unwrap();
    assert_eq!(node.addresses.len(), 1);
    let audit = admin.audit(50, None, None).await.unwrap();
    assert!(audit.entries.iter().any(|e| e.action == "node.leave"));
}

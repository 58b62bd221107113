//! Hardening of what nodes and admins may put into the controller (issue 14),
//! against the real controller binary: one validator for network CIDRs and
//! subnet routes, reported endpoints peers could not use, and names that could
//! spoof admin output.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_proto::api::{CreateNetworkRequest, RouteRequest, UpdateNodeRequest};

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
    let tok = token_for(&admin, &["lab"]).await;
    let client = ctl.client();
    let gw = register(&client, &tok, &identity(0)).await.unwrap();
    tag_gateway(&admin, &gw.name).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_endpoints_peers_cannot_use_never_reach_their_maps() {
    use weft_proto::api::ReportRequest;
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let req = CreateNetworkRequest {
        ipv6_prefix: Some("fd7a:115c:a1e0::/48".into()),
        ..network("lab", "100.64.0.0/24", 0)
    };
    admin.create_network(&req).await.unwrap();
    admin
        .create_network(&network("other", "100.65.0.0/24", 0))
        .await
        .unwrap();
    let tok = token_for(&admin, &["lab"]).await;
    let client = ctl.client();
    let a = register(&client, &tok, &identity(0)).await.unwrap();
    let b = register(&client, &tok, &identity(0)).await.unwrap();
    let ca = client.with_bearer(&a.credential).unwrap();
    let cb = client.with_bearer(&b.credential).unwrap();
    let report = |eps: &[&str]| ReportRequest {
        api_version: None,
        endpoints: Some(eps.iter().map(|e| e.parse().unwrap()).collect()),
        facts: None,
    };
    let a_in_b_map = || async {
        let m = cb.map().await.unwrap();
        m.network("lab").unwrap().peers[0].endpoints.clone()
    };

    // Endpoints in overlay space (A's own address, B's, another network's,
    // the IPv6 prefix, an IPv4-mapped form) are dropped; the valid ones stay.
    let b_ip = b.addresses[0].ipv4;
    let a_ip = a.addresses[0].ipv4;
    ca.report(&report(&[
        "192.0.2.10:41641",
        &format!("{a_ip}:41641"),
        &format!("{b_ip}:41641"),
        "100.65.0.9:41641",
        "[fd7a:115c:a1e0::9]:41641",
        &format!("[::ffff:{b_ip}]:41641"),
        "[2001:db8::10]:41641",
    ]))
    .await
    .unwrap();
    let want: Vec<std::net::SocketAddr> = vec![
        "192.0.2.10:41641".parse().unwrap(),
        "[2001:db8::10]:41641".parse().unwrap(),
    ];
    assert_eq!(a_in_b_map().await, want);
    let node = admin.show_node(&a.name).await.unwrap();
    assert_eq!(node.endpoints, want);

    // Loopback, unspecified, multicast, broadcast and port 0 are refused with
    // a message naming the endpoint; nothing of such a report is kept.
    for bad in [
        "127.0.0.1:41641",
        "[::1]:41641",
        "[::ffff:127.0.0.1]:41641",
        "0.0.0.0:41641",
        "[::]:41641",
        "224.0.0.251:5353",
        "[ff02::1]:41641",
        "255.255.255.255:41641",
        "192.0.2.11:0",
    ] {
        let (status, code, msg) = refused(ca.report(&report(&["192.0.2.12:41641", bad])).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_endpoints"),
            "{bad}: {msg}"
        );
        assert!(msg.contains("not a usable endpoint"), "{bad}: {msg}");
        assert_eq!(a_in_b_map().await, want, "after {bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_bidi_or_zero_width_characters_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    // Network names are DNS labels: the refusal names the character.
    let (status, code, msg) = refused(
        admin
            .create_network(&network("la\u{202e}b", "100.64.0.0/24", 0))
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_name"), "{msg}");
    assert!(
        msg.contains("character 3 (U+202E, a bidirectional control)"),
        "{msg}"
    );
    assert!(
        !msg.contains('\u{202e}'),
        "the message itself must not carry it: {msg:?}"
    );
    admin
        .create_network(&network("lab", "100.64.0.0/24", 0))
        .await
        .unwrap();
    // Token descriptions (free text): zero-width and bidi refused.
    let mut req = token_req(&["lab"], None, 3600);
    req.description = Some("for\u{200b}alice".into());
    let (status, code, msg) = refused(admin.create_token(&req).await);
    assert_eq!(
        (status, code.as_str()),
        (400, "invalid_description"),
        "{msg}"
    );
    assert!(
        msg.contains("zero-width character (U+200B) at character 4"),
        "{msg}"
    );
    req.description = Some("für Alice".into());
    let tok = admin.create_token(&req).await.unwrap();

    // Registration: a host name with a bidi override is refused, naming where.
    let client = ctl.client();
    let id = identity(0);
    let reg = |hostname: &str, name: Option<&str>| {
        let (c, t, id) = (client.clone(), tok.token.clone(), &id);
        let (hostname, name) = (hostname.to_owned(), name.map(str::to_owned));
        async move {
            c.register(
                &t,
                id.node_key(),
                id.pow().nonce,
                |ctx, msg| id.sign(ctx, msg),
                name,
                Some(hostname),
            )
            .await
        }
    };
    let (status, code, msg) = refused(reg("invoice\u{202e}fdp.exe", None).await);
    assert_eq!((status, code.as_str()), (400, "invalid_hostname"), "{msg}");
    assert!(
        msg.contains("bidirectional control (U+202E) at character 8"),
        "{msg}"
    );
    let (status, code, msg) = refused(reg("host", Some("web\u{2066}1")).await);
    assert_eq!((status, code.as_str()), (400, "invalid_name"), "{msg}");
    assert!(msg.contains("character 4 (U+2066"), "{msg}");
    // Nothing was registered by the refused attempts; a clean one works.
    assert!(admin.list_nodes(None).await.unwrap().nodes.is_empty());
    let r = reg("büro-pc", None).await.unwrap();

    // Renames and tags: the same rule.
    let (status, code, msg) = refused(
        admin
            .update_node(
                &r.name,
                &UpdateNodeRequest {
                    name: Some("db\u{200d}1".into()),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_name"), "{msg}");
    assert!(
        msg.contains("character 3 (U+200D, a zero-width character)"),
        "{msg}"
    );
    let (status, code, msg) = refused(
        admin
            .update_node(
                &r.name,
                &UpdateNodeRequest {
                    tags: Some(vec!["role:\u{202d}db".into()]),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_tag"), "{msg}");
    assert!(msg.contains("character 6 (U+202D"), "{msg}");
    // The admin CLI shows the (legitimate, non-ASCII) host name as it is.
    let (ok, out, err) = ctl.cli(&["node", "show", &r.name]);
    assert!(ok, "{err}");
    assert!(out.contains("hostname:  büro-pc"), "{out}");
}

use weft_proto::local::{ControllerStatus, FailureStatus, NetworkStatus, ReconcileStatus};

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::ping::is_our_reply;
use super::up::{UpStage, route_arg, up_stage};
use super::*;

fn status() -> AgentStatus {
    AgentStatus {
        node_key: weft_proto::NodeKey::from_bytes([1; 32]),
        name: Some("n1".into()),
        state: "up".into(),
        controller: Some(ControllerStatus {
            url: "https://c:8443".into(),
            urls: vec!["https://c:8443".into()],
            address: Some("10.0.0.1:8443".into()),
            snapshots: 1,
            deltas: 2,
            failovers: 0,
            connected: true,
            map_version: Some(3),
            from_cache: false,
            last_error: None,
            last_error_permanent: false,
        }),
        networks: vec![NetworkStatus {
            name: "prod".into(),
            interface: "weft0".into(),
            addresses: vec!["100.64.0.2".into()],
            cidr: "100.64.0.0/10".into(),
            dns_domain: "weft.internal".into(),
            routes: Vec::new(),
            serves: Vec::new(),
        }],
        peers: Vec::new(),
        drops: BTreeMap::new(),
        reconcile: ReconcileStatus {
            converged: true,
            failures: Vec::new(),
        },
        listen_port: 51820,
        relay: None,
        relays: Vec::new(),
        reflexive: Vec::new(),
        failures: Vec::new(),
        forwarding: None,
        tasks: None,
        host_firewall: None,
        underlay: None,
        services: None,
        ssh: None,
    }
}

#[test]
fn up_waits_for_the_link_the_map_and_the_system() {
    assert_eq!(up_stage(&status()), UpStage::Done);
    let mut st = status();
    st.controller.as_mut().unwrap().connected = false;
    st.controller.as_mut().unwrap().last_error = Some("connection refused".into());
    assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("connection refused")));
    let mut st = status();
    st.controller.as_mut().unwrap().from_cache = true;
    assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("map")));
    let mut st = status();
    st.reconcile.converged = false;
    assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("configuring")));
}

#[test]
fn advertised_routes_are_checked_before_sending() {
    assert_eq!(route_arg(" 192.168.50.0/24").unwrap(), "192.168.50.0/24");
    assert_eq!(route_arg("").unwrap(), "");
    let e = route_arg("192.168.50.1/24").unwrap_err();
    assert!(e.contains("did you mean 192.168.50.0/24"), "{e}");
    assert!(
        route_arg("0.0.0.0/0")
            .unwrap_err()
            .contains("default route")
    );
    assert!(route_arg("127.0.0.0/8").is_err());
    assert!(route_arg("fd00::/64").is_err());
}

#[test]
fn only_our_echo_reply_counts() {
    let peer: IpAddr = "100.64.0.3".parse().unwrap();
    let other: IpAddr = "100.64.0.4".parse().unwrap();
    // Ping socket: ICMP header first, the kernel handles the id.
    let mut reply = [0u8; 16];
    reply[4..6].copy_from_slice(&77u16.to_be_bytes());
    reply[6..8].copy_from_slice(&5u16.to_be_bytes());
    assert!(is_our_reply(&reply, peer, peer, 5, None));
    assert!(!is_our_reply(&reply, other, peer, 5, None), "wrong source");
    assert!(!is_our_reply(&reply, peer, peer, 6, None), "wrong sequence");
    // Raw socket: IP header first, and the id must be ours.
    let mut raw = vec![0x45u8];
    raw.extend_from_slice(&[0; 19]);
    raw.extend_from_slice(&reply);
    assert!(is_our_reply(&raw, peer, peer, 5, Some(77)));
    assert!(
        !is_our_reply(&raw, peer, peer, 5, Some(78)),
        "another ping's id"
    );
    let mut request = reply;
    request[0] = 8;
    assert!(!is_our_reply(&request, peer, peer, 5, None), "not a reply");
    assert!(!is_our_reply(&reply[..7], peer, peer, 5, None));
}

#[test]
fn up_fails_on_any_failure() {
    let mut st = status();
    st.failures.push(FailureStatus {
        area: "tun".into(),
        what: "weft0".into(),
        error: "creating TUN device weft0: Operation not permitted".into(),
        since_unix_ms: 1,
    });
    assert!(matches!(up_stage(&st), UpStage::Failing(w) if w.contains("tun weft0: creating TUN")));
    let mut st = status();
    st.controller = None;
    assert!(matches!(up_stage(&st), UpStage::Failing(_)));
    let mut st = status();
    let c = st.controller.as_mut().unwrap();
    c.connected = false;
    c.last_error = Some("controller answered 401: unknown credential".into());
    c.last_error_permanent = true;
    assert!(matches!(up_stage(&st), UpStage::Failing(w) if w.contains("401")));
    // Every other upload is refused too: the refusal of the node is what
    // `weft up` names, not the first upload that failed.
    st.failures.push(FailureStatus {
        area: "integrity-report".into(),
        what: "controller".into(),
        error: "controller answered 401: missing or invalid credential".into(),
        since_unix_ms: 1,
    });
    assert!(
        matches!(up_stage(&st), UpStage::Failing(w) if w.starts_with("the controller refused this node"))
    );
}

#[test]
fn status_escapes_spoofing_characters_in_names() {
    let mut st = status();
    st.name = Some("web\u{202e}1".into());
    let out = render_status(&st);
    assert!(out.contains("node      web\\u{202e}1"), "{out}");
    assert!(!out.contains('\u{202e}'), "{out:?}");
}

#[test]
fn status_shows_task_counts() {
    let mut st = status();
    assert!(!render_status(&st).contains("tasks "));
    st.tasks = Some(weft_proto::local::TasksStatus {
        running: 1,
        delivered: 5,
        waiting: 2,
        lost: 1,
    });
    let out = render_status(&st);
    assert!(
        out.contains("tasks     1 running; results: 5 delivered, 2 waiting, 1 lost"),
        "{out}"
    );
}

#[test]
fn status_shows_metrics_forwarding_and_its_outbox() {
    let mut st = status();
    assert!(!render_status(&st).contains("metrics"));
    st.forwarding = Some(weft_proto::local::ForwardingStatus {
        interval_ms: 30_000,
        last_seq: 9,
        queued: 4,
        dropped: 2,
        last_sent_ms: None,
        last_error: Some("connection refused".into()),
    });
    let out = render_status(&st);
    assert!(
        out.contains("metrics   forwarded every 30s, last sent never; outbox: 4 queued, 2 dropped"),
        "{out}"
    );
    assert!(
        out.contains("forwarding error: connection refused"),
        "{out}"
    );
}

#[test]
fn status_shows_the_underlay_and_the_default_route() {
    use weft_proto::local::{UnderlayInterfaceStatus, UnderlayStatus};
    let mut st = status();
    st.underlay = Some(UnderlayStatus {
        interfaces: vec![
            UnderlayInterfaceStatus {
                name: "eth0".into(),
                up: false,
                addresses: vec!["192.0.2.10/24".into()],
            },
            UnderlayInterfaceStatus {
                name: "eth1".into(),
                up: true,
                addresses: vec!["198.51.100.10/24".into()],
            },
        ],
        default_route_v4: Some("eth1".into()),
        default_route_v6: None,
        changes: 1,
        last_change_ms: Some(unix_ms()),
        last_change: vec!["eth0 down".into(), "IPv4 default route via eth1".into()],
        error: None,
    });
    let out = render_status(&st);
    assert!(
        out.contains("underlay  default route via eth1; 1 change, last 0s ago: eth0 down, IPv4 default route via eth1"),
        "{out}"
    );
    assert!(
        out.contains("  eth0           down  192.0.2.10/24\n"),
        "{out}"
    );
    assert!(
        out.contains("  eth1           up    198.51.100.10/24  (default route)"),
        "{out}"
    );
}

#[test]
fn status_shows_the_controller_in_use_and_the_list() {
    let st = status();
    let text = render_status(&st);
    assert!(
        text.contains("controller https://c:8443 (10.0.0.1:8443)  connected"),
        "{text}"
    );
    assert!(!text.contains("controllers:"), "one URL: no list\n{text}");
    let mut st = status();
    let c = st.controller.as_mut().unwrap();
    c.urls = vec!["https://a:8443".into(), "https://c:8443".into()];
    c.failovers = 3;
    let text = render_status(&st);
    assert!(
        text.contains("controllers: https://a:8443, https://c:8443 (moved 3 times)"),
        "{text}"
    );
    // An address that is the URL's host itself is not repeated.
    let mut st = status();
    let c = st.controller.as_mut().unwrap();
    c.url = "https://10.0.0.1:8443".into();
    assert!(render_status(&st).contains("controller https://10.0.0.1:8443  connected"));
}

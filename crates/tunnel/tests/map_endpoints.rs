//! Endpoints a map names that no peer can be reached at are never tried.

#![allow(clippy::unwrap_used, reason = "test code")]
#![allow(
    clippy::disallowed_methods,
    reason = "a test needs some origin instant"
)]

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use weft_proto::NodeKey;
use weft_tunnel::{NetworkConfig, Node, NodeConfig, PeerConfig};

fn key_of(seed: u8) -> NodeKey {
    // Any valid Ed25519 public key will do: derive one from a seed.
    weft_identity::Identity::from_parts(&[seed; 32], weft_identity::ProofOfWork { nonce: 0 })
        .node_key()
}

#[test]
fn unusable_and_overlay_endpoints_are_not_candidates() {
    let now = Instant::now();
    let me = weft_identity::Identity::from_parts(&[1; 32], weft_identity::ProofOfWork { nonce: 0 });
    let mut node = Node::new(me.node_key(), *me.x25519_secret(), [7; 32], now);
    let ep = |s: &str| s.parse::<SocketAddr>().unwrap();
    let good = vec![ep("192.0.2.7:41641"), ep("[2001:db8::7]:41641")];
    let mut endpoints = good.clone();
    endpoints.extend([
        ep("127.0.0.1:41641"),
        ep("[::1]:41641"),
        ep("0.0.0.0:41641"),
        ep("224.0.0.1:41641"),
        ep("255.255.255.255:41641"),
        ep("192.0.2.8:0"),
        ep("100.64.0.1:41641"), // our own overlay address
        ep("100.64.0.3:41641"), // another peer's overlay address
        ep("[::ffff:100.64.0.3]:41641"),
    ]);
    let peer = |seed: u8, ip: [u8; 4], endpoints: Vec<SocketAddr>| PeerConfig {
        key: key_of(seed),
        name: format!("p{seed}"),
        addresses: vec![(0, IpAddr::from(ip))],
        endpoints,
        routes: vec![],
    };
    let cfg = NodeConfig {
        policy: Some(weft_policy::allow_all("test")),
        networks: vec![NetworkConfig {
            local_addresses: vec![IpAddr::from([100, 64, 0, 1])],
            serves: vec![],
        }],
        peers: vec![
            peer(2, [100, 64, 0, 2], endpoints),
            peer(3, [100, 64, 0, 3], vec![ep("192.0.2.9:41641")]),
        ],
        services: Vec::new(),
    };
    node.apply_config(now, &cfg);
    let status = node.peer_status(now);
    let p2 = status.iter().find(|p| p.key == key_of(2)).unwrap();
    let candidates: Vec<SocketAddr> = p2.candidates.iter().map(|c| c.0).collect();
    assert_eq!(candidates, good);
}

//! `weft netcheck` end to end: behind an easy NAT it reports endpoint-independent
//! mapping, behind a hard NAT endpoint-dependent, behind a UDP-blocking router no
//! UDP; the relay's latency is measured everywhere. Real controller, relay
//! (STUN on two ports) and agents. Root only; FAILS without root.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code"
)]

use std::time::Duration;

use serde_json::Value;
use weft_lab::mesh::{Mesh, NetworkSpec, STUN_PORT};
use weft_lab::{Lab, Nat, Net, Topology, wait_until};

fn netcheck(mesh: &Mesh<'_>, node: &str, extra: &[&str]) -> Value {
    let mut args = vec!["netcheck"];
    args.extend_from_slice(extra);
    let human = mesh.weft(node, &args).unwrap();
    assert!(human.status.success(), "{human:?}");
    println!(
        "--- weft netcheck in {node} ({}):\n{}",
        extra.join(" "),
        String::from_utf8_lossy(&human.stdout)
    );
    args.push("--json");
    let out = mesh.weft(node, &args).unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn netcheck_tells_easy_hard_and_udp_blocked_apart() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let lab = Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .router("re", Net::Internet, Nat::Easy)
            .router("rh", Net::Internet, Nat::Hard)
            .router("ru", Net::Internet, Nat::UdpBlocked)
            .host("e", Net::lan("re"))
            .host("h", Net::lan("rh"))
            .host("u", Net::lan("ru")),
    )
    .unwrap();
    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(3).unwrap();
    for n in ["e", "h", "u"] {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    for n in ["e", "h", "u"] {
        wait_until(
            &format!("{n} has the relay in its map"),
            Duration::from_secs(30),
            || Ok(mesh.try_status(n).is_some_and(|s| !s.relays.is_empty())),
        )
        .unwrap();
    }

    // The agent's own STUN result (its data-plane socket) shows up too.
    wait_until(
        "e's agent knows its reflexive address",
        Duration::from_secs(15),
        || {
            Ok(mesh
                .try_status("e")
                .is_some_and(|s| !s.reflexive.is_empty()))
        },
    )
    .unwrap();
    let e = netcheck(&mesh, "e", &[]);
    assert_eq!(e["agent_reflexive"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["udp"], true, "{e}");
    assert_eq!(e["mapping"], "endpoint-independent", "{e}");
    let reflexive = e["reflexive"].as_array().unwrap();
    assert_eq!(reflexive.len(), 1, "{e}");
    let re_wan = lab.addr("re").unwrap().to_string();
    assert!(
        reflexive[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{re_wan}:")),
        "{e}"
    );
    assert_eq!(
        e["stun"].as_array().unwrap().len(),
        2,
        "primary + alternate: {e}"
    );
    assert!(e["relays"][0]["tcp_connect_ms"].as_f64().is_some(), "{e}");

    let h = netcheck(&mesh, "h", &[]);
    assert_eq!(h["udp"], true, "{h}");
    assert_eq!(h["mapping"], "endpoint-dependent", "{h}");
    assert_eq!(h["reflexive"].as_array().unwrap().len(), 2, "{h}");

    let u = netcheck(&mesh, "u", &["--timeout-ms", "1500"]);
    assert_eq!(u["udp"], false, "{u}");
    assert_eq!(u["mapping"], "unknown", "{u}");
    assert!(
        u["relays"][0]["tcp_connect_ms"].as_f64().is_some(),
        "the relay's TLS port is reachable over TCP: {u}"
    );

    // Standalone, without asking the agent: the alternate port comes from the
    // server's OTHER-ADDRESS.
    let infra = format!("{}:{STUN_PORT}", lab.addr("infra").unwrap());
    let s = netcheck(&mesh, "h", &["--standalone", "--stun", &infra]);
    assert_eq!(s["mapping"], "endpoint-dependent", "{s}");
    assert!(s["agent_reflexive"].as_array().unwrap().is_empty());
}

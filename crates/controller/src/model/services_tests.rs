//! The service registry: VIP allocation and overlap refusal, clear refusals,
//! policy filtering of consumers' lists, health into maps and the audit log,
//! advertise/approve/reject/withdraw, policy facts, and a restart from the
//! store.

use weft_proto::NodeKey;
use weft_proto::netmap::MapChange;
use weft_proto::service::{InstanceHealth, parse_ports};

use super::*;
use crate::model::data::tests::{id, recipients_of, world};
use crate::model::{NewNetwork, Operation, Outcome, RemoveNode, SetPolicy, SetPresence};
use crate::netmap::snapshot;
use crate::store::Write;
use crate::store::testing::test_store;

/// Runs `op` as one batch: its result, the batch's outcome and writes.
fn run<O: Operation>(
    w: &mut World,
    actor: Actor,
    op: O,
) -> (Result<O::Output, ApiError>, Option<Outcome>, Vec<Write>) {
    let mut b = Batch::default();
    let r = w.apply(&mut b, &actor, op, 5_000);
    let o = w.finish_batch(&mut b);
    (r, o, b.writes)
}

fn create(name: &str, network: &str, nodes: &[&str], ports: &str) -> CreateService {
    CreateService(CreateServiceRequest {
        name: name.into(),
        network: network.into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ports: parse_ports(ports).unwrap(),
        health: HealthCheck::Tcp,
        replace: false,
        expect_version: None,
    })
}

fn ok<O: Operation>(w: &mut World, op: O) -> O::Output {
    run(w, Actor::Admin, op).0.unwrap()
}

fn code<O: Operation>(w: &mut World, op: O) -> (u16, &'static str) {
    let e = run(w, Actor::Admin, op).0.err().expect("refused");
    (e.status().as_u16(), e.code())
}

fn online(w: &mut World, name: &str, on: bool) -> Option<Outcome> {
    let node = id(w, name);
    let (r, o, _) = run(w, Actor::Admin, SetPresence { node, online: on });
    r.unwrap();
    o
}

fn report(w: &mut World, name: &str, svc: &str, health: Health) -> Option<Outcome> {
    let node = id(w, name);
    let report = HealthReport {
        checks: vec![InstanceHealth {
            service: svc.into(),
            network: "a".into(),
            health,
            checked_ms: 4_000,
            detail: (health == Health::Unhealthy).then(|| "connection refused".into()),
        }],
    };
    let (r, o, _) = run(
        w,
        Actor::Node(NodeKey::from_bytes([1; 32])),
        ReportHealth { node, report },
    );
    r.unwrap();
    o
}

fn service_recipients(w: &World, o: &Option<Outcome>) -> Vec<String> {
    o.as_ref().map_or_else(Vec::new, |o| {
        recipients_of(w, o, |c| matches!(c, MapChange::Services { .. }))
    })
}

/// The instances of `svc` in `node`'s map: (provider, health).
fn seen(w: &World, node: &str, svc: &str) -> Vec<(String, Health)> {
    let map = snapshot(w, id(w, node)).unwrap();
    map.services
        .iter()
        .filter(|s| s.name == svc)
        .flat_map(|s| s.instances.iter().map(|i| (i.node.clone(), i.health)))
        .collect()
}

#[test]
fn vips_come_from_a_top_down_range_that_avoids_networks_and_other_ranges() {
    let mut w = world(&mut Vec::new());
    // A network on the top /24 pushes network a's range one down.
    ok(
        &mut w,
        NewNetwork {
            name: "top".into(),
            ipv4_cidr: "100.127.255.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
    );
    let db = ok(&mut w, create("db", "a", &["n1"], "5432/tcp"));
    assert_eq!(db.vip.to_string(), "100.127.254.1");
    assert_eq!(db.fqdn, "db.svc.a.weft.internal");
    let web = ok(&mut w, create("web", "a", &["n1", "n2"], "80,443"));
    assert_eq!(web.vip.to_string(), "100.127.254.2");
    let other = ok(&mut w, create("db", "b", &["n4"], "5432/tcp"));
    assert_eq!(other.vip.to_string(), "100.127.253.1");
    // Replace keeps the VIP; a removed service's VIP is handed out again.
    let mut again = create("db", "a", &["n2"], "5433/tcp");
    again.0.replace = true;
    let db2 = ok(&mut w, again);
    assert_eq!((db2.vip, db2.instances.len()), (db.vip, 1));
    assert_eq!(db2.instances[0].node, "n2");
    ok(
        &mut w,
        RemoveService {
            network: "a".into(),
            name: "db".into(),
        },
    );
    let cache = ok(&mut w, create("cache", "a", &["n3"], "6379"));
    assert_eq!(cache.vip, db.vip);
    // A network may not take a service range.
    let e = run(
        &mut w,
        Actor::Admin,
        NewNetwork {
            name: "late".into(),
            ipv4_cidr: "100.127.252.0/23".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
    )
    .0
    .unwrap_err();
    assert_eq!(e.code(), "cidr_overlap");
    assert!(
        e.to_string().contains("service range 100.127.253.0/24"),
        "{e}"
    );
    assert_eq!(w.service_list().services.len(), 3);
}

#[test]
fn refusals_are_clear_4xx() {
    let mut w = world(&mut Vec::new());
    assert_eq!(
        code(&mut w, create("db", "nope", &["n1"], "5432")),
        (404, "network_not_found")
    );
    assert_eq!(
        code(&mut w, create("db", "a", &["ghost"], "5432")),
        (404, "node_not_found")
    );
    assert_eq!(
        code(&mut w, create("db", "a", &["n4"], "5432")),
        (409, "not_a_member")
    );
    assert_eq!(
        code(&mut w, create("DB", "a", &["n1"], "5432")),
        (400, "invalid_service_name")
    );
    assert_eq!(
        code(&mut w, create("db", "a", &[], "5432")),
        (400, "no_instances")
    );
    let mut no_ports = create("db", "a", &["n1"], "5432");
    no_ports.0.ports.clear();
    assert_eq!(code(&mut w, no_ports), (400, "invalid_ports"));
    let mut bad_check = create("db", "a", &["n1"], "5432");
    bad_check.0.health = HealthCheck::Http { path: "x y".into() };
    assert_eq!(code(&mut w, bad_check), (400, "invalid_health_check"));
    ok(&mut w, create("db", "a", &["n1"], "5432"));
    let (status, c) = code(&mut w, create("db", "a", &["n2"], "5432"));
    assert_eq!((status, c), (409, "service_exists"));
    let mut stale = create("db", "a", &["n2"], "5432");
    stale.0.replace = true;
    stale.0.expect_version = Some(0);
    assert_eq!(code(&mut w, stale), (409, "services_version_mismatch"));
    assert_eq!(
        code(
            &mut w,
            RemoveService {
                network: "a".into(),
                name: "nope".into()
            }
        ),
        (404, "service_not_found")
    );
    assert_eq!(
        code(
            &mut w,
            DecideInstance {
                network: "a".into(),
                name: "db".into(),
                node: "n2".into(),
                approve: false
            }
        ),
        (404, "no_offer")
    );
    // Nothing of the refused ones was stored.
    let list = w.service_list();
    assert_eq!((list.version, list.services.len()), (1, 1));
}

#[test]
fn consumers_see_instances_their_policy_reaches_with_health_and_only_changed_nodes_hear() {
    let mut w = world(&mut Vec::new());
    let (r, o, writes) = run(&mut w, Actor::Admin, create("db", "a", &["n1"], "5432/tcp"));
    r.unwrap();
    // Members of a other than the provider gain the service; the provider its
    // `provides`; n4 (network b) hears nothing.
    assert_eq!(service_recipients(&w, &o), ["n1", "n2", "n3"]);
    assert!(writes.iter().any(
        |x| matches!(x, Write::Audit(a) if a.action == "service.create" && a.target == "a/db")
    ));
    let n1 = snapshot(&w, id(&w, "n1")).unwrap();
    assert!(n1.services.is_empty());
    assert_eq!(n1.provides.len(), 1);
    assert_eq!(n1.provides[0].name, "db");
    // The provider is offline: unhealthy. Online without a report: unknown.
    assert_eq!(
        seen(&w, "n2", "db"),
        [("n1".to_string(), Health::Unhealthy)]
    );
    let o = online(&mut w, "n1", true);
    assert_eq!(service_recipients(&w, &o), ["n2", "n3"]);
    assert_eq!(seen(&w, "n2", "db"), [("n1".to_string(), Health::Unknown)]);
    // A provider's new endpoints change no service list.
    let node = id(&w, "n1");
    let rep = crate::model::Report {
        node,
        endpoints: Some(vec!["192.0.2.7:51820".parse().unwrap()]),
        facts: None,
    };
    let (r, o, _) = run(&mut w, Actor::Node(NodeKey::from_bytes([1; 32])), rep);
    r.unwrap();
    assert!(service_recipients(&w, &o).is_empty());
    let o = report(&mut w, "n1", "db", Health::Healthy);
    assert_eq!(service_recipients(&w, &o), ["n2", "n3"]);
    assert_eq!(seen(&w, "n3", "db"), [("n1".to_string(), Health::Healthy)]);
    // The same verdict again changes nothing.
    assert!(report(&mut w, "n1", "db", Health::Healthy).is_none());
    // A flip is audited and reaches the consumers.
    let node = id(&w, "n1");
    let rep = HealthReport {
        checks: vec![InstanceHealth {
            service: "db".into(),
            network: "a".into(),
            health: Health::Unhealthy,
            checked_ms: 4_500,
            detail: Some("connection refused".into()),
        }],
    };
    let (r, o, writes) = run(
        &mut w,
        Actor::Node(NodeKey::from_bytes([1; 32])),
        ReportHealth { node, report: rep },
    );
    r.unwrap();
    assert_eq!(service_recipients(&w, &o), ["n2", "n3"]);
    assert!(writes.iter().any(
        |x| matches!(x, Write::Audit(a) if a.action == "service.health" && a.detail["to"] == "unhealthy")
    ));
    let info = w.service_by_name("a", "db").unwrap();
    assert_eq!(info.instances[0].health, Health::Unhealthy);
    assert_eq!(info.instances[0].checked_ms, Some(4_500));
    assert_eq!(
        info.instances[0].detail.as_deref(),
        Some("connection refused")
    );
    // Maps never carry checked_ms.
    let map = snapshot(&w, id(&w, "n2")).unwrap();
    assert_eq!(map.services[0].instances[0].checked_ms, None);
    // Only tag web may reach port 5432: n2 (web) keeps it, n3 loses it.
    let policy = "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"network:a\"\nproto = \"tcp\"\nports = [5432]\n";
    let (r, o, _) = run(
        &mut w,
        Actor::Admin,
        SetPolicy {
            text: policy.into(),
            expect_version: None,
        },
    );
    r.unwrap();
    assert!(service_recipients(&w, &o).contains(&"n3".to_string()));
    assert_eq!(seen(&w, "n2", "db").len(), 1);
    assert!(seen(&w, "n3", "db").is_empty());
    // The provider going offline makes it unhealthy for consumers.
    online(&mut w, "n1", false);
    assert_eq!(
        seen(&w, "n2", "db"),
        [("n1".to_string(), Health::Unhealthy)]
    );
    // The policy sees n1 as the provider of db.
    let facts = w.node_facts(w.node(id(&w, "n1")).unwrap());
    assert_eq!(facts.services.len(), 1);
    assert_eq!(
        (
            facts.services[0].name.as_str(),
            facts.services[0].network.as_str()
        ),
        ("db", "a")
    );
    // Removing the provider node removes the instance everywhere.
    let (r, o, _) = run(&mut w, Actor::Admin, RemoveNode("n1".into()));
    r.unwrap();
    assert!(service_recipients(&w, &o).contains(&"n2".to_string()));
    assert!(seen(&w, "n2", "db").is_empty());
    assert!(w.service_by_name("a", "db").unwrap().instances.is_empty());
}

#[test]
fn offers_wait_for_approval_stay_rejected_and_can_be_withdrawn() {
    let mut w = world(&mut Vec::new());
    let n3 = id(&w, "n3");
    let adv = |ports: &str| AdvertiseService {
        node: n3,
        req: AdvertiseServiceRequest {
            name: "cache".into(),
            network: Some("a".into()),
            ports: if ports.is_empty() {
                Vec::new()
            } else {
                parse_ports(ports).unwrap()
            },
            health: HealthCheck::Tcp,
        },
    };
    let me = Actor::Node(NodeKey::from_bytes([3; 32]));
    // A node in two networks must say which.
    let mut vague = adv("6379");
    vague.req.network = None;
    let e = run(&mut w, me.clone(), vague).0.unwrap_err();
    assert_eq!(e.code(), "network_required");
    let (r, o, _) = run(&mut w, me.clone(), adv("6379"));
    let r = r.unwrap();
    assert_eq!(r.state, "pending");
    assert!(
        r.message
            .contains("weft admin service approve cache --network a --node n3"),
        "{}",
        r.message
    );
    assert!(service_recipients(&w, &o).is_empty());
    let info = w.service_by_name("a", "cache").unwrap();
    assert_eq!(
        (info.instances.len(), info.pending.clone()),
        (0, vec!["n3".to_string()])
    );
    // Other ports than the service's are refused.
    let e = run(&mut w, me.clone(), adv("6380")).0.unwrap_err();
    assert_eq!(e.code(), "service_ports_differ");
    let decide = |approve| DecideInstance {
        network: "a".into(),
        name: "cache".into(),
        node: "n3".into(),
        approve,
    };
    let (r, o, writes) = run(&mut w, Actor::Admin, decide(true));
    assert_eq!(r.unwrap().instances[0].node, "n3");
    assert_eq!(service_recipients(&w, &o), ["n1", "n2", "n3"]);
    assert!(
        writes
            .iter()
            .any(|x| matches!(x, Write::Audit(a) if a.action == "service.approve"))
    );
    assert_eq!(
        run(&mut w, me.clone(), adv("6379")).0.unwrap().state,
        "approved"
    );
    let (r, o, _) = run(&mut w, Actor::Admin, decide(false));
    assert!(r.unwrap().instances.is_empty());
    assert_eq!(service_recipients(&w, &o), ["n1", "n2", "n3"]);
    assert_eq!(
        run(&mut w, me.clone(), adv("6379")).0.unwrap().state,
        "rejected"
    );
    // Withdrawing does not lift a rejection; approving does.
    run(&mut w, me.clone(), adv("")).0.unwrap();
    assert_eq!(
        run(&mut w, me.clone(), adv("6379")).0.unwrap().state,
        "rejected"
    );
    run(&mut w, Actor::Admin, decide(true)).0.unwrap();
    // Withdrawing the last offer of a node-made service removes it.
    let r = run(&mut w, me.clone(), adv("")).0.unwrap();
    assert_eq!(r.state, "withdrawn");
    assert_eq!(
        w.service_by_name("a", "cache").unwrap_err().code(),
        "service_not_found"
    );
}

#[test]
fn a_restart_keeps_services_vips_and_instances() {
    let mut store = test_store();
    let mut writes = Vec::new();
    let mut w = world(&mut writes);
    for op in [
        create("db", "a", &["n1", "n2"], "5432/tcp"),
        create("dns", "b", &["n3"], "53/udp"),
    ] {
        let (r, _, wr) = run(&mut w, Actor::Admin, op);
        r.unwrap();
        writes.extend(wr);
    }
    store.apply(&writes).unwrap();
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    assert_eq!(back.service_list(), w.service_list());
    for n in ["n1", "n2", "n3", "n4"] {
        assert_eq!(
            back.node_service_lists(id(&back, n)),
            w.node_service_lists(id(&w, n)),
            "{n}"
        );
        assert_eq!(
            back.service_lists(id(&back, n)),
            w.service_lists(id(&w, n)),
            "{n}"
        );
    }
    // The next service continues the VIPs; removing a provider node cascades.
    let mut back = back;
    let (r, _, wr) = run(&mut back, Actor::Admin, RemoveNode("n2".into()));
    r.unwrap();
    store.apply(&wr).unwrap();
    let (r, _, wr) = run(&mut back, Actor::Admin, create("web", "a", &["n1"], "80"));
    assert_eq!(r.unwrap().vip.to_string(), "100.127.255.2");
    store.apply(&wr).unwrap();
    let again = World::from_snapshot(store.load().unwrap(), Vec::new());
    let db = again.service_by_name("a", "db").unwrap();
    assert_eq!(db.instances.len(), 1);
    assert_eq!(again.service_list().version, 3);
}

#[test]
fn a_service_selector_follows_the_instances_and_their_ports() {
    let mut w = world(&mut Vec::new());
    let policy = "[[rule]]\naction = \"allow\"\nfrom = \"tag:db\"\nto = \"service:db\"\n";
    ok(
        &mut w,
        SetPolicy {
            text: policy.into(),
            expect_version: None,
        },
    );
    // Before the service exists the rule selects nothing.
    let n1 = id(&w, "n1");
    assert!(w.node_policy(n1).unwrap().outbound.is_empty());
    let (r, o, _) = run(&mut w, Actor::Admin, create("db", "a", &["n3"], "5432/tcp"));
    r.unwrap();
    let o = o.unwrap();
    // The consumer's policy now opens the instance's port, and its map lists
    // the service; n2 (not tag db) gets neither.
    assert!(o.policy_changed.contains(&n1));
    assert_eq!(seen(&w, "n1", "db").len(), 1);
    assert!(seen(&w, "n2", "db").is_empty());
    let matcher = weft_policy::Matcher::new(w.node_policy(n1).unwrap()).unwrap();
    let n3_addr = w
        .node(id(&w, "n3"))
        .unwrap()
        .memberships
        .values()
        .next()
        .unwrap()
        .ipv4;
    let n1_addr = w
        .node(n1)
        .unwrap()
        .memberships
        .values()
        .next()
        .unwrap()
        .ipv4;
    let probe = |port| {
        weft_policy::FiveTuple::tcp(
            n1_addr.into(),
            40_000,
            n3_addr.into(),
            port,
            weft_policy::tcp_flags::SYN,
        )
    };
    assert!(
        matcher
            .evaluate(weft_policy::Direction::Egress, &probe(5432))
            .is_allow()
    );
    assert!(
        !matcher
            .evaluate(weft_policy::Direction::Egress, &probe(22))
            .is_allow()
    );
    // Replacing the instance moves the rule to the new provider.
    let mut moved = create("db", "a", &["n2"], "5432/tcp");
    moved.0.replace = true;
    ok(&mut w, moved);
    assert_eq!(
        seen(&w, "n1", "db"),
        [("n2".to_string(), Health::Unhealthy)]
    );
    let matcher = weft_policy::Matcher::new(w.node_policy(n1).unwrap()).unwrap();
    assert!(
        !matcher
            .evaluate(weft_policy::Direction::Egress, &probe(5432))
            .is_allow()
    );
    // Removing the service closes it again.
    ok(
        &mut w,
        RemoveService {
            network: "a".into(),
            name: "db".into(),
        },
    );
    assert!(w.node_policy(n1).unwrap().outbound.is_empty());
    assert!(seen(&w, "n1", "db").is_empty());
}

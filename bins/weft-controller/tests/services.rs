//! Named services against the real controller and `weft admin service`:
//! create with a VIP from the network's service range, consumers' maps
//! gaining and losing the service as a delta, health reports, a node's offer
//! approved, clear refusals (CLI exits non-zero), audit, and a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use weft_proto::netmap::{MapChange, MapEvent, NetworkMap};
use weft_proto::service::{
    AdvertiseServiceRequest, CreateServiceRequest, Health, HealthCheck, HealthReport,
    InstanceHealth, ServiceView, parse_ports,
};

const IDLE: Duration = Duration::from_secs(10);

/// The next service lists on `s` within `wait`, applied to `map`.
async fn next_services(
    s: &mut weft_api_client::MapStream,
    map: &mut NetworkMap,
    wait: Duration,
) -> Option<Vec<ServiceView>> {
    next_change(s, map, wait, |c| match c {
        MapChange::Services { services, .. } => Some(services.clone()),
        _ => None,
    })
    .await
}

fn health(service: &str, h: Health) -> HealthReport {
    HealthReport {
        checks: vec![InstanceHealth {
            service: service.into(),
            network: "prod".into(),
            health: h,
            checked_ms: 1_000,
            detail: (h == Health::Unhealthy).then(|| "connection refused".into()),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_created_mapped_checked_approved_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "prod", "100.64.0.0/24", 8).await;
    admin
        .create_network(&network("dev", "100.64.1.0/24", 8))
        .await
        .unwrap();
    let c = ctl.client();
    let (i1, i2, iw) = (identity(8), identity(8), identity(8));
    let r1 = register(&c, &tok, &i1).await.unwrap();
    let r2 = register(&c, &tok, &i2).await.unwrap();
    let rw = register(&c, &tok, &iw).await.unwrap();
    let c1 = c.with_bearer(&r1.credential).unwrap();
    let cw = c.with_bearer(&rw.credential).unwrap();
    let mut sw = cw.map_stream(None, IDLE).await.unwrap();
    let MapEvent::Snapshot(mut mw) = next_event(&mut sw).await else {
        panic!("first event must be a snapshot")
    };
    assert!(mw.services.is_empty());

    // Create through the CLI: the VIP is the top of 100.64.0.0/10.
    let nodes = format!("{},{}", r1.name, r2.name);
    let (ok, out, err) = ctl.cli(&[
        "service",
        "create",
        "db",
        "--network",
        "prod",
        "--node",
        &nodes,
        "--port",
        "5432/tcp",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("VIP 100.127.255.1 (db.svc.prod.weft.internal)"),
        "{out}"
    );
    let services = next_services(&mut sw, &mut mw, Duration::from_secs(5))
        .await
        .expect("the consumer gains db");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].vip.to_string(), "100.127.255.1");
    assert_eq!(services[0].instances.len(), 2);

    // The same name again: refused, non-zero exit, the code in --json.
    let (ok, out, _) = ctl.cli(&[
        "--json",
        "service",
        "create",
        "db",
        "--network",
        "prod",
        "--node",
        &r1.name,
        "--port",
        "5432",
    ]);
    assert!(!ok);
    assert!(out.contains("\"service_exists\""), "{out}");
    // Bad input through the API.
    let req = |nodes: Vec<String>, network: &str, ports: &str| CreateServiceRequest {
        name: "web".into(),
        network: network.into(),
        nodes,
        ports: parse_ports(ports).unwrap(),
        health: HealthCheck::Tcp,
        replace: false,
        expect_version: None,
    };
    let (status, code, _) = refused(
        admin
            .create_service(&req(vec![r1.name.clone()], "nope", "80"))
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "network_not_found"));
    let (status, code, _) = refused(
        admin
            .create_service(&req(vec![r1.name.clone()], "dev", "80"))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "not_a_member"));
    let mut no_ports = req(vec![r1.name.clone()], "prod", "80");
    no_ports.ports.clear();
    let (status, code, _) = refused(admin.create_service(&no_ports).await);
    assert_eq!((status, code.as_str()), (400, "invalid_ports"));
    let (ok, _, err) = ctl.cli(&["service", "show", "nope"]);
    assert!(!ok);
    assert!(err.contains("no service named \"nope\""), "{err}");

    // A provider's health report reaches the consumer and the admin view.
    c1.report_service_health(&health("db", Health::Unhealthy))
        .await
        .unwrap();
    let (ok, out, err) = ctl.cli(&["service", "show", "db"]);
    assert!(ok, "{err}");
    assert!(out.contains("connection refused"), "{out}");
    assert!(out.contains("unhealthy"), "{out}");
    let info = admin.show_service("prod", "db").await.unwrap();
    let i1 = info.instances.iter().find(|i| i.node == r1.name).unwrap();
    assert_eq!(i1.checked_ms, Some(1_000));

    // The consumer offers a service: pending until approved.
    let adv = AdvertiseServiceRequest {
        name: "cache".into(),
        network: None,
        ports: parse_ports("6379").unwrap(),
        health: HealthCheck::None,
    };
    let a = cw.advertise_service(&adv).await.unwrap();
    assert_eq!(a.state, "pending");
    let (ok, out, err) = ctl.cli(&["service", "show", "cache"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "weft admin service approve cache --network prod --node {}",
            rw.name
        )),
        "{out}"
    );
    let (ok, _, err) = ctl.cli(&["service", "approve", "cache", "--node", &rw.name]);
    assert!(ok, "{err}");
    assert_eq!(cw.advertise_service(&adv).await.unwrap().state, "approved");
    let (ok, out, err) = ctl.cli(&["--json", "service", "list"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["services"].as_array().unwrap().len(), 2);

    // Remove: the consumer's map loses it.
    let (ok, out, err) = ctl.cli(&["service", "remove", "db"]);
    assert!(ok, "{err}");
    assert!(out.contains("VIP 100.127.255.1 is free again"), "{out}");
    // (Earlier changes, the health flip, may come first.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mw.services.iter().any(|s| s.name == "db") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        next_services(&mut sw, &mut mw, left)
            .await
            .expect("the consumer loses db");
    }

    let audit = admin.audit(100, None, None).await.unwrap();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "service.create",
        "service.advertise",
        "service.approve",
        "service.remove",
    ] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }

    // A restart keeps the registry.
    drop(sw);
    ctl.sigterm(Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let list = ctl.admin().list_services().await.unwrap();
    assert_eq!(list.services.len(), 1);
    assert_eq!(list.services[0].name, "cache");
    assert_eq!(list.services[0].vip.to_string(), "100.127.255.2");
}

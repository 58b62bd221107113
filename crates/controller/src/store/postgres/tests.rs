//! The PostgreSQL driver against a throwaway cluster: the shared store
//! suites, then what only this driver has (reconnecting, a newer schema).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use super::cluster::TestCluster;
use super::*;
use crate::store::tests::store_suite;

/// A fresh database in this process's cluster.
fn fresh_url(name: &str) -> String {
    crate::store::testing::fresh_postgres_database(name)
}

#[test]
fn postgres_passes_the_store_suite() {
    let url = fresh_url("suite");
    store_suite(|| PgStore::open_url(&url).unwrap());
}

#[test]
fn postgres_deletes_a_network_and_prunes_the_audit_log() {
    use crate::store::ops_tests::{audit_retention_suite, delete_network_suite};
    delete_network_suite(PgStore::open_url(&fresh_url("delnet")).unwrap());
    audit_retention_suite(PgStore::open_url(&fresh_url("retain")).unwrap());
}

#[test]
fn postgres_passes_the_replication_suite() {
    let url = fresh_url("repl");
    crate::store::replication_tests::replication_suite(move || PgStore::open_url(&url).unwrap());
}

#[test]
fn postgres_passes_the_row_suites() {
    use crate::store::row_suites as rows;
    let open = |name: &str| {
        let url = fresh_url(name);
        move || PgStore::open_url(&url).unwrap()
    };
    rows::usage_suite(open("usage")());
    rows::events_suite(open("events")());
    rows::tasks_suite(open("tasks"));
    rows::integrity_suite(open("integrity"));
    rows::dns_blocklist_suite(open("dns"));
    rows::services_suite(open("services")());
}

#[test]
fn a_newer_schema_is_refused_and_opening_twice_migrates_once() {
    let url = fresh_url("schema");
    let mut s = PgStore::open_url(&url).unwrap();
    assert_eq!(s.schema_version().unwrap(), migrations::newest());
    drop(s);
    // Two replicas starting together: the advisory lock serializes them.
    let (a, b) = (url.clone(), url.clone());
    let t = std::thread::spawn(move || PgStore::open_url(&a).map(drop));
    PgStore::open_url(&b).unwrap();
    t.join().unwrap().unwrap();
    let mut s = PgStore::open_url(&url).unwrap();
    s.client()
        .unwrap()
        .execute(
            "INSERT INTO schema_migrations VALUES (99, 'future', 0)",
            &[],
        )
        .unwrap();
    drop(s);
    assert!(matches!(
        PgStore::open_url(&url),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn a_restarted_server_costs_one_call_then_the_store_reconnects() {
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = TestCluster::start().unwrap();
    let url = cluster.create_database("restart").unwrap();
    let mut s = PgStore::open_url(&url).unwrap();
    s.apply(&[Write::SetMapVersion(3)]).unwrap();
    cluster.stop().unwrap();
    let e = s.apply(&[Write::SetMapVersion(4)]).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(matches!(s.ping(), Err(StoreError::Unavailable(_))));
    cluster.restart().unwrap();
    s.ping().unwrap();
    s.apply(&[Write::SetMapVersion(5)]).unwrap();
    assert_eq!(s.load().unwrap().map_version, 5);
}

#[test]
fn an_exclusive_section_dies_with_its_connection_and_releases_the_lock() {
    let url = fresh_url("excl");
    let mut a = PgStore::open_url(&url).unwrap();
    let mut b = PgStore::open_url(&url).unwrap();
    a.begin_exclusive().unwrap();
    // Kill a's backend: its transaction and advisory lock go with it.
    b.client()
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    let e = a.commit_exclusive(&[Write::SetMapVersion(1)]).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    b.begin_exclusive().unwrap();
    b.commit_exclusive(&[Write::SetMapVersion(2)]).unwrap();
    // a reconnects on its next call.
    assert_eq!(a.load().unwrap().map_version, 2);
}

#[test]
fn a_write_lock_held_by_a_stalled_replica_is_released_by_the_server() {
    // The URL's own setting wins over the 60 s default: 1 s here.
    let base = fresh_url("stall");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20idle_in_transaction_session_timeout%3D1000");
    let mut a = PgStore::open_url(&url).unwrap();
    let mut b = PgStore::open_url(&url).unwrap();
    a.begin_exclusive().unwrap();
    // a stalls holding the lock; b gets it once the server ends a's session.
    let started = crate::clock::now();
    b.begin_exclusive().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(10),
        "b waited {waited:?}"
    );
    b.commit_exclusive(&[Write::SetMapVersion(3)]).unwrap();
    let e = a.commit_exclusive(&[Write::SetMapVersion(4)]).unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_) | StoreError::Db(_)),
        "{e:?}"
    );
    // a reconnects on its next call and sees b's write.
    assert_eq!(a.load().unwrap().map_version, 3);
}

#[test]
fn the_idle_transaction_limit_is_added_to_the_session_options() {
    let t = Target::parse("postgres://u@localhost/db", &ConnectOptions::default()).unwrap();
    let options = t.config_options();
    assert!(
        options.contains("idle_in_transaction_session_timeout=60000"),
        "{options}"
    );
    let t = Target::parse(
        "postgres://u@localhost/db?options=-c%20search_path%3Dweft",
        &ConnectOptions::default(),
    )
    .unwrap();
    let options = t.config_options();
    assert!(options.contains("search_path=weft"), "{options}");
    assert!(
        options.contains("idle_in_transaction_session_timeout=60000"),
        "{options}"
    );
    let t = Target::parse(
        "postgres://u@localhost/db?options=-c%20idle_in_transaction_session_timeout%3D5000",
        &ConnectOptions::default(),
    )
    .unwrap();
    assert_eq!(
        t.config_options(),
        "-c idle_in_transaction_session_timeout=5000"
    );
}

#[test]
fn migrate_store_copies_every_row_and_a_dry_run_writes_nothing() {
    use super::copy::{CopyError, copy_from_sqlite};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AuditQuery, EventQuery};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    let mut src = SqliteStore::create(&path).unwrap();
    src.apply(&crate::store::row_suites::sample_rows()).unwrap();
    let url = fresh_url("copy");
    let target = Target::parse(&url, &ConnectOptions::default()).unwrap();

    let dry = copy_from_sqlite(&path, &target, true, |_| {}).unwrap();
    assert!(!dry.committed);
    assert!(dry.rows() > 20, "{dry:?}");
    assert!(
        !PgStore::has_schema(&target).unwrap(),
        "a dry run leaves nothing, not even the schema"
    );

    let mut seen = Vec::new();
    let report = copy_from_sqlite(&path, &target, false, |t| seen.push(t.table.clone())).unwrap();
    assert!(report.committed);
    assert_eq!(report.tables.len(), seen.len());
    assert!(
        report.tables.iter().all(|t| t.sqlite == t.postgres),
        "{report:?}"
    );
    let nodes = seen.iter().position(|t| t == "nodes").unwrap();
    let members = seen.iter().position(|t| t == "memberships").unwrap();
    assert!(nodes < members, "parents first: {seen:?}");

    let mut dst = PgStore::open(target.clone()).unwrap();
    let (a, b) = (src.load().unwrap(), dst.load().unwrap());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a.data, b.data, "secrets' bytes too");
    let q = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    assert_eq!(src.audit(&q).unwrap(), dst.audit(&q).unwrap());
    let e = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    assert_eq!(src.events(&e).unwrap(), dst.events(&e).unwrap());
    assert_eq!(src.usage_sums(0).unwrap(), dst.usage_sums(0).unwrap());
    // The event log's sequence continues after the copied rows.
    let mut next = crate::store::row_suites::sample_rows();
    next.retain(|w| matches!(w, Write::Events(_)));
    if let Some(Write::Events(evs)) = next.first_mut() {
        for ev in evs.iter_mut() {
            ev.event.id += 100;
        }
    }
    dst.apply(&next).unwrap();
    let all = dst.events(&e).unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");

    // A second copy into the full database is refused.
    assert!(matches!(
        copy_from_sqlite(&path, &target, false, |_| {}),
        Err(CopyError::NotEmpty { .. })
    ));
}

/// A CA, and a certificate it signs for `names` (PEM: CA, chain, key).
fn test_pki(names: &[&str]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "weft test database CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// TLS against a real server with `ssl = on`: `sslmode=require` verifies the
/// chain against `--database-ca` and the name against the URL's host, and
/// the session really is encrypted (`pg_stat_ssl`); a certificate from
/// another CA, or for another name, is refused, and nothing falls back to
/// cleartext.
#[test]
fn tls_to_a_server_with_ssl_on_is_verified_and_encrypted() {
    let cluster = TestCluster::start().unwrap();
    cluster.create_database("tls").unwrap();
    let (ca, chain, key) = test_pki(&["127.0.0.1"]);
    cluster.enable_tls(&chain, &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = format!("{}?sslmode=require", cluster.tcp_url("tls"));
    let opts = |ca: &std::path::Path| ConnectOptions {
        ca_file: Some(ca.to_owned()),
        ..ConnectOptions::default()
    };

    // Verified and encrypted; the store works over it.
    let target = Target::parse(&url, &opts(&ca_file)).unwrap();
    assert!(target.shown().contains("(TLS)"), "{}", target.shown());
    let mut c = target.connect().unwrap();
    let row = c
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is not encrypted");
    let version: String = row.get(1);
    assert!(version.starts_with("TLSv1."), "{version}");
    drop(c);
    let mut store = PgStore::open(target).unwrap();
    assert_eq!(store.schema_version().unwrap(), migrations::newest());
    drop(store);

    // Connecting trusting only `ca_pem`: the refusal.
    let refusal = |ca_pem: &str, file: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, ca_pem).unwrap();
        match Target::parse(&url, &opts(&path)).unwrap().connect() {
            Ok(_) => panic!("connected trusting {file}"),
            Err(e) => e.to_string(),
        }
    };

    // Another CA: refused, naming the certificate problem.
    let (other_ca, _, _) = test_pki(&["127.0.0.1"]);
    let e = refusal(&other_ca, "other.pem");
    assert!(
        e.contains("invalid peer certificate")
            && (e.contains("BadSignature") || e.contains("UnknownIssuer")),
        "{e}"
    );

    // The right CA but a certificate for another name: refused too.
    let (ca2, chain2, key2) = test_pki(&["db.example"]);
    cluster.enable_tls(&chain2, &key2).unwrap();
    let e = refusal(&ca2, "ca2.pem");
    assert!(e.contains("not valid for name"), "{e}");
}

//! Which driver the tests use: SQLite (in memory) by default, PostgreSQL (a
//! fresh database in this process's throwaway cluster) when
//! `WEFT_TEST_DATABASE=postgres`. CI runs the controller's tests both ways.

#![allow(
    clippy::expect_used,
    reason = "test support: failing loudly is the point"
)]

use super::Store;
use super::postgres::PgStore;
use super::postgres::cluster::TestCluster;
use super::sqlite::SqliteStore;

/// Whether the tests run against PostgreSQL (`WEFT_TEST_DATABASE=postgres`).
/// Any other value than `postgres` or `sqlite` fails the test that asks.
pub fn postgres_wanted() -> bool {
    match std::env::var("WEFT_TEST_DATABASE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("WEFT_TEST_DATABASE={other:?}: use postgres or sqlite"),
    }
}

/// A fresh, empty store of the driver under test.
pub fn test_store() -> Box<dyn Store> {
    if postgres_wanted() {
        Box::new(
            PgStore::open_url(&fresh_postgres_database("t"))
                .expect("opening a test database in the throwaway PostgreSQL cluster"),
        )
    } else {
        Box::new(SqliteStore::open_in_memory().expect("an in-memory SQLite database"))
    }
}

/// Creates a fresh database in this process's throwaway cluster (started on
/// first use, removed when the process exits) and returns its URL.
pub fn fresh_postgres_database(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    TestCluster::shared()
        .expect("starting a throwaway PostgreSQL cluster")
        .create_database(&format!("{prefix}_{}_{n}", std::process::id()))
        .expect("creating a test database")
}

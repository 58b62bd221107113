//! Start-up across replicas: replicas starting together on an empty
//! database settle one admin token and one challenge key (on the driver
//! under test, `WEFT_TEST_DATABASE`).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::sync::{Arc, Barrier};

use super::{ADMIN_TOKEN_FILE, Prepared, finish};
use crate::secret::SecretHash;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::testing::{fresh_postgres_database, postgres_wanted};

/// Two handles on one fresh database, each in its own thread, start at the
/// same moment into their own data directories.
fn start_two<S: Store>(open: impl Fn() -> S, dirs: [&Path; 2]) -> Vec<Prepared<S>> {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = dirs
        .into_iter()
        .map(|dir| {
            let store = open();
            let (dir, barrier) = (dir.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                finish(store, &dir, Vec::new()).map_err(|e| e.to_string())
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect()
}

fn check<S: Store>(mut started: Vec<Prepared<S>>, dirs: [&Path; 2]) {
    let created: Vec<usize> = (0..2).filter(|i| started[*i].admin_token_created).collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one start creates the admin token"
    );
    let (maker, other) = (created[0], 1 - created[0]);
    let token = std::fs::read_to_string(dirs[maker].join(ADMIN_TOKEN_FILE)).unwrap();
    assert!(
        !dirs[other].join(ADMIN_TOKEN_FILE).exists(),
        "the other start wrote no token"
    );
    // The file holds the token the database knows, on both.
    for p in &started {
        assert_eq!(p.world.admin_hash, Some(SecretHash::of(token.trim())));
    }
    // The other knows where it is.
    let origin = started[other].admin_token_origin.clone().unwrap();
    let path = dirs[maker].join(ADMIN_TOKEN_FILE);
    assert!(origin.ends_with(&path.display().to_string()), "{origin}");
    // One challenge key, the same for both.
    assert_eq!(started[0].challenge_key, started[1].challenge_key);
    let stored = started[0].store.start_rows().unwrap().challenge_key;
    assert_eq!(stored.as_ref(), Some(&started[0].challenge_key));
    // A later start creates neither again.
    let again = tempfile::tempdir().unwrap();
    let p = started.remove(0);
    let third = finish(p.store, again.path(), Vec::new())
        .map_err(|e| e.to_string())
        .unwrap();
    assert!(!third.admin_token_created);
    assert_eq!(third.challenge_key, started[0].challenge_key);
}

#[test]
fn replicas_starting_together_on_an_empty_database_create_one_admin_token() {
    for _ in 0..3 {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dirs = [a.path(), b.path()];
        if postgres_wanted() {
            let url = fresh_postgres_database("start");
            let started = start_two(|| PgStore::open_url(&url).unwrap(), dirs);
            check(started, dirs);
        } else {
            let db = a.path().join("shared.db");
            drop(SqliteStore::open(&db).unwrap());
            let started = start_two(|| SqliteStore::open(&db).unwrap(), dirs);
            check(started, dirs);
        }
    }
}

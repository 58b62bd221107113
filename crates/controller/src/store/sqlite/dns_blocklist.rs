//! The DNS blocklist's row (migration 0012).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use weft_proto::dnsblock::{BlockMode, DnsBlocklist, digest, is_block_name};

use super::{corrupt, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::dns_blocklist::DnsBlocklistRecord;

/// Replaces the blocklist (`None`: deletes it) inside the batch's transaction.
pub(super) fn put(
    tx: &Transaction<'_>,
    rec: Option<&DnsBlocklistRecord>,
) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM dns_blocklist")?
        .execute([])?;
    if let Some(r) = rec {
        let l = &r.list;
        tx.prepare_cached(
            "INSERT INTO dns_blocklist (id, version, mode, entries, sha256, domains, set_by, set_at_ms)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            to_i64(l.version),
            l.mode.as_str(),
            to_i64(l.domains.len() as u64),
            digest(&l.domains),
            l.domains.join("\n"),
            r.set_by,
            to_i64(r.set_at_ms),
        ])?;
    }
    Ok(())
}

/// The stored blocklist, checked: a row whose domains do not match its
/// digest, or hold an invalid or unsorted name, is corrupt.
pub(super) fn load(c: &Connection) -> Result<Option<DnsBlocklistRecord>, StoreError> {
    let row = c
        .query_row(
            "SELECT version, mode, entries, sha256, domains, set_by, set_at_ms FROM dns_blocklist WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            },
        )
        .optional()?;
    row.map(checked).transpose()
}

/// A blocklist row's columns: version, mode, entries, sha256, domains,
/// set_by, set_at_ms.
pub(in crate::store) type BlocklistRow = (i64, String, i64, String, String, String, i64);

/// The blocklist of a row, checked (both drivers): a row whose domains do not
/// match its digest, or hold an invalid or unsorted name, is corrupt.
pub(in crate::store) fn checked(row: BlocklistRow) -> Result<DnsBlocklistRecord, StoreError> {
    let (version, mode, entries, sha256, text, set_by, at) = row;
    let bad = corrupt("dns_blocklist");
    let mode: BlockMode = mode.parse().map_err(&bad)?;
    let domains: Vec<String> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').map(str::to_owned).collect()
    };
    if to_u64(entries) != domains.len() as u64 {
        return Err(bad(format!(
            "{} domains stored, the row says {entries}",
            domains.len()
        )));
    }
    if digest(&domains) != sha256 {
        return Err(bad("the domains do not match their sha256".into()));
    }
    if domains.iter().any(|d| !is_block_name(d)) || domains.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("an invalid, unsorted or repeated domain".into()));
    }
    Ok(DnsBlocklistRecord {
        list: Arc::new(DnsBlocklist {
            version: to_u64(version),
            mode,
            domains,
        }),
        set_by,
        set_at_ms: to_u64(at),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weft_proto::dnsblock::{BlockMode, DnsBlocklist};

    use crate::store::dns_blocklist::DnsBlocklistRecord;
    use crate::store::row_suites::dns_blocklist_suite;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Store, Write};

    /// Persisting, replacing and clearing are `row_suites::dns_blocklist_suite`'s
    /// (run on every driver); here a row edited by hand.
    #[test]
    fn a_row_edited_by_hand_is_refused_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.db");
        dns_blocklist_suite(|| SqliteStore::open(&path).unwrap());
        let mut s = SqliteStore::open_existing(&path).unwrap();
        let list = DnsBlocklistRecord {
            list: Arc::new(DnsBlocklist {
                version: 6,
                mode: BlockMode::Zero,
                domains: vec!["a.example".to_owned()],
            }),
            set_by: "admin".into(),
            set_at_ms: 5,
        };
        s.apply(&[Write::DnsBlocklist(Some(list))]).unwrap();
        drop(s);
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("UPDATE dns_blocklist SET domains = 'z.example'", [])
            .unwrap();
        drop(c);
        let mut s = SqliteStore::open_existing(&path).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("dns_blocklist") && e.contains("sha256"), "{e}");
    }
}

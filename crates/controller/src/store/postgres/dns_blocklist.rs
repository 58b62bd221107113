//! The DNS blocklist's row (migration 0012) on PostgreSQL. The checks on load
//! are the SQLite driver's ([`crate::store::sqlite`]).

use postgres::GenericClient;
use weft_proto::dnsblock::digest;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::dns_blocklist::DnsBlocklistRecord;
use crate::store::sqlite::{checked_blocklist, to_i64};

/// Replaces the blocklist (`None`: deletes it) inside the batch's transaction.
pub(super) fn put<C: GenericClient>(
    db: &mut Db<'_, C>,
    rec: Option<&DnsBlocklistRecord>,
) -> Result<(), StoreError> {
    db.exec("DELETE FROM dns_blocklist", &[])?;
    if let Some(r) = rec {
        let l = &r.list;
        db.exec(
            "INSERT INTO dns_blocklist (id, version, mode, entries, sha256, domains, set_by, set_at_ms)
             VALUES (1, $1, $2, $3, $4, $5, $6, $7)",
            &[
                &to_i64(l.version),
                &l.mode.as_str(),
                &to_i64(l.domains.len() as u64),
                &digest(&l.domains),
                &l.domains.join("\n"),
                &r.set_by,
                &to_i64(r.set_at_ms),
            ],
        )?;
    }
    Ok(())
}

/// The stored blocklist, checked like SQLite's.
pub(super) fn load<C: GenericClient>(
    db: &mut Db<'_, C>,
) -> Result<Option<DnsBlocklistRecord>, StoreError> {
    let Some(r) = db.query_opt(
        "SELECT version, mode, entries, sha256, domains, set_by, set_at_ms FROM dns_blocklist WHERE id = 1",
        &[],
    )?
    else {
        return Ok(None);
    };
    checked_blocklist((
        col(&r, 0)?,
        col(&r, 1)?,
        col(&r, 2)?,
        col(&r, 3)?,
        col(&r, 4)?,
        col(&r, 5)?,
        col(&r, 6)?,
    ))
    .map(Some)
}

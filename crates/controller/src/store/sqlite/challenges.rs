//! Registration challenge rows (migration 0016): the key in `meta`, the used
//! challenges in `used_challenges`.

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::{to_i64, to_u64};
use crate::store::StoreError;
use crate::store::challenges::{
    ChallengeKey, ChallengeWrite, KEY_META, StartRows, UsedChallengeRecord, decode_tag, encode_tag,
};

/// Applies one challenge row change inside the batch's transaction.
pub(super) fn apply(tx: &Transaction<'_>, w: &ChallengeWrite) -> Result<(), StoreError> {
    match w {
        // A plain insert: a key already there fails the batch.
        ChallengeWrite::CreateKey(k) => {
            tx.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2)")?
                .execute(params![KEY_META, k.encode()])?;
        }
        ChallengeWrite::Use(u) => {
            tx.prepare_cached("INSERT INTO used_challenges (tag, expires_ms) VALUES (?1, ?2)")?
                .execute(params![encode_tag(&u.tag), to_i64(u.expires_ms)])?;
        }
        ChallengeWrite::Prune { through_ms } => {
            tx.prepare_cached("DELETE FROM used_challenges WHERE expires_ms <= ?1")?
                .execute([to_i64(*through_ms)])?;
        }
    }
    Ok(())
}

/// The challenge key, if created.
pub(super) fn key(c: &Connection) -> Result<Option<ChallengeKey>, StoreError> {
    c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([KEY_META], |r| r.get::<_, String>(0))
        .optional()?
        .map(|v| ChallengeKey::decode(&v))
        .transpose()
}

/// Every used challenge.
pub(super) fn used(c: &Connection) -> Result<Vec<UsedChallengeRecord>, StoreError> {
    let mut st = c.prepare_cached("SELECT tag, expires_ms FROM used_challenges")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (tag, expires) = row?;
        out.push(UsedChallengeRecord {
            tag: decode_tag(&tag)?,
            expires_ms: to_u64(expires),
        });
    }
    Ok(out)
}

/// The admin hash and the challenge key.
pub(super) fn start_rows(c: &Connection) -> Result<StartRows, StoreError> {
    let admin_hash = c
        .prepare_cached("SELECT value FROM meta WHERE key = 'admin_hash'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .map(|v| super::parse("admin_hash", &v))
        .transpose()?;
    Ok(StartRows {
        admin_hash,
        challenge_key: key(c)?,
    })
}

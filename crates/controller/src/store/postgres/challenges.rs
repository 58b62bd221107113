//! Registration challenge rows (migration 0016; see
//! [`crate::store::challenges`]).

use postgres::GenericClient;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::challenges::{
    ChallengeKey, ChallengeWrite, KEY_META, StartRows, UsedChallengeRecord, decode_tag, encode_tag,
};
use crate::store::sqlite::{parse, to_i64, to_u64};

/// Applies one challenge row change inside the batch's transaction.
pub(super) fn apply<C: GenericClient>(
    db: &mut Db<'_, C>,
    w: &ChallengeWrite,
) -> Result<(), StoreError> {
    match w {
        // A plain insert: a key already there fails the batch.
        ChallengeWrite::CreateKey(k) => {
            db.exec(
                "INSERT INTO meta (key, value) VALUES ($1, $2)",
                &[&KEY_META, &k.encode()],
            )?;
        }
        ChallengeWrite::Use(u) => {
            db.exec(
                "INSERT INTO used_challenges (tag, expires_ms) VALUES ($1, $2)",
                &[&encode_tag(&u.tag), &to_i64(u.expires_ms)],
            )?;
        }
        ChallengeWrite::Prune { through_ms } => {
            db.exec(
                "DELETE FROM used_challenges WHERE expires_ms <= $1",
                &[&to_i64(*through_ms)],
            )?;
        }
    }
    Ok(())
}

fn meta<C: GenericClient>(db: &mut Db<'_, C>, key: &str) -> Result<Option<String>, StoreError> {
    db.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
        .map(|r| col(&r, 0))
        .transpose()
}

/// The challenge key, if created.
pub(super) fn key<C: GenericClient>(
    db: &mut Db<'_, C>,
) -> Result<Option<ChallengeKey>, StoreError> {
    meta(db, KEY_META)?
        .map(|v| ChallengeKey::decode(&v))
        .transpose()
}

/// Every used challenge.
pub(super) fn used<C: GenericClient>(
    db: &mut Db<'_, C>,
) -> Result<Vec<UsedChallengeRecord>, StoreError> {
    let mut out = Vec::new();
    for r in db.query("SELECT tag, expires_ms FROM used_challenges", &[])? {
        let tag: String = col(&r, 0)?;
        out.push(UsedChallengeRecord {
            tag: decode_tag(&tag)?,
            expires_ms: to_u64(col(&r, 1)?),
        });
    }
    Ok(out)
}

/// The admin hash and the challenge key.
pub(super) fn start_rows<C: GenericClient>(db: &mut Db<'_, C>) -> Result<StartRows, StoreError> {
    Ok(StartRows {
        admin_hash: meta(db, "admin_hash")?
            .map(|v| parse("admin_hash", &v))
            .transpose()?,
        challenge_key: key(db)?,
    })
}

//! Copying a SQLite installation into an empty PostgreSQL database
//! (`weft-controller migrate-store`).
//!
//! The copy is generic over the schema: every table PostgreSQL's migrations
//! created (but `schema_migrations`) must exist in the SQLite file with the
//! same columns, and every SQLite table must exist in PostgreSQL, or the copy
//! is refused (the two dialects' migrations are out of step). Tables are
//! copied parents first (by their foreign keys), values converted by the
//! PostgreSQL column's type, all in **one** PostgreSQL transaction that also
//! creates the schema; the SQLite side is read in one read transaction (a
//! consistent snapshot, read-only: the source is never written). Before the
//! commit, each table's row count in PostgreSQL is compared with SQLite's;
//! any difference rolls everything back. A dry run does all of it, then
//! rolls back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use postgres::types::ToSql;
use rusqlite::types::Value;

use super::conn::Target;
use super::migrations;
use crate::store::StoreError;

/// One table's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    /// The table.
    pub table: String,
    /// Rows in the SQLite file.
    pub sqlite: u64,
    /// Rows in PostgreSQL after the copy (inside its transaction).
    pub postgres: u64,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Per table, in copy order.
    pub tables: Vec<TableCount>,
    /// Whether it was committed (false: a dry run, rolled back).
    pub committed: bool,
}

impl CopyReport {
    /// Rows copied in all.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.postgres).sum()
    }
}

/// Why a copy was refused or failed (nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The SQLite file failed.
    #[error("{path}: {why}")]
    Sqlite {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The source is at another schema version than this build.
    #[error("{path} is at schema version {found}, this weft-controller writes {known}: {what}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
        /// This build's.
        known: u32,
        /// What to do.
        what: &'static str,
    },
    /// The target already holds rows.
    #[error(
        "{target} is not empty (table {table} has rows): migrate-store copies only into an empty database. Point --to at a new database (CREATE DATABASE …), or drop this one's tables if it is a failed earlier copy"
    )]
    NotEmpty {
        /// The target, as shown.
        target: String,
        /// A table with rows.
        table: String,
    },
    /// The two schemas differ.
    #[error(
        "the SQLite and PostgreSQL schemas differ ({0}); this build's migrations are out of step, nothing was copied"
    )]
    Schema(String),
    /// A value does not fit its PostgreSQL column.
    #[error("{table}.{column}: {why}")]
    Value {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What is wrong.
        why: String,
    },
    /// The counts differ after the copy (rolled back).
    #[error("row counts differ after the copy (rolled back, nothing written): {0}")]
    Count(String),
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> CopyError + '_ {
    move |e| CopyError::Sqlite {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// A PostgreSQL column: name, type (`information_schema` `data_type`),
/// identity.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    ty: String,
    identity: bool,
}

/// Copies every row of the SQLite database at `sqlite` into `target`
/// (creating the schema), verifying each table's row count; with `dry_run`,
/// rolls back at the end. `progress` is told each table as it is copied.
pub fn copy_from_sqlite(
    sqlite: &Path,
    target: &Target,
    dry_run: bool,
    mut progress: impl FnMut(&TableCount),
) -> Result<CopyReport, CopyError> {
    let e = sqlite_err(sqlite);
    let src = rusqlite::Connection::open_with_flags(
        sqlite,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&e)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(&e)?;
    // One read transaction: a consistent snapshot even while a controller
    // writes (WAL).
    src.execute_batch("BEGIN").map_err(&e)?;
    let found: Option<u32> = src
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(|err| CopyError::Sqlite {
            path: sqlite.display().to_string(),
            why: format!("not a weft database ({err})"),
        })?;
    let found = found.unwrap_or(0);
    let known = migrations::newest();
    if found != known {
        return Err(CopyError::Version {
            path: sqlite.display().to_string(),
            found,
            known,
            what: if found < known {
                "start this weft-controller once on it (serve --data-dir; it migrates the file), stop it, then copy"
            } else {
                "use the weft-controller that wrote it"
            },
        });
    }
    let sqlite_tables: BTreeSet<String> = {
        let mut st = src
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations'",
            )
            .map_err(&e)?;
        st.query_map([], |r| r.get::<_, String>(0))
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?
    };

    let mut client = target.connect()?;
    let mut tx = client.transaction().map_err(StoreError::from)?;
    migrations::migrate(&mut tx)?;
    let columns = pg_columns(&mut tx)?;
    let pg_tables: BTreeSet<String> = columns.keys().cloned().collect();
    if pg_tables != sqlite_tables {
        let only_pg: Vec<_> = pg_tables.difference(&sqlite_tables).collect();
        let only_sqlite: Vec<_> = sqlite_tables.difference(&pg_tables).collect();
        return Err(CopyError::Schema(format!(
            "only in PostgreSQL: {only_pg:?}; only in SQLite: {only_sqlite:?}"
        )));
    }
    for (table, cols) in &columns {
        let exists: bool = tx
            .query_one(
                format!("SELECT EXISTS (SELECT 1 FROM {table})").as_str(),
                &[],
            )
            .and_then(|r| r.try_get(0))
            .map_err(StoreError::from)?;
        if exists {
            return Err(CopyError::NotEmpty {
                target: target.shown().to_owned(),
                table: table.clone(),
            });
        }
        let src_cols: BTreeSet<String> = {
            let mut st = src
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .map_err(&e)?;
            st.query_map([], |r| r.get::<_, String>(0))
                .map_err(&e)?
                .collect::<Result<_, _>>()
                .map_err(&e)?
        };
        let pg_cols: BTreeSet<String> = cols.iter().map(|c| c.name.clone()).collect();
        if src_cols != pg_cols {
            return Err(CopyError::Schema(format!(
                "table {table}: SQLite has {src_cols:?}, PostgreSQL {pg_cols:?}"
            )));
        }
    }

    let order = copy_order(&mut tx, &pg_tables)?;
    let mut report = CopyReport {
        tables: Vec::new(),
        committed: false,
    };
    for table in &order {
        let cols = &columns[table];
        let sqlite_count: i64 = src
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(&e)?;
        copy_table(&src, &mut tx, table, cols, sqlite)?;
        for c in cols.iter().filter(|c| c.identity) {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), COALESCE(MAX({col}), 0) + 1, false) FROM {table}",
                col = c.name
            );
            tx.execute(sql.as_str(), &[]).map_err(StoreError::from)?;
        }
        let pg_count: i64 = tx
            .query_one(format!("SELECT COUNT(*) FROM {table}").as_str(), &[])
            .and_then(|r| r.try_get(0))
            .map_err(StoreError::from)?;
        let t = TableCount {
            table: table.clone(),
            sqlite: u64::try_from(sqlite_count).unwrap_or(0),
            postgres: u64::try_from(pg_count).unwrap_or(0),
        };
        progress(&t);
        report.tables.push(t);
    }
    let differ: Vec<String> = report
        .tables
        .iter()
        .filter(|t| t.sqlite != t.postgres)
        .map(|t| {
            format!(
                "{}: {} in SQLite, {} in PostgreSQL",
                t.table, t.sqlite, t.postgres
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(CopyError::Count(differ.join("; ")));
    }
    if dry_run {
        tx.rollback().map_err(StoreError::from)?;
    } else {
        tx.commit().map_err(StoreError::from)?;
        report.committed = true;
    }
    let _ = src.execute_batch("COMMIT");
    Ok(report)
}

/// Every weft table's columns, by table.
fn pg_columns<C: postgres::GenericClient>(
    c: &mut C,
) -> Result<BTreeMap<String, Vec<Column>>, StoreError> {
    let rows = c.query(
        "SELECT c.table_name::TEXT, c.column_name::TEXT, c.data_type::TEXT, c.is_identity::TEXT
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
           AND c.table_name <> 'schema_migrations'
         ORDER BY c.table_name, c.ordinal_position",
        &[],
    )?;
    let mut out: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for r in rows {
        let identity: String = r.try_get(3)?;
        out.entry(r.try_get(0)?).or_default().push(Column {
            name: r.try_get(1)?,
            ty: r.try_get(2)?,
            identity: identity == "YES",
        });
    }
    Ok(out)
}

/// The tables, each after the tables its foreign keys name (ties by name).
fn copy_order<C: postgres::GenericClient>(
    c: &mut C,
    tables: &BTreeSet<String>,
) -> Result<Vec<String>, StoreError> {
    let mut parents: BTreeMap<String, BTreeSet<String>> = tables
        .iter()
        .map(|t| (t.clone(), BTreeSet::new()))
        .collect();
    for r in c.query(
        "SELECT conrelid::regclass::TEXT, confrelid::regclass::TEXT FROM pg_constraint
         WHERE contype = 'f' AND connamespace = current_schema()::regnamespace",
        &[],
    )? {
        let (child, parent): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        if child != parent
            && let Some(p) = parents.get_mut(&child)
        {
            p.insert(parent);
        }
    }
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    while done.len() < tables.len() {
        let ready: Vec<String> = parents
            .iter()
            .filter(|(t, ps)| !done.contains(*t) && ps.iter().all(|p| done.contains(p)))
            .map(|(t, _)| t.clone())
            .collect();
        if ready.is_empty() {
            return Err(StoreError::Db(
                "the tables' foreign keys form a cycle; cannot order the copy".into(),
            ));
        }
        for t in ready {
            done.insert(t.clone());
            order.push(t);
        }
    }
    Ok(order)
}

/// Rows per INSERT (PostgreSQL takes at most 65,535 parameters).
const ROWS_PER_INSERT: usize = 500;

fn copy_table(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    cols: &[Column],
    path: &Path,
) -> Result<(), CopyError> {
    let e = sqlite_err(path);
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    let mut st = src
        .prepare(&format!("SELECT {} FROM {table}", names.join(", ")))
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    let mut batch: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut n = 0;
    while let Some(row) = rows.next().map_err(&e)? {
        for (i, c) in cols.iter().enumerate() {
            let v: Value = row.get(i).map_err(&e)?;
            batch.push(convert(table, c, v)?);
        }
        n += 1;
        if n == ROWS_PER_INSERT {
            insert(tx, table, &names, n, &batch)?;
            batch.clear();
            n = 0;
        }
    }
    if n > 0 {
        insert(tx, table, &names, n, &batch)?;
    }
    Ok(())
}

fn insert(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    names: &[&str],
    rows: usize,
    values: &[Box<dyn ToSql + Sync>],
) -> Result<(), CopyError> {
    let width = names.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        names.join(", "),
        tuples.join(", ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| &**b).collect();
    tx.execute(sql.as_str(), &params)
        .map_err(|err| CopyError::Store(StoreError::from(err)))?;
    Ok(())
}

/// A SQLite value as the PostgreSQL column's type wants it.
fn convert(table: &str, c: &Column, v: Value) -> Result<Box<dyn ToSql + Sync>, CopyError> {
    let bad = |why: String| CopyError::Value {
        table: table.to_owned(),
        column: c.name.clone(),
        why,
    };
    let value: Box<dyn ToSql + Sync> = match (c.ty.as_str(), v) {
        ("bigint", Value::Null) => Box::new(None::<i64>),
        ("bigint", Value::Integer(i)) => Box::new(i),
        ("integer", Value::Null) => Box::new(None::<i32>),
        ("integer", Value::Integer(i)) => {
            Box::new(i32::try_from(i).map_err(|_| bad(format!("{i} does not fit an INTEGER")))?)
        }
        ("boolean", Value::Null) => Box::new(None::<bool>),
        ("boolean", Value::Integer(i)) => Box::new(i != 0),
        ("text", Value::Null) => Box::new(None::<String>),
        ("text", Value::Text(s)) => Box::new(s),
        ("text", Value::Integer(i)) => Box::new(i.to_string()),
        ("text", Value::Real(f)) => Box::new(f.to_string()),
        ("bytea", Value::Null) => Box::new(None::<Vec<u8>>),
        ("bytea", Value::Blob(b)) => Box::new(b),
        ("bytea", Value::Text(s)) => Box::new(s.into_bytes()),
        ("double precision", Value::Null) => Box::new(None::<f64>),
        ("double precision", Value::Real(f)) => Box::new(f),
        ("double precision", Value::Integer(i)) => Box::new(i as f64),
        (ty, v) => {
            return Err(bad(format!(
                "a SQLite {} value for a PostgreSQL {ty} column",
                match v {
                    Value::Null => "NULL",
                    Value::Integer(_) => "INTEGER",
                    Value::Real(_) => "REAL",
                    Value::Text(_) => "TEXT",
                    Value::Blob(_) => "BLOB",
                }
            )));
        }
    };
    Ok(value)
}

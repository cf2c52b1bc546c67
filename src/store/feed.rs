//! The statements on `changes`, the change feed's table. Only `core::feed`
//! calls them; it knows what the records mean and when to read them.

use sqlx::{QueryBuilder, SqliteConnection};

use super::Store;
use crate::Result;
use crate::clock::Timestamp;

/// The facet a record is for: each facet reads only its own records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Facet {
    Sessions,
    Cache,
    Limits,
}

impl Facet {
    /// The `facet` column's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Facet::Sessions => "sessions",
            Facet::Cache => "cache",
            Facet::Limits => "limits",
        }
    }
}

/// One record to publish: what kind of change, and what it names (a token
/// hash, a cache key, a tag, a user, a subject; empty for "everything").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) kind: &'static str,
    pub(crate) target: &'a [u8],
}

/// A record another handle published, as read back.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) kind: String,
    pub(crate) target: Vec<u8>,
}

/// What one read of the feed found.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The facet's records from other handles, oldest first.
    pub(crate) changes: Vec<Change>,
    /// The oldest and newest `seq` in the table (`None`: it is empty).
    pub(crate) first: Option<i64>,
    pub(crate) last: Option<i64>,
}

/// Rows per INSERT: five parameters each, well under SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// A value that changes whenever any connection (of this process or
    /// another) commits, read without a query (see `watch.rs`).
    #[inline]
    pub(crate) fn commit_version(&self) -> Result<u64> {
        self.hot.commit_version()
    }

    /// The newest `seq` (0 when nothing was ever published).
    pub(crate) fn feed_last(&self) -> Result<i64> {
        self.read_here(|conn| {
            let mut stmt = conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM changes")?;
            stmt.query_row([], |row| row.get(0))
        })
    }

    /// `facet`'s records after `after` not written by `origin`, with the
    /// table's first and last `seq`, all from one snapshot.
    pub(crate) fn feed_read(&self, facet: Facet, after: i64, origin: i64) -> Result<Batch> {
        self.read_here(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut batch = Batch::default();
            {
                let mut ends = tx.prepare_cached(
                    "SELECT (SELECT min(seq) FROM changes), (SELECT max(seq) FROM changes)",
                )?;
                (batch.first, batch.last) = ends.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let mut rows = tx.prepare_cached(
                    "SELECT kind, target FROM changes
                     WHERE seq > ?1 AND facet = ?2 AND origin <> ?3 ORDER BY seq",
                )?;
                let changes =
                    rows.query_map(rusqlite::params![after, facet.as_str(), origin], |r| {
                        Ok(Change {
                            kind: r.get(0)?,
                            target: r.get(1)?,
                        })
                    })?;
                batch.changes = changes.collect::<rusqlite::Result<_>>()?;
            }
            tx.commit()?;
            Ok(batch)
        })
    }
}

/// The start of the statement that appends records (five columns).
const INSERT: &str = "INSERT INTO changes (origin, at, facet, kind, target) ";

/// Deletes the records older than ?1, keeping the newest (so that a reader
/// can tell records were trimmed). The records are in `seq` order, roughly
/// in time order too, so the scan stops at the first one young enough.
const TRIM: &str = "DELETE FROM changes WHERE seq < coalesce(
     (SELECT seq FROM changes WHERE at >= ?1 ORDER BY seq LIMIT 1),
     (SELECT max(seq) FROM changes))";

/// Appends `records` inside the caller's transaction on `conn`, as
/// multi-row statements.
pub(crate) async fn publish(
    conn: &mut SqliteConnection,
    origin: i64,
    at: Timestamp,
    facet: Facet,
    records: &[Record<'_>],
) -> Result<()> {
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(INSERT);
        insert.push_values(chunk, |mut row, record| {
            row.push_bind(origin)
                .push_bind(at)
                .push_bind(facet.as_str())
                .push_bind(record.kind)
                .push_bind(record.target);
        });
        // Not kept prepared: the text changes with the number of rows.
        insert.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// [`publish`] on a rusqlite connection (the hot writer's).
pub(crate) fn publish_here(
    conn: &rusqlite::Connection,
    origin: i64,
    at: Timestamp,
    facet: Facet,
    records: &[Record<'_>],
) -> Result<()> {
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "{INSERT}VALUES {}",
            vec!["(?,?,?,?,?)"; chunk.len()].join(",")
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 5);
        let facet = facet.as_str();
        for record in chunk {
            params.extend([
                &origin as &dyn rusqlite::ToSql,
                &at,
                &facet,
                &record.kind,
                &record.target,
            ]);
        }
        stmt.execute(params.as_slice())?;
    }
    Ok(())
}

/// Deletes the records older than `cutoff`, keeping the newest; how many
/// went.
pub(crate) async fn trim(conn: &mut SqliteConnection, cutoff: Timestamp) -> Result<u64> {
    let done = sqlx::query(TRIM).bind(cutoff).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// [`trim`] on a rusqlite connection.
pub(crate) fn trim_here(conn: &rusqlite::Connection, cutoff: Timestamp) -> Result<u64> {
    let n = conn.prepare_cached(TRIM)?.execute([cutoff])?;
    Ok(u64::try_from(n).unwrap_or(0))
}

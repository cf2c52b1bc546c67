//! Every statement of the limits facet (SQLite). Times are RFC 3339 text,
//! bound from the vault's clock; nothing here reads SQLite's own clock.

use std::sync::Arc;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::bucket::{Bucket, EPSILON};
use super::config::CompiledLimit;
use crate::{Result, Timestamp};

/// Rows per multi-row statement (6 variables each, far below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 100;

/// One bucket row to write.
#[derive(Debug, Clone)]
pub(crate) struct BucketRow {
    pub(crate) subject: String,
    pub(crate) limit: Arc<str>,
    pub(crate) period_secs: i64,
    pub(crate) bucket: Bucket,
}

/// One violation to record.
#[derive(Debug, Clone)]
pub(crate) struct ViolationRow {
    pub(crate) subject: String,
    pub(crate) limit: Arc<str>,
    pub(crate) occurred_at: Timestamp,
    pub(crate) cost: f64,
    pub(crate) penalty_until: Timestamp,
    pub(crate) client_info: String,
}

/// A bucket as stored: (window_secs, bucket).
pub(crate) type StoredBucket = (i64, Bucket);
/// A violation as the penalty needs it: (occurred_at, penalty_until).
pub(crate) type StoredViolation = (Timestamp, Option<Timestamp>);

/// The shared-mode check for a limit of `windows` windows: one statement
/// that refills every window's bucket to now (creating full ones), and
/// writes them with the cost taken only if the cost fits every window and no
/// penalty is running. It returns the new rows, or no row at all when the
/// request is refused (then nothing was written).
///
/// Parameters: ?1 subject, ?2 limit, ?3 now (text), ?4 now (ms), ?5 cost,
/// ?6 an hour ago (text), then (window_secs, capacity, rate per ms) for each
/// window from ?7. The refill is `bucket::WindowSpec::refill`, in SQL, and
/// `last_refill_at` never moves back (text order is time order).
pub(crate) fn shared_check_sql(windows: usize) -> String {
    let values: Vec<String> = (0..windows)
        .map(|i| {
            let p = 7 + 3 * i;
            format!("(?{p}, ?{}, ?{})", p + 1, p + 2)
        })
        .collect();
    format!(
        "WITH v(w, cap, rate) AS (VALUES {values}),
         cur(w, tokens, last) AS (
             SELECT v.w, CASE WHEN b.tokens IS NULL THEN v.cap ELSE min(v.cap, b.tokens
                 + max(0, ?4 - CAST(round(unixepoch(b.last_refill_at, 'subsec') * 1000) AS INTEGER))
                 * v.rate) END,
                 max(coalesce(b.last_refill_at, ?3), ?3)
             FROM v LEFT JOIN token_buckets b
               ON b.subject = ?1 AND b.limit_name = ?2 AND b.window_secs = v.w
         )
         INSERT INTO token_buckets (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
         SELECT ?1, ?2, w, max(0.0, tokens - ?5), last, ?3 FROM cur
         WHERE NOT EXISTS (SELECT 1 FROM cur WHERE tokens + {EPSILON:e} < ?5)
           AND NOT EXISTS (SELECT 1 FROM violations
                           WHERE subject = ?1 AND limit_name = ?2
                             AND occurred_at > ?6 AND penalty_until > ?3)
         ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
             tokens = excluded.tokens,
             last_refill_at = excluded.last_refill_at,
             updated_at = excluded.updated_at
         RETURNING window_secs, tokens,
             (SELECT count(*) FROM violations
              WHERE subject = ?1 AND limit_name = ?2 AND occurred_at > ?6)",
        values = values.join(", ")
    )
}

/// An allowed shared-mode check: `(window_secs, tokens)` per window, and the
/// violations in the last hour.
pub(crate) type SharedAllowed = (Vec<(i64, f64)>, usize);

/// Runs the shared-mode check (on the hot writer, inside its transaction);
/// `Some` when allowed.
pub(crate) fn shared_check(
    conn: &rusqlite::Connection,
    limit: &CompiledLimit,
    subject: &str,
    now: Timestamp,
    cost: f64,
) -> rusqlite::Result<Option<SharedAllowed>> {
    let hour_ago = Timestamp::from_millis(now.as_millis() - super::bucket::PENALTY_MEMORY_MS);
    let mut stmt = conn.prepare_cached(&limit.shared_sql)?;
    stmt.raw_bind_parameter(1, subject)?;
    stmt.raw_bind_parameter(2, &*limit.name)?;
    stmt.raw_bind_parameter(3, now)?;
    stmt.raw_bind_parameter(4, now.as_millis())?;
    stmt.raw_bind_parameter(5, cost)?;
    stmt.raw_bind_parameter(6, hour_ago)?;
    for (i, w) in limit.windows.iter().enumerate() {
        let p = 7 + 3 * i;
        stmt.raw_bind_parameter(p, w.period_secs)?;
        stmt.raw_bind_parameter(p + 1, w.capacity)?;
        stmt.raw_bind_parameter(p + 2, w.rate_per_ms)?;
    }
    let mut rows = stmt.raw_query();
    let mut windows = Vec::with_capacity(limit.windows.len());
    let mut recent = 0i64;
    while let Some(row) = rows.next()? {
        windows.push((row.get(0)?, row.get(1)?));
        recent = row.get(2)?;
    }
    Ok((!windows.is_empty()).then(|| (windows, usize::try_from(recent).unwrap_or(0))))
}

/// Records one violation (shared mode, on the hot writer).
pub(crate) fn insert_violation(
    conn: &rusqlite::Connection,
    row: &ViolationRow,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO violations
         (subject, limit_name, occurred_at, cost, penalty_until, client_info)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((
        row.subject.as_str(),
        &*row.limit,
        row.occurred_at,
        row.cost,
        row.penalty_until,
        row.client_info.as_str(),
    ))?;
    Ok(())
}

/// A subject's buckets of one limit (hot reader, caller's thread).
pub(crate) fn buckets(
    conn: &rusqlite::Connection,
    subject: &str,
    limit: &str,
) -> rusqlite::Result<Vec<StoredBucket>> {
    let mut stmt = conn.prepare_cached(
        "SELECT window_secs, tokens, last_refill_at FROM token_buckets
         WHERE subject = ?1 AND limit_name = ?2",
    )?;
    stmt.query_map((subject, limit), |r| {
        Ok((
            r.get(0)?,
            Bucket {
                tokens: r.get(1)?,
                last_refill: r.get(2)?,
            },
        ))
    })?
    .collect()
}

/// A subject's violations of one limit since `since` (hot reader).
pub(crate) fn violations(
    conn: &rusqlite::Connection,
    subject: &str,
    limit: &str,
    since: Timestamp,
) -> rusqlite::Result<Vec<StoredViolation>> {
    let mut stmt = conn.prepare_cached(
        "SELECT occurred_at, penalty_until FROM violations
         WHERE subject = ?1 AND occurred_at > ?3 AND limit_name = ?2",
    )?;
    stmt.query_map((subject, limit, since), |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// How many violations of any subject occurred after `since` (hot reader),
/// for the health report.
pub(crate) fn count_violations_since(
    conn: &rusqlite::Connection,
    since: Timestamp,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached("SELECT count(*) FROM violations WHERE occurred_at > ?1")?;
    stmt.query_row([since], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
}

/// Every violation of a subject, oldest first (hot reader).
pub(crate) fn all_violations(
    conn: &rusqlite::Connection,
    subject: &str,
) -> rusqlite::Result<Vec<super::ViolationRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT limit_name, occurred_at, cost, penalty_until FROM violations
         WHERE subject = ?1 ORDER BY occurred_at, id",
    )?;
    stmt.query_map([subject], |r| {
        Ok(super::ViolationRecord {
            limit: r.get(0)?,
            occurred_at: r.get(1)?,
            cost: r.get(2)?,
            penalty_until: r.get(3)?,
        })
    })?
    .collect()
}

/// Writes bucket rows, replacing the stored state of those that exist.
pub(crate) async fn upsert_buckets(conn: &mut SqliteConnection, rows: &[BucketRow]) -> Result<()> {
    insert_buckets(
        conn,
        rows,
        "DO UPDATE SET
              tokens = excluded.tokens,
              last_refill_at = excluded.last_refill_at,
              updated_at = excluded.updated_at",
    )
    .await?;
    Ok(())
}

/// Inserts bucket rows that do not exist yet; how many were inserted.
pub(crate) async fn insert_buckets_if_absent(
    conn: &mut SqliteConnection,
    rows: &[BucketRow],
) -> Result<u64> {
    insert_buckets(conn, rows, "DO NOTHING").await
}

/// Inserts bucket rows `ROWS_PER_STATEMENT` at a time, doing `on_conflict`
/// to the rows that exist; how many rows were written.
async fn insert_buckets(
    conn: &mut SqliteConnection,
    rows: &[BucketRow],
    on_conflict: &str,
) -> Result<u64> {
    let mut written = 0;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO token_buckets
             (subject, limit_name, window_secs, tokens, last_refill_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, row| {
            b.push_bind(row.subject.as_str())
                .push_bind(&*row.limit)
                .push_bind(row.period_secs)
                .push_bind(row.bucket.tokens)
                .push_bind(row.bucket.last_refill)
                .push_bind(row.bucket.last_refill);
        });
        qb.push(" ON CONFLICT (subject, limit_name, window_secs) ")
            .push(on_conflict);
        written += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(written)
}

/// Inserts violations, `ROWS_PER_STATEMENT` at a time.
pub(crate) async fn insert_violations(
    conn: &mut SqliteConnection,
    rows: &[ViolationRow],
) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO violations
             (subject, limit_name, occurred_at, cost, penalty_until, client_info) ",
        );
        qb.push_values(chunk, |mut b, row| {
            b.push_bind(row.subject.as_str())
                .push_bind(&*row.limit)
                .push_bind(row.occurred_at)
                .push_bind(row.cost)
                .push_bind(row.penalty_until)
                .push_bind(row.client_info.as_str());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes everything about `subject`: (buckets, violations).
pub(crate) async fn delete_subject(
    conn: &mut SqliteConnection,
    subject: &str,
) -> Result<(u64, u64)> {
    let buckets = sqlx::query("DELETE FROM token_buckets WHERE subject = ?1")
        .bind(subject)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let violations = sqlx::query("DELETE FROM violations WHERE subject = ?1")
        .bind(subject)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok((buckets, violations))
}

/// Deletes up to `batch` violations older than `before`.
pub(crate) async fn sweep_violations(
    conn: &mut SqliteConnection,
    before: Timestamp,
    batch: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM violations WHERE id IN
         (SELECT id FROM violations WHERE occurred_at < ?1 LIMIT ?2)",
    )
    .bind(before)
    .bind(batch)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Deletes up to `batch` buckets unused since `before`.
pub(crate) async fn sweep_buckets(
    conn: &mut SqliteConnection,
    before: Timestamp,
    batch: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM token_buckets WHERE (subject, limit_name, window_secs) IN
         (SELECT subject, limit_name, window_secs FROM token_buckets
          WHERE updated_at < ?1 LIMIT ?2)",
    )
    .bind(before)
    .bind(batch)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

//! Every statement of the limits facet, for SQLite through both drivers:
//! rusqlite on the caller's thread for the reads a check makes and for
//! shared mode, sqlx on the writer for everything written behind. Times are
//! RFC 3339 text, bound from the vault's clock; nothing here reads SQLite's
//! own clock.

use std::borrow::Cow;

use sqlx::{QueryBuilder, Sqlite as Db, SqliteConnection};

use super::backend::{
    BucketRow, LimitsBackend, SUBJECT, Shared, SharedAllowed, SharedCheck, Stored, ViolationRow,
    Writes, subject_digest,
};
use super::bucket::{Bucket, EPSILON};
use super::types::ViolationRecord;
use crate::core::Core;
use crate::core::feed::{Facet, Record};
use crate::store::Store;
use crate::{Result, Timestamp};

/// Rows per multi-row statement (6 variables each, far below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 100;

/// The limits facet's tables in a SQLite file.
pub(crate) struct Sqlite<'a> {
    core: &'a Core,
    store: &'a Store,
    statements: &'a Statements,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(core: &'a Core, store: &'a Store, statements: &'a Statements) -> Self {
        Sqlite {
            core,
            store,
            statements,
        }
    }
}

/// The shared-mode statement for each number of windows a configured limit
/// has, built once at open: rusqlite finds a prepared statement again by its
/// text, and building the text for every check would cost more than the
/// lookup.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    /// Indexed by the number of windows; empty where no limit has that many.
    shared_check: Vec<String>,
}

impl Statements {
    /// The statements for limits with these numbers of windows.
    pub(crate) fn new(window_counts: impl IntoIterator<Item = usize>) -> Self {
        let mut shared_check = Vec::new();
        for n in window_counts {
            if shared_check.len() <= n {
                shared_check.resize(n + 1, String::new());
            }
            if shared_check[n].is_empty() {
                shared_check[n] = shared_check_sql(n);
            }
        }
        Statements { shared_check }
    }

    /// The shared-mode statement for `windows` windows (built now if no
    /// configured limit has that many).
    fn shared_check(&self, windows: usize) -> Cow<'_, str> {
        match self.shared_check.get(windows) {
            Some(sql) if !sql.is_empty() => Cow::Borrowed(sql),
            _ => Cow::Owned(shared_check_sql(windows)),
        }
    }
}

impl LimitsBackend for Sqlite<'_> {
    async fn load(&self, subject: &str, limit: &str, since: Timestamp) -> Result<Stored> {
        self.store
            .read_here(|conn| load(conn, subject, limit, since))
    }

    async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>> {
        self.store.read_here(|conn| all_violations(conn, subject))
    }

    async fn count_violations_since(&self, since: Timestamp) -> Result<u64> {
        self.store.read_here(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT count(*) FROM violations WHERE occurred_at > ?1")?;
            stmt.query_row([since], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    async fn write(&self, writes: &mut Writes, fill: impl FnOnce(&mut Writes)) -> Result<()> {
        let mut tx = self.store.sqlx_transaction().await?;
        fill(writes);
        upsert_buckets(&mut tx, &writes.buckets).await?;
        insert_violations(&mut tx, &writes.violations).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_now(
        &self,
        writes: &mut Writes,
        fill: impl FnOnce(&mut Writes) + Send,
    ) -> Result<()> {
        self.store
            .write_here(|conn| {
                fill(writes);
                let mut upsert = conn.prepare_cached(UPSERT_BUCKET)?;
                for row in &writes.buckets {
                    upsert.execute((
                        row.subject.as_str(),
                        &*row.limit,
                        row.period_secs,
                        row.bucket.tokens,
                        row.bucket.last_refill,
                    ))?;
                }
                for row in &writes.violations {
                    insert_violation(conn, row)?;
                }
                Ok(())
            })
            .await
    }

    async fn shared_check<T>(
        &self,
        check: &SharedCheck<'_>,
        refused: impl FnOnce(Stored) -> Result<(T, Option<ViolationRow>)>,
    ) -> Result<Shared<T>> {
        // One transaction on the hot writer, on this thread (no sqlx thread
        // hops): the check statement, and on a refusal the state it saw and
        // the violation, so that the decision and the record see one state.
        let sql = self.statements.shared_check(check.windows.len());
        self.store
            .write_here(|conn| {
                if let Some(allowed) = run_shared_check(conn, &sql, check)? {
                    return Ok(Shared::Allowed(allowed));
                }
                let stored = load(conn, check.subject, check.limit, check.since)?;
                let (outcome, violation) = refused(stored)?;
                if let Some(row) = &violation {
                    insert_violation(conn, row)?;
                }
                Ok(Shared::Refused(outcome))
            })
            .await
    }

    async fn delete_subject(&self, subject: &str, holding: impl FnOnce()) -> Result<(u64, u64)> {
        let mut tx = self.store.sqlx_transaction().await?;
        holding();
        let deleted = delete_subject(self.core, &mut tx, subject).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn sweep_violations(&self, before: Timestamp, batch: i64) -> Result<u64> {
        let mut tx = self.store.sqlx_transaction().await?;
        let n = sweep_violations(&mut tx, before, batch).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn sweep_buckets(&self, before: Timestamp, batch: i64) -> Result<u64> {
        let mut tx = self.store.sqlx_transaction().await?;
        let n = sweep_buckets(&mut tx, before, batch).await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// The shared-mode check for a limit of `windows` windows: one statement
/// that refills every window's bucket to now (creating full ones), and
/// writes them with the cost taken only if the cost fits every window and no
/// penalty is running. It returns the new rows, or no row at all when the
/// request is refused (then nothing was written).
///
/// Parameters: ?1 subject, ?2 limit, ?3 now (text), ?4 now (ms), ?5 cost,
/// ?6 since when violations count (text), then (window_secs, capacity, rate per ms) for each
/// window from ?7. The refill is [`WindowSpec::refill`](super::bucket::WindowSpec::refill), in SQL, and
/// `last_refill_at` never moves back (text order is time order).
fn shared_check_sql(windows: usize) -> String {
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

/// Runs the shared-mode check `sql` (on the hot writer, inside its
/// transaction); `Some` when allowed.
fn run_shared_check(
    conn: &rusqlite::Connection,
    sql: &str,
    check: &SharedCheck<'_>,
) -> rusqlite::Result<Option<SharedAllowed>> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.raw_bind_parameter(1, check.subject)?;
    stmt.raw_bind_parameter(2, check.limit)?;
    stmt.raw_bind_parameter(3, check.now)?;
    stmt.raw_bind_parameter(4, check.now.as_millis())?;
    stmt.raw_bind_parameter(5, check.cost)?;
    stmt.raw_bind_parameter(6, check.since)?;
    for (i, w) in check.windows.iter().enumerate() {
        let p = 7 + 3 * i;
        stmt.raw_bind_parameter(p, w.period_secs)?;
        stmt.raw_bind_parameter(p + 1, w.capacity)?;
        stmt.raw_bind_parameter(p + 2, w.rate_per_ms)?;
    }
    let mut rows = stmt.raw_query();
    let mut windows = Vec::with_capacity(check.windows.len());
    let mut recent = 0i64;
    while let Some(row) = rows.next()? {
        windows.push((row.get(0)?, row.get(1)?));
        recent = row.get(2)?;
    }
    Ok((!windows.is_empty()).then(|| (windows, usize::try_from(recent).unwrap_or(0))))
}

/// A subject's buckets of one limit and its violations of it since `since`.
pub(super) fn load(
    conn: &rusqlite::Connection,
    subject: &str,
    limit: &str,
    since: Timestamp,
) -> rusqlite::Result<Stored> {
    let mut stmt = conn.prepare_cached(
        "SELECT window_secs, tokens, last_refill_at FROM token_buckets
         WHERE subject = ?1 AND limit_name = ?2",
    )?;
    let buckets = stmt
        .query_map((subject, limit), |r| {
            Ok((
                r.get(0)?,
                Bucket {
                    tokens: r.get(1)?,
                    last_refill: r.get(2)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT occurred_at, penalty_until FROM violations
         WHERE subject = ?1 AND occurred_at > ?3 AND limit_name = ?2",
    )?;
    let violations = stmt
        .query_map((subject, limit, since), |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Stored {
        buckets,
        violations,
    })
}

/// Every violation of a subject, oldest first.
pub(super) fn all_violations(
    conn: &rusqlite::Connection,
    subject: &str,
) -> rusqlite::Result<Vec<ViolationRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT limit_name, occurred_at, cost, penalty_until FROM violations
         WHERE subject = ?1 ORDER BY occurred_at, id",
    )?;
    stmt.query_map([subject], |r| {
        Ok(ViolationRecord {
            limit: r.get(0)?,
            occurred_at: r.get(1)?,
            cost: r.get(2)?,
            penalty_until: r.get(3)?,
        })
    })?
    .collect()
}

/// Records one violation (shared mode, on the hot writer).
fn insert_violation(conn: &rusqlite::Connection, row: &ViolationRow) -> rusqlite::Result<()> {
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

/// What a bucket row written over a stored one changes.
macro_rules! replace_state {
    () => {
        "DO UPDATE SET tokens = excluded.tokens, last_refill_at = excluded.last_refill_at,
             updated_at = excluded.updated_at"
    };
}

/// Writes one bucket row (?1 subject, ?2 limit, ?3 window, ?4 tokens, ?5
/// refilled at), replacing the stored state if it exists.
const UPSERT_BUCKET: &str = concat!(
    "INSERT INTO token_buckets
         (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?5)
     ON CONFLICT (subject, limit_name, window_secs) ",
    replace_state!()
);

/// Writes bucket rows, replacing the stored state of those that exist.
async fn upsert_buckets(conn: &mut SqliteConnection, rows: &[BucketRow]) -> Result<()> {
    insert_buckets(conn, rows, replace_state!()).await?;
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
        let mut qb = QueryBuilder::<Db>::new(
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
        written += crate::store::one_off(&mut qb)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(written)
}

/// Inserts violations, `ROWS_PER_STATEMENT` at a time.
pub(crate) async fn insert_violations(
    conn: &mut SqliteConnection,
    rows: &[ViolationRow],
) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Db>::new(
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
        crate::store::one_off(&mut qb).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes everything about `subject` on `conn` (inside the caller's
/// transaction) and publishes the reset to the change feed: (buckets,
/// violations).
pub(crate) async fn delete_subject(
    core: &Core,
    conn: &mut SqliteConnection,
    subject: &str,
) -> Result<(u64, u64)> {
    let digest = subject_digest(core, subject)?.to_be_bytes();
    let record = Record {
        kind: SUBJECT,
        target: &digest,
    };
    core.publish(conn, Facet::Limits, &[record]).await?;
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
async fn sweep_violations(
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
async fn sweep_buckets(conn: &mut SqliteConnection, before: Timestamp, batch: i64) -> Result<u64> {
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

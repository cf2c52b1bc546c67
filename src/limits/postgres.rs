//! Every statement of the limits facet on PostgreSQL (feature `postgres`).
//! Implements [`LimitsBackend`] with the file's semantics for any number of
//! instances:
//!
//! - **A shared-mode check is one statement in autocommit.** For a limit of
//!   one window ([`CHECK_ONE`]) it is an upsert of the bucket whose
//!   `DO UPDATE … WHERE` refills and takes on the row's newest state;
//!   concurrent checks of existing buckets first share one statement
//!   (`coalesce.rs`), and only those it did not take run it. For
//!   several ([`CHECK`]) it locks the subject's buckets of the limit (`FOR
//!   UPDATE`, which reads their newest state), refills them to now and takes
//!   the cost from every window, or from none. Concurrent checks of one
//!   subject take turns on the row locks; the total allowed never exceeds
//!   what the buckets hold.
//! - A subject's first check of a limit of several windows finds no bucket
//!   to lock: full buckets are inserted (`ON CONFLICT DO NOTHING`, so
//!   instances racing to make them make them once) and the check runs
//!   again.
//! - A refusal reads the stored state and records the violation; a
//!   violation's `client_info` is sealed with its id as associated data.
//! - Sweeps take their batch with `FOR UPDATE SKIP LOCKED`.
//! - A reset publishes the subject to the change feed in its transaction:
//!   every other instance forgets the subject's buckets in memory.

use std::collections::BTreeMap;

use sqlx::Row as _;

use super::backend::{
    BucketRow, LimitsBackend, SUBJECT, Shared, SharedAllowed, SharedCheck, Stored, ViolationRow,
    Writes, subject_digest,
};
use super::bucket::{Bucket, EPSILON};
use super::coalesce::{Coalesced, Coalescer};
use super::types::ViolationRecord;
use crate::core::Core;
use crate::core::feed::{Facet, Record};
use crate::postgres::Database;
use crate::postgres::reseal::Sealed;
use crate::{Result, Timestamp};

/// The sealed column, for re-sealing under a new key.
pub(crate) const SEALED: &[Sealed] = &[Sealed {
    table: "violations",
    key: "id",
    uuid_key: true,
    column: "client_info",
    aad: |id| id.as_bytes().to_vec(),
}];

/// The limits tables of a PostgreSQL vault.
pub(crate) struct Postgres<'a> {
    core: &'a Core,
    db: &'a Database,
    coalescer: &'a Coalescer,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(core: &'a Core, db: &'a Database, coalescer: &'a Coalescer) -> Self {
        Postgres {
            core,
            db,
            coalescer,
        }
    }
}

/// Deletes `subject`'s buckets and violations inside the caller's
/// transaction on `conn` (a reset, or a user's erasure), and publishes it:
/// every other instance forgets the subject's buckets in memory. How many
/// buckets and violations went.
pub(crate) async fn delete_subject(
    core: &Core,
    conn: &mut sqlx::PgConnection,
    subject: &str,
) -> Result<(u64, u64)> {
    let digest = subject_digest(core, subject)?.to_be_bytes();
    let record = Record {
        kind: SUBJECT,
        target: &digest,
    };
    core.publish_pg(&mut *conn, Facet::Limits, &[record])
        .await?;
    // Locked in key order first, as a check locks them (see `CHECK`).
    let buckets = sqlx::query(
        "DELETE FROM token_buckets WHERE (subject, limit_name, window_secs) IN (
             SELECT subject, limit_name, window_secs FROM token_buckets WHERE subject = $1
             ORDER BY limit_name COLLATE \"C\", window_secs FOR UPDATE)",
    )
    .bind(subject)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let violations = sqlx::query("DELETE FROM violations WHERE subject = $1")
        .bind(subject)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok((buckets, violations))
}

/// The shared-mode check. Parameters: $1 subject, $2 limit, $3 now, $4 now
/// in ms, $5 cost, $6 since when violations count, then one array per
/// window column: $7 window_secs, $8 capacity, $9 rate per ms. It updates
/// the buckets only if every window has one, the cost fits every window and
/// no penalty is running. It returns the updated rows (window, tokens,
/// recent violations, buckets found), or one row of NULLs and the number
/// of buckets it found: all of them for a refusal, fewer for a subject that
/// has none yet. The refill is
/// [`WindowSpec::refill`](super::bucket::WindowSpec::refill) in SQL, and
/// `last_refill_at` never moves back. Buckets are locked in key order
/// (`subject`, `limit_name`, `window_secs`), as [`delete_subject`] locks
/// them, so that a check and a reset or erasure never deadlock.
static CHECK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH v(w, cap, rate) AS (SELECT * FROM unnest($7::bigint[], $8::float8[], $9::float8[])),
         cur AS (
             SELECT b.window_secs AS w,
                 least(v.cap, b.tokens + greatest(0::float8,
                     ($4 - round(extract(epoch FROM b.last_refill_at) * 1000))::float8) * v.rate)
                     AS tokens,
                 greatest(b.last_refill_at, $3) AS last
             FROM v JOIN token_buckets b
               ON b.subject = $1 AND b.limit_name = $2 AND b.window_secs = v.w
             ORDER BY b.window_secs
             FOR UPDATE OF b
         ),
         upd AS (
             UPDATE token_buckets t
             SET tokens = greatest(0::float8, cur.tokens - $5), last_refill_at = cur.last,
                 updated_at = $3
             FROM cur
             WHERE t.subject = $1 AND t.limit_name = $2 AND t.window_secs = cur.w
               AND (SELECT count(*) FROM cur) = cardinality($7::bigint[])
               AND NOT EXISTS (SELECT 1 FROM cur WHERE cur.tokens + {EPSILON:e} < $5)
               AND NOT EXISTS (SELECT 1 FROM violations
                               WHERE subject = $1 AND limit_name = $2
                                 AND occurred_at > $6 AND penalty_until > $3)
             RETURNING t.window_secs, t.tokens
         )
         SELECT upd.window_secs, upd.tokens,
             (SELECT count(*) FROM violations
              WHERE subject = $1 AND limit_name = $2 AND occurred_at > $6),
             (SELECT count(*) FROM cur)
         FROM upd
         UNION ALL
         SELECT NULL, NULL, NULL, (SELECT count(*) FROM cur)
         WHERE NOT EXISTS (SELECT 1 FROM upd)"
    )
});

/// [`CHECK`] for a limit of one window: one upsert of the one bucket, the
/// refill and the take in its `DO UPDATE … WHERE` (which sees the row's
/// newest state, locked), a full bucket inserted on first use. The same
/// parameters, each window array's element alone: $7 window_secs, $8
/// capacity, $9 rate per ms. It returns the written row, or none if refused.
static CHECK_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let refilled = "least($8, token_buckets.tokens + greatest(0::float8,
         ($4 - round(extract(epoch FROM token_buckets.last_refill_at) * 1000))::float8) * $9)";
    let no_penalty = "NOT EXISTS (SELECT 1 FROM violations
         WHERE subject = $1 AND limit_name = $2 AND occurred_at > $6 AND penalty_until > $3)";
    format!(
        "INSERT INTO token_buckets
             (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
         SELECT $1, $2, $7, greatest(0::float8, $8 - $5), $3, $3
         WHERE $8 + {EPSILON:e} >= $5 AND {no_penalty}
         ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
             tokens = greatest(0::float8, {refilled} - $5),
             last_refill_at = greatest(token_buckets.last_refill_at, $3),
             updated_at = $3
         WHERE {refilled} + {EPSILON:e} >= $5 AND {no_penalty}
         RETURNING window_secs, tokens,
             (SELECT count(*) FROM violations
              WHERE subject = $1 AND limit_name = $2 AND occurred_at > $6),
             1::bigint"
    )
});

/// What [`CHECK`] answered.
enum Taken {
    Allowed(SharedAllowed),
    Refused,
    /// Some window has no bucket yet.
    NoBuckets,
}

/// Writes bucket rows given as arrays, replacing stored state.
const UPSERT: &str = "INSERT INTO token_buckets
     (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
 SELECT s, l, w, t, r, r
 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::timestamptz[])
     AS u(s, l, w, t, r)
 ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET tokens = excluded.tokens,
     last_refill_at = excluded.last_refill_at, updated_at = excluded.updated_at";

/// Inserts violations given as arrays; `client_info` arrives sealed.
const INSERT_VIOLATIONS: &str = "INSERT INTO violations
     (id, subject, limit_name, occurred_at, cost, penalty_until, client_info)
 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[],
     $6::timestamptz[], $7::bytea[])";

impl Postgres<'_> {
    /// Upserts `buckets` (the last row of a key wins: one statement may not
    /// update a row twice) and inserts `violations`, on `conn`.
    async fn write_on(
        &self,
        conn: &mut sqlx::PgConnection,
        buckets: &[BucketRow],
        violations: &[ViolationRow],
    ) -> Result<()> {
        if !buckets.is_empty() {
            // In key order (bytes, as `COLLATE "C"`), as every statement
            // locking buckets takes them: two instances flushing the same
            // subjects then wait for each other instead of deadlocking.
            let mut last: BTreeMap<(&str, &str, i64), &BucketRow> = BTreeMap::new();
            for row in buckets {
                last.insert((row.subject.as_str(), &*row.limit, row.period_secs), row);
            }
            let rows: Vec<&BucketRow> = last.into_values().collect();
            sqlx::query(UPSERT)
                .bind(rows.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| &*r.limit).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.period_secs).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.bucket.tokens).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|r| r.bucket.last_refill)
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *conn)
                .await?;
        }
        if !violations.is_empty() {
            let sealer = self.db.sealer().table("violations");
            let ids: Vec<uuid::Uuid> = violations.iter().map(|_| uuid::Uuid::now_v7()).collect();
            let sealed = violations
                .iter()
                .zip(&ids)
                .map(|(v, id)| sealer.seal(id.to_string().as_bytes(), v.client_info.as_bytes()))
                .collect::<Result<Vec<_>>>()?;
            sqlx::query(INSERT_VIOLATIONS)
                .bind(ids)
                .bind(
                    violations
                        .iter()
                        .map(|v| v.subject.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(violations.iter().map(|v| &*v.limit).collect::<Vec<_>>())
                .bind(violations.iter().map(|v| v.occurred_at).collect::<Vec<_>>())
                .bind(violations.iter().map(|v| v.cost).collect::<Vec<_>>())
                .bind(
                    violations
                        .iter()
                        .map(|v| v.penalty_until)
                        .collect::<Vec<_>>(),
                )
                .bind(sealed)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Runs [`CHECK_ONE`] for a limit of one window, alone or when the
    /// next coalesced statement (`coalesce.rs`) did not take it; a limit of
    /// several windows runs [`CHECK`].
    async fn try_take(&self, check: &SharedCheck<'_>) -> Result<Taken> {
        let query = |sql: &'static str| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(check.subject)
                .bind(check.limit)
                .bind(check.now)
                .bind(check.now.as_millis())
                .bind(check.cost)
                .bind(check.since)
        };
        let rows = match check.windows {
            [one] => {
                let _alone = match self.coalescer.take(self.db.pool(), check, one).await? {
                    Coalesced::Taken(allowed) => return Ok(Taken::Allowed(allowed)),
                    Coalesced::NotTaken => None,
                    Coalesced::Alone(alone) => Some(alone),
                };
                let rows = query(CHECK_ONE.as_str())
                    .bind(one.period_secs)
                    .bind(one.capacity)
                    .bind(one.rate_per_ms)
                    .fetch_all(self.db.pool())
                    .await?;
                if rows.is_empty() {
                    return Ok(Taken::Refused);
                }
                rows
            }
            windows => {
                query(CHECK.as_str())
                    .bind(windows.iter().map(|w| w.period_secs).collect::<Vec<_>>())
                    .bind(windows.iter().map(|w| w.capacity).collect::<Vec<_>>())
                    .bind(windows.iter().map(|w| w.rate_per_ms).collect::<Vec<_>>())
                    .fetch_all(self.db.pool())
                    .await?
            }
        };
        let mut windows = Vec::with_capacity(rows.len());
        let mut recent = 0i64;
        for row in &rows {
            let Some(window) = row.try_get::<Option<i64>, _>(0)? else {
                let found: i64 = row.try_get(3)?;
                return Ok(
                    if usize::try_from(found).unwrap_or(0) < check.windows.len() {
                        Taken::NoBuckets
                    } else {
                        Taken::Refused
                    },
                );
            };
            windows.push((window, row.try_get(1)?));
            recent = row.try_get(2)?;
        }
        Ok(Taken::Allowed((
            windows,
            usize::try_from(recent).unwrap_or(0),
        )))
    }

    /// Inserts full buckets for the windows of `check` that have none.
    async fn make_buckets(&self, check: &SharedCheck<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO token_buckets
                 (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
             SELECT $1, $2, w, cap, $3, $3 FROM unnest($4::bigint[], $5::float8[]) AS u(w, cap)
             ON CONFLICT (subject, limit_name, window_secs) DO NOTHING",
        )
        .bind(check.subject)
        .bind(check.limit)
        .bind(check.now)
        .bind(
            check
                .windows
                .iter()
                .map(|w| w.period_secs)
                .collect::<Vec<_>>(),
        )
        .bind(check.windows.iter().map(|w| w.capacity).collect::<Vec<_>>())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

impl LimitsBackend for Postgres<'_> {
    async fn load(&self, subject: &str, limit: &str, since: Timestamp) -> Result<Stored> {
        load(&mut *self.db.pool().acquire().await?, subject, limit, since).await
    }

    async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>> {
        violations_of(self.db.pool(), subject).await
    }

    async fn count_violations_since(&self, since: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM violations WHERE occurred_at > $1")
            .bind(since)
            .fetch_one(self.db.pool())
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn write(&self, writes: &mut Writes, fill: impl FnOnce(&mut Writes)) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        fill(writes);
        self.write_on(&mut tx, &writes.buckets, &writes.violations)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_now(
        &self,
        writes: &mut Writes,
        fill: impl FnOnce(&mut Writes) + Send,
    ) -> Result<()> {
        self.write(writes, fill).await
    }

    async fn shared_check<T>(
        &self,
        check: &SharedCheck<'_>,
        refused: impl FnOnce(Stored) -> Result<(T, Option<ViolationRow>)>,
    ) -> Result<Shared<T>> {
        // A reset between making the buckets and the check deletes them
        // again: make them again (resets are an operator's, and rare).
        let mut taken = self.try_take(check).await?;
        for _ in 0..3 {
            if !matches!(taken, Taken::NoBuckets) {
                break;
            }
            self.make_buckets(check).await?;
            taken = self.try_take(check).await?;
        }
        match taken {
            Taken::Allowed(allowed) => Ok(Shared::Allowed(allowed)),
            Taken::NoBuckets => Err(crate::Error::Internal {
                detail: format!(
                    "the rate-limit buckets of {:?} vanished three times as they were made",
                    check.subject
                ),
            }),
            Taken::Refused => {
                let stored = self.load(check.subject, check.limit, check.since).await?;
                let (outcome, violation) = refused(stored)?;
                if let Some(row) = violation {
                    let mut conn = self.db.pool().acquire().await?;
                    self.write_on(&mut conn, &[], std::slice::from_ref(&row))
                        .await?;
                }
                Ok(Shared::Refused(outcome))
            }
        }
    }

    async fn delete_subject(&self, subject: &str, holding: impl FnOnce()) -> Result<(u64, u64)> {
        let mut tx = self.db.pool().begin().await?;
        holding();
        let deleted = delete_subject(self.core, &mut tx, subject).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn sweep_violations(&self, before: Timestamp, batch: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM violations WHERE id IN
             (SELECT id FROM violations WHERE occurred_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before)
        .bind(batch)
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }

    async fn sweep_buckets(&self, before: Timestamp, batch: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM token_buckets WHERE (subject, limit_name, window_secs) IN
             (SELECT subject, limit_name, window_secs FROM token_buckets
              WHERE updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before)
        .bind(batch)
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }
}

/// Opens every violation's sealed `client_info` (`statevault check`).
pub(crate) async fn check_sealed(db: &Database) -> Result<crate::Check> {
    db.open_every_by_id(
        "sealed_violations",
        "SELECT id::text, client_info FROM violations WHERE id > $1::uuid ORDER BY id LIMIT $2",
        "violations",
        "violation",
        "client_info",
    )
    .await
}

/// A subject's buckets of one limit and its violations of it since `since`.
pub(super) async fn load(
    conn: &mut sqlx::PgConnection,
    subject: &str,
    limit: &str,
    since: Timestamp,
) -> Result<Stored> {
    let buckets = sqlx::query(
        "SELECT window_secs, tokens, last_refill_at FROM token_buckets
         WHERE subject = $1 AND limit_name = $2",
    )
    .bind(subject)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            Bucket {
                tokens: r.try_get(1)?,
                last_refill: r.try_get(2)?,
            },
        ))
    })
    .collect::<Result<_>>()?;
    let violations = sqlx::query(
        "SELECT occurred_at, penalty_until FROM violations
         WHERE subject = $1 AND limit_name = $2 AND occurred_at > $3",
    )
    .bind(subject)
    .bind(limit)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_>>()?;
    Ok(Stored {
        buckets,
        violations,
    })
}

/// Every violation of a subject, oldest first, read with `conn` (the pool,
/// or the transaction of a user's export).
pub(super) async fn violations_of<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    subject: &str,
) -> Result<Vec<ViolationRecord>> {
    sqlx::query(
        "SELECT limit_name, occurred_at, cost, penalty_until FROM violations
         WHERE subject = $1 ORDER BY occurred_at, id",
    )
    .bind(subject)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(ViolationRecord {
            limit: r.try_get(0)?,
            occurred_at: r.try_get(1)?,
            cost: r.try_get(2)?,
            penalty_until: r.try_get(3)?,
        })
    })
    .collect()
}

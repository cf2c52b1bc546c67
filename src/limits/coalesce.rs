//! Shared-mode checks coalesced on PostgreSQL (feature `postgres`): checks
//! of one-window limits that arrive while a statement is in flight wait for
//! the next, which takes every one of them (one per bucket, up to
//! [`MOST`]) in a single statement: one round trip and one commit for many
//! callers, where each check alone costs the server a statement and a
//! commit. Each check is still one atomic row update, in autocommit: the
//! statement locks the buckets in key order, refills each to its check's
//! time and takes its cost only if it fits and no penalty runs.
//!
//! A check the statement does not take (its bucket does not exist yet, the
//! cost does not fit, a penalty runs, or the statement failed) is answered
//! [`Coalesced::NotTaken`], and its caller runs the one-check statement,
//! which inserts a first bucket, or refuses and records the violation, as
//! before. (A connection lost after the server committed a statement makes
//! its checks run again: a bucket may lose a check's cost twice, never
//! allow more than it holds.)
//!
//! A check that finds no other check of this vault in flight runs alone, at
//! once ([`Coalesced::Alone`]): one caller pays nothing for coalescing.
//! Others queue; while fewer than [`STATEMENTS`] statements are in flight,
//! a caller that queues starts a task of the runtime's that sends
//! statements until the queue is empty. A caller that gives up waiting (its
//! future dropped) never strands the queue, and no caller waits on
//! another's turn to end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::Row as _;
use sqlx::postgres::PgPool;
use tokio::sync::oneshot;

use super::backend::{SharedAllowed, SharedCheck};
use super::bucket::{EPSILON, WindowSpec};
use crate::core::lock;
use crate::{Error, Result, Timestamp};

/// The most checks one statement takes.
const MOST: usize = 256;
/// The most coalesced statements in flight at once.
const STATEMENTS: usize = 4;

/// The queue of checks waiting for a statement.
#[derive(Default)]
pub(crate) struct Coalescer {
    queue: Arc<Mutex<Queue>>,
    /// Checks running alone now.
    alone: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Tasks sending statements.
    running: usize,
}

/// What [`Coalescer::take`] did with a check.
pub(crate) enum Coalesced<'a> {
    /// Its cost was taken: the window's tokens left, recent violations.
    Taken(SharedAllowed),
    /// Not taken: the caller runs its check alone.
    NotTaken,
    /// Nothing else was in flight: the caller runs its check alone, at
    /// once, holding this while it does.
    Alone(Alone<'a>),
}

/// A check running alone; others queue meanwhile.
pub(crate) struct Alone<'a>(&'a AtomicUsize);

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One check of a one-window limit, and where its answer goes.
struct Job {
    subject: String,
    limit: String,
    window: i64,
    capacity: f64,
    rate_per_ms: f64,
    cost: f64,
    now: Timestamp,
    since: Timestamp,
    reply: oneshot::Sender<Answer>,
}

/// What the statement did with one check: `Some` what it took, `None`
/// nothing (the caller runs its check alone), or an error when it took
/// the cost but its answer could not be read (never a second take).
type Answer = std::result::Result<Option<SharedAllowed>, String>;

impl Coalescer {
    /// Runs `check` of a limit whose one window is `window` alone, or takes
    /// its cost in the next statement (see the module docs).
    pub(crate) async fn take(
        &self,
        pool: &PgPool,
        check: &SharedCheck<'_>,
        window: &WindowSpec,
    ) -> Result<Coalesced<'_>> {
        if self.alone.fetch_add(1, Ordering::AcqRel) == 0 && lock(&self.queue).running == 0 {
            return Ok(Coalesced::Alone(Alone(&self.alone)));
        }
        self.alone.fetch_sub(1, Ordering::AcqRel);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            subject: check.subject.to_owned(),
            limit: check.limit.to_owned(),
            window: window.period_secs,
            capacity: window.capacity,
            rate_per_ms: window.rate_per_ms,
            cost: check.cost,
            now: check.now,
            since: check.since,
            reply,
        };
        let start = {
            let mut queue = lock(&self.queue);
            queue.jobs.push(job);
            let start = queue.running < STATEMENTS;
            queue.running += usize::from(start);
            start
        };
        if start {
            let (queue, pool) = (self.queue.clone(), pool.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&queue) {
                    send(&pool, batch).await;
                }
            });
        }
        match answer.await {
            Ok(Ok(Some(allowed))) => Ok(Coalesced::Taken(allowed)),
            Ok(Ok(None)) | Err(_) => Ok(Coalesced::NotTaken),
            Ok(Err(detail)) => Err(Error::Internal {
                detail: format!("a shared check was taken but its answer was lost: {detail}"),
            }),
        }
    }
}

/// Takes the oldest queued checks, one per bucket, at most [`MOST`]; `None`
/// when nothing is queued, which ends the turn.
fn next_batch(queue: &Mutex<Queue>) -> Option<Vec<Job>> {
    let mut queue = lock(queue);
    if queue.jobs.is_empty() {
        queue.running -= 1;
        return None;
    }
    let mut seen = HashSet::new();
    let mut batch = Vec::new();
    let mut kept = Vec::new();
    for job in queue.jobs.drain(..) {
        if batch.len() < MOST && seen.insert((job.subject.clone(), job.limit.clone(), job.window)) {
            batch.push(job);
        } else {
            kept.push(job);
        }
    }
    queue.jobs = kept;
    Some(batch)
}

/// The coalesced check. `$1`…`$9`: one array per check column; `$10` the
/// checks' positions. It locks the checks' buckets in key order (as every
/// statement that locks buckets does), refills each to its check's time,
/// and updates those where the cost fits and no penalty runs; it returns
/// their positions, windows, tokens and recent violations.
static COALESCED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH c AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[],
                 $5::float8[], $6::float8[], $7::timestamptz[], $8::bigint[],
                 $9::timestamptz[], $10::int4[])
                 AS c(s, l, w, cap, rate, cost, now, ms, since, i)
         ),
         cur AS (
             SELECT c.i, b.subject, b.limit_name, b.window_secs, c.cost, c.now, c.since,
                 least(c.cap, b.tokens + greatest(0::float8,
                     (c.ms - round(extract(epoch FROM b.last_refill_at) * 1000))::float8) * c.rate)
                     AS tokens,
                 greatest(b.last_refill_at, c.now) AS last
             FROM c JOIN token_buckets b
               ON b.subject = c.s AND b.limit_name = c.l AND b.window_secs = c.w
             ORDER BY b.subject COLLATE \"C\", b.limit_name COLLATE \"C\", b.window_secs
             FOR UPDATE OF b
         ),
         ok AS (
             SELECT * FROM cur
             WHERE cur.tokens + {EPSILON:e} >= cur.cost
               AND NOT EXISTS (SELECT 1 FROM violations v
                               WHERE v.subject = cur.subject AND v.limit_name = cur.limit_name
                                 AND v.occurred_at > cur.since AND v.penalty_until > cur.now)
         )
         UPDATE token_buckets t
         SET tokens = greatest(0::float8, ok.tokens - ok.cost), last_refill_at = ok.last,
             updated_at = ok.now
         FROM ok
         WHERE t.subject = ok.subject AND t.limit_name = ok.limit_name
           AND t.window_secs = ok.window_secs
         RETURNING ok.i, t.window_secs, t.tokens,
             (SELECT count(*) FROM violations v
              WHERE v.subject = ok.subject AND v.limit_name = ok.limit_name
                AND v.occurred_at > ok.since)"
    )
});

/// Sends one statement for `batch` and answers each check.
async fn send(pool: &PgPool, batch: Vec<Job>) {
    let answered = sqlx::query(sqlx::AssertSqlSafe(COALESCED.as_str()))
        .bind(batch.iter().map(|j| j.subject.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.limit.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.window).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.capacity).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.rate_per_ms).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.cost).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.now).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.now.as_millis()).collect::<Vec<_>>())
        .bind(batch.iter().map(|j| j.since).collect::<Vec<_>>())
        .bind((0..batch.len() as i32).collect::<Vec<_>>())
        .fetch_all(pool)
        .await;
    let mut answers: Vec<Answer> = batch.iter().map(|_| Ok(None)).collect();
    match answered {
        Ok(rows) => {
            for row in rows {
                let read = (|| {
                    let i: i32 = row.try_get(0)?;
                    let window: i64 = row.try_get(1)?;
                    let tokens: f64 = row.try_get(2)?;
                    let recent: i64 = row.try_get(3)?;
                    Ok::<_, sqlx::Error>((i, window, tokens, recent))
                })();
                match read {
                    Ok((i, window, tokens, recent)) => {
                        if let Some(slot) = usize::try_from(i).ok().and_then(|i| answers.get_mut(i))
                        {
                            let recent = usize::try_from(recent).unwrap_or(0);
                            *slot = Ok(Some((vec![(window, tokens)], recent)));
                        }
                    }
                    // Which check the row was is unknown: none of the
                    // unanswered may run again.
                    Err(e) => {
                        for slot in &mut answers {
                            if matches!(slot, Ok(None)) {
                                *slot = Err(e.to_string());
                            }
                        }
                    }
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, checks = batch.len(), "a coalesced shared check failed; each check runs alone");
        }
    }
    for (job, answer) in batch.into_iter().zip(answers) {
        let _ = job.reply.send(answer);
    }
}

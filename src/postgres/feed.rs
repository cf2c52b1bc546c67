//! The change feed on PostgreSQL: the transport that tells a vault what
//! other instances changed (see `core/feed.rs` for what the records mean).
//!
//! A write publishes its records in its own transaction (a row each in
//! `changes`) and `NOTIFY statevault_changes`, which the server delivers at
//! the commit. Each vault runs one listener task (sqlx's `PgListener`, a
//! connection of its own): at each notification it reads the rows after
//! the last it read, keeps them in memory and moves the version, so that a
//! facet's catch-up (on the caller's thread, no statement) finds them. When
//! the listener's connection drops, it reconnects and reads what it missed
//! from the table; if records it never read were trimmed meanwhile, the
//! facets are told that their memory may be stale.
//!
//! `seq`s are taken in order but committed in any order: a record whose
//! transaction commits after a later one's has a `seq` below what was
//! read. The listener asks again for the `seq`s it skipped (for a minute:
//! a rolled-back transaction's never appears), and gives each record a
//! position in its own log as it reads it; readers follow positions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPool};

use crate::Result;
use crate::clock::Timestamp;
use crate::store::feed::{Batch, Change, Facet, Record};

/// Locks the log; the data stays consistent at each step, so a panic
/// elsewhere does not spoil it.
fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The channel every instance listens on.
const CHANNEL: &str = "statevault_changes";

/// Records kept in memory at most: a reader further behind is told that
/// its memory may be stale.
const KEPT: usize = 65_536;

/// One record read from `changes`.
struct Row {
    /// Its position in this log, in the order the listener read it.
    pos: i64,
    seq: i64,
    origin: i64,
    facet: String,
    change: Change,
}

/// What the listener has read. Readers see positions in this log, not
/// `seq`s: a transaction that took its `seq` before another but commits
/// after it appears after it here, where a reader past the later `seq`
/// still finds it.
struct Log {
    rows: VecDeque<Row>,
    /// The oldest position a reader can still get.
    first: i64,
    /// The newest position given out.
    last: i64,
    /// The newest `seq` read (the table's newest when the feed started).
    newest: i64,
    /// `seq`s below `newest` not read yet, and since when: a transaction
    /// that took its `seq` before another may commit after it (or roll
    /// back, and its `seq` never appears). Each read asks for them again
    /// until they turn up or are [`GAP_WAIT`] old.
    gaps: std::collections::BTreeMap<i64, tokio::time::Instant>,
}

/// How long a missing `seq` is asked for again (real time: this is about
/// transactions in flight, not a TTL).
const GAP_WAIT: Duration = Duration::from_secs(60);

/// Missing `seq`s asked for at most (the oldest are given up first).
const GAPS: usize = 1_024;

/// The most `seq`s a notification names.
const NAMED_SEQS: i64 = 300;

/// The feed of a vault on PostgreSQL: what its listener task has read.
pub(crate) struct PgFeed {
    /// Moves whenever the listener reads new rows (or lost some).
    version: AtomicU64,
    log: Mutex<Log>,
}

impl PgFeed {
    /// Moves whenever the listener read new records (the feed's
    /// `Transport::version`).
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// `facet`'s records after `after` not written by `origin`, with the
    /// oldest `seq` still held and the newest read.
    pub(crate) fn read(&self, facet: Facet, after: i64, origin: i64) -> Batch {
        let log = lock(&self.log);
        let changes = log
            .rows
            .iter()
            .filter(|r| r.pos > after && r.origin != origin && r.facet == facet.as_str())
            .map(|r| Change {
                kind: r.change.kind.clone(),
                target: r.change.target.clone(),
            })
            .collect();
        Batch {
            changes,
            first: Some(log.first),
            last: Some(log.last),
        }
    }

    /// The newest position given out.
    pub(crate) fn last(&self) -> i64 {
        lock(&self.log).last
    }

    /// What the next read of `changes` asks for: the `seq`s above the
    /// newest read, and the missing ones below it.
    fn wanted(&self) -> (i64, Vec<i64>) {
        let mut log = lock(&self.log);
        let now = tokio::time::Instant::now();
        log.gaps
            .retain(|_, since| now.duration_since(*since) < GAP_WAIT);
        (log.newest, log.gaps.keys().copied().collect())
    }

    /// The feed from the table's newest record on, and its listener task
    /// (stopped by aborting it), for the vault whose records carry
    /// `origin`. The listener is listening before this returns: nothing
    /// committed after it is missed.
    pub(crate) async fn start(
        pool: &PgPool,
        origin: i64,
    ) -> Result<(Arc<PgFeed>, tokio::task::JoinHandle<()>)> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM changes")
            .fetch_one(pool)
            .await?;

        let feed = Arc::new(PgFeed {
            version: AtomicU64::new(0),
            log: Mutex::new(Log {
                rows: VecDeque::new(),
                first: 1,
                last: 0,
                newest,
                gaps: std::collections::BTreeMap::new(),
            }),
        });
        let task = tokio::spawn(listen(
            Arc::downgrade(&feed),
            pool.clone(),
            listener,
            origin,
        ));
        Ok((feed, task))
    }

    /// Notes this vault's own records, `seqs`, as read without reading them
    /// (nothing applies its own records): the newest `seq` moves past them,
    /// and those between that are not among them are asked for at the next
    /// read.
    fn note_own(&self, seqs: &[i64]) {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        let mut log = lock(&self.log);
        let now = tokio::time::Instant::now();
        for seq in sorted {
            if seq <= log.newest {
                log.gaps.remove(&seq);
                continue;
            }
            let from = (log.newest + 1).max(seq.saturating_sub(GAPS as i64));
            for missing in from..seq {
                log.gaps.insert(missing, now);
            }
            log.newest = seq;
        }
        while log.gaps.len() > GAPS {
            log.gaps.pop_first();
        }
    }

    /// Logs the rows read from the table that it has not logged yet;
    /// `oldest` is the table's oldest `seq`, which says whether records were
    /// trimmed before they were read.
    fn append(&self, rows: Vec<Row>, oldest: Option<i64>) {
        let mut log = lock(&self.log);
        let mut moved = false;
        if oldest.is_some_and(|oldest| oldest > log.newest + 1) {
            // Trimmed before this instance read them: readers lose them.
            log.rows.clear();
            log.first = log.last + 2;
            log.last += 1;
            moved = true;
        }
        let now = tokio::time::Instant::now();
        for mut row in rows {
            if row.seq <= log.newest {
                // A gap filled: logged only if it was still awaited.
                if log.gaps.remove(&row.seq).is_none() {
                    continue;
                }
            } else {
                let from = (log.newest + 1).max(row.seq.saturating_sub(GAPS as i64));
                for missing in from..row.seq {
                    log.gaps.insert(missing, now);
                }
                log.newest = row.seq;
            }
            log.last += 1;
            row.pos = log.last;
            log.rows.push_back(row);
            moved = true;
        }
        while log.gaps.len() > GAPS {
            log.gaps.pop_first();
        }
        while log.rows.len() > KEPT {
            log.rows.pop_front();
            log.first = log.rows.front().map_or(log.last + 1, |r| r.pos);
        }
        drop(log);
        if moved {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The listener task: reads the table after each burst of notifications
/// (one read for all of them) that holds one from another writer, and
/// after a reconnection, until the feed is dropped. A notification of this
/// vault's own records names their `seq`s, which are noted as read without
/// reading them (nothing here applies its own records). The listener holds
/// one of the pool's connections.
async fn listen(
    feed: std::sync::Weak<PgFeed>,
    pool: PgPool,
    mut listener: PgListener,
    origin: i64,
) {
    let own = origin.to_string();
    let mut read = true;
    loop {
        let Some(strong) = feed.upgrade() else { return };
        if read {
            let (after, gaps) = strong.wanted();
            match read_after(&pool, after, &gaps).await {
                Ok((rows, oldest)) => strong.append(rows, oldest),
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed could not read `changes`; it tries again");
                    drop(strong);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        drop(strong);
        read = match listener.try_recv().await {
            Ok(Some(first)) => {
                let mut burst = vec![first];
                burst.extend(std::iter::from_fn(|| listener.next_buffered()));
                let Some(strong) = feed.upgrade() else { return };
                let mut foreign = false;
                for notification in &burst {
                    match own_seqs(notification.payload(), &own) {
                        Some(seqs) => strong.note_own(&seqs),
                        None => foreign = true,
                    }
                }
                foreign
            }
            // The connection dropped: listen on a new one before reading
            // what was missed (above), so that nothing falls in between.
            Ok(None) => match connect(&feed, &pool).await {
                Some(fresh) => {
                    listener = fresh;
                    true
                }
                None => return,
            },
            Err(e) => {
                tracing::warn!(error = %e, "the change feed's listener failed; it tries again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                true
            }
        };
    }
}

/// The `seq`s a notification names, if it is this vault's own (`own` is
/// its origin) and names them all; `None` for another writer's, or one too
/// large to name them.
fn own_seqs(payload: &str, own: &str) -> Option<Vec<i64>> {
    let mut words = payload.split_ascii_whitespace();
    if words.next()? != own {
        return None;
    }
    let seqs: Vec<i64> = words
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    (!seqs.is_empty()).then_some(seqs)
}

/// A new listener on [`CHANNEL`], trying until it connects; `None` once
/// the feed is dropped.
async fn connect(feed: &std::sync::Weak<PgFeed>, pool: &PgPool) -> Option<PgListener> {
    loop {
        feed.upgrade()?;
        let listening = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => return Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "the change feed's listener cannot reconnect yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The rows after `after` and those of `gaps`, oldest first, and the
/// table's oldest `seq`: one statement, so one snapshot and one round trip.
async fn read_after(pool: &PgPool, after: i64, gaps: &[i64]) -> Result<(Vec<Row>, Option<i64>)> {
    let found = sqlx::query(
        "SELECT o.oldest, c.seq, c.origin, c.facet, c.kind, c.target
         FROM (SELECT min(seq) AS oldest FROM changes) AS o
         LEFT JOIN LATERAL (
             SELECT seq, origin, facet, kind, target FROM changes
             WHERE seq > $1 OR seq = ANY($2)
         ) AS c ON true
         ORDER BY c.seq",
    )
    .bind(after)
    .bind(gaps)
    .fetch_all(pool)
    .await?;
    let oldest = match found.first() {
        Some(r) => r.try_get(0)?,
        None => None,
    };
    let mut rows = Vec::with_capacity(found.len());
    for r in &found {
        let Some(seq) = r.try_get::<Option<i64>, _>(1)? else {
            continue;
        };
        rows.push(Row {
            pos: 0,
            seq,
            origin: r.try_get(2)?,
            facet: r.try_get(3)?,
            change: Change {
                kind: r.try_get(4)?,
                target: r.try_get(5)?,
            },
        });
    }
    Ok((rows, oldest))
}

/// Appends `records` inside the caller's transaction on `conn` and
/// notifies every listener (delivered at the commit), the notification
/// naming the writer's `origin` and the records' `seq`s (all of them, or
/// none past [`NAMED_SEQS`]: a payload holds 8000 bytes).
pub(crate) async fn publish(
    conn: &mut sqlx::PgConnection,
    origin: i64,
    at: Timestamp,
    facet: Facet,
    records: &[Record<'_>],
) -> Result<()> {
    // One statement: a data-modifying CTE runs whether or not it is read.
    sqlx::query(
        "WITH written AS (
             INSERT INTO changes (origin, at, facet, kind, target)
             SELECT $1, $2, $3, kind, target FROM unnest($4::text[], $5::bytea[]) AS r(kind, target)
             RETURNING seq
         )
         SELECT pg_notify($6, $1::text || (
             SELECT CASE WHEN count(*) <= $7 THEN ' ' || string_agg(seq::text, ' ') ELSE '' END
             FROM written))",
    )
    .bind(origin)
    .bind(at)
    .bind(facet.as_str())
    .bind(records.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.target).collect::<Vec<_>>())
    .bind(CHANNEL)
    .bind(NAMED_SEQS)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes records older than `before`, keeping the newest. It runs inside
/// publishing transactions, several at once: rows another one is deleting
/// are skipped (`SKIP LOCKED`), never waited for, so two trims cannot
/// deadlock with each other or with the row locks their transactions hold.
pub(crate) async fn trim(conn: &mut sqlx::PgConnection, before: Timestamp) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM changes WHERE seq IN (
             SELECT seq FROM changes WHERE at < $1 AND seq < (SELECT max(seq) FROM changes)
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(before)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

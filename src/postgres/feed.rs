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
    seq: i64,
    origin: i64,
    facet: String,
    change: Change,
}

/// What the listener has read.
struct Log {
    rows: VecDeque<Row>,
    /// The oldest `seq` a reader can still get.
    first: Option<i64>,
    /// The newest `seq` read, or the table's newest when the feed started.
    last: i64,
}

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
            .filter(|r| r.seq > after && r.origin != origin && r.facet == facet.as_str())
            .map(|r| Change {
                kind: r.change.kind.clone(),
                target: r.change.target.clone(),
            })
            .collect();
        Batch {
            changes,
            first: log.first,
            last: Some(log.last),
        }
    }

    /// The newest `seq` read (or the table's newest when the feed started).
    pub(crate) fn last(&self) -> i64 {
        lock(&self.log).last
    }

    /// The feed from the table's newest record on, and its listener task
    /// (stopped by aborting it). The listener is listening before this
    /// returns: nothing committed after it is missed.
    pub(crate) async fn start(pool: &PgPool) -> Result<(Arc<PgFeed>, tokio::task::JoinHandle<()>)> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let last: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM changes")
            .fetch_one(pool)
            .await?;
        let feed = Arc::new(PgFeed {
            version: AtomicU64::new(0),
            log: Mutex::new(Log {
                rows: VecDeque::new(),
                first: Some(last + 1),
                last,
            }),
        });
        let task = tokio::spawn(listen(Arc::downgrade(&feed), pool.clone(), listener));
        Ok((feed, task))
    }

    /// Appends rows read from the table after [`Log::last`]; `oldest` is the
    /// table's oldest `seq`, which says whether records were trimmed unread.
    fn append(&self, rows: Vec<Row>, oldest: Option<i64>) {
        let mut log = lock(&self.log);
        if oldest.is_some_and(|oldest| oldest > log.last + 1) {
            // Trimmed before this instance read them: readers lose them.
            log.rows.clear();
            log.first = oldest;
        }
        if rows.is_empty() {
            return;
        }
        for row in rows {
            log.last = log.last.max(row.seq);
            log.rows.push_back(row);
        }
        while log.rows.len() > KEPT {
            log.rows.pop_front();
            log.first = log.rows.front().map(|r| r.seq);
        }
        drop(log);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// The listener task: reads the table at each notification, and after a
/// reconnection, until the feed is dropped. The listener holds one of the
/// pool's connections.
async fn listen(feed: std::sync::Weak<PgFeed>, pool: PgPool, mut listener: PgListener) {
    loop {
        let Some(strong) = feed.upgrade() else { return };
        let after = strong.last();
        match read_after(&pool, after).await {
            Ok((rows, oldest)) => strong.append(rows, oldest),
            Err(e) => {
                tracing::warn!(error = %e, "the change feed could not read `changes`; it tries again");
                drop(strong);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        drop(strong);
        match listener.try_recv().await {
            Ok(Some(_)) => {}
            // The connection dropped: listen on a new one before reading
            // what was missed (above), so that nothing falls in between.
            Ok(None) => match connect(&feed, &pool).await {
                Some(fresh) => listener = fresh,
                None => return,
            },
            Err(e) => {
                tracing::warn!(error = %e, "the change feed's listener failed; it tries again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
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

/// The rows after `after`, oldest first, and the table's oldest `seq`.
async fn read_after(pool: &PgPool, after: i64) -> Result<(Vec<Row>, Option<i64>)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM changes")
        .fetch_one(&mut *tx)
        .await?;
    let rows = sqlx::query(
        "SELECT seq, origin, facet, kind, target FROM changes WHERE seq > $1 ORDER BY seq",
    )
    .bind(after)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        Ok(Row {
            seq: r.try_get(0)?,
            origin: r.try_get(1)?,
            facet: r.try_get(2)?,
            change: Change {
                kind: r.try_get(3)?,
                target: r.try_get(4)?,
            },
        })
    })
    .collect::<Result<_>>()?;
    tx.commit().await?;
    Ok((rows, oldest))
}

/// Appends `records` inside the caller's transaction on `conn` and
/// notifies every listener (delivered at the commit).
pub(crate) async fn publish(
    conn: &mut sqlx::PgConnection,
    origin: i64,
    at: Timestamp,
    facet: Facet,
    records: &[Record<'_>],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO changes (origin, at, facet, kind, target)
         SELECT $1, $2, $3, kind, target FROM unnest($4::text[], $5::bytea[]) AS r(kind, target)",
    )
    .bind(origin)
    .bind(at)
    .bind(facet.as_str())
    .bind(records.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.target).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes records older than `before`, keeping the newest.
pub(crate) async fn trim(conn: &mut sqlx::PgConnection, before: Timestamp) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM changes WHERE at < $1 AND seq < (SELECT max(seq) FROM changes)")
            .bind(before)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}

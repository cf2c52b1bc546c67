//! The change feed: how what one handle commits reaches the memory of every
//! other handle on the same file (another worker, another process, the CLI).
//!
//! A write that must be seen elsewhere appends, in its own transaction, a
//! small record to the `changes` table ([`Feed::publish`]): which facet,
//! what kind of change, what it names (a token hash, a cache key, a tag, a
//! user, a subject), and the handle that wrote it (`origin`, random per
//! open). Each facet keeps a [`Cursor`]: the last `seq` it applied and the
//! transport's version when it last looked. Before it answers from memory,
//! it catches up ([`Feed::catch_up`]):
//!
//! 1. ask the transport whether anything was committed since it last looked
//!    (for the vault file, the wal-index header in shared memory, which
//!    every commit rewrites: two loads, no statement, no disk read; see
//!    `store/watch.rs`);
//! 2. only if so, read its facet's records after its `seq`, written by
//!    other handles, and hand each one to the facet to drop what it names;
//! 3. if records it had not read were trimmed meanwhile, first tell the
//!    facet that anything it holds may be stale ([`News::Lost`]), then hand
//!    it the records still there.
//!
//! A facet may bound the staleness instead of checking on every call
//! ([`Cursor::new`]'s `every`): then it looks at most once per that period
//! of the vault's clock.
//!
//! Retention: the handle that publishes trims records older than the feed's
//! retention, at most once a second, in the same transaction;
//! [`Vault::sweep`](crate::Vault::sweep) trims too. The newest record is
//! always kept, so that a reader can tell that records were trimmed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::SqliteConnection;

use crate::clock::Timestamp;
pub(crate) use crate::store::feed::{Change, Facet, Record};
use crate::store::{self, Store, feed::Batch};
use crate::{Error, Result};

/// How news of other handles' commits reaches this one. The vault file's
/// transport is [`Store`]: the wal-index header (or `PRAGMA data_version`
/// where there is no shared one), then the `changes` table.
pub(crate) trait Transport {
    /// A value that differs from every earlier one whenever anything was
    /// committed since (a false alarm costs one read; a miss is a bug).
    fn version(&self) -> Result<u64>;

    /// `facet`'s records after `after` not written by `origin`, oldest
    /// first, with the feed's first and last `seq`, from one snapshot.
    fn read(&self, facet: Facet, after: i64, origin: i64) -> Result<Batch>;

    /// The newest `seq` (0 when nothing was ever published).
    fn last(&self) -> Result<i64>;
}

impl Transport for Store {
    fn version(&self) -> Result<u64> {
        self.commit_version()
    }

    fn read(&self, facet: Facet, after: i64, origin: i64) -> Result<Batch> {
        self.feed_read(facet, after, origin)
    }

    fn last(&self) -> Result<i64> {
        self.feed_last()
    }
}

/// A vault on PostgreSQL hears of other instances' commits from its
/// listener task, which keeps what it read in memory.
#[cfg(feature = "postgres")]
impl Transport for crate::postgres::feed::PgFeed {
    #[inline]
    fn version(&self) -> Result<u64> {
        Ok(crate::postgres::feed::PgFeed::version(self))
    }

    fn read(&self, facet: Facet, after: i64, origin: i64) -> Result<Batch> {
        Ok(crate::postgres::feed::PgFeed::read(
            self, facet, after, origin,
        ))
    }

    fn last(&self) -> Result<i64> {
        Ok(crate::postgres::feed::PgFeed::last(self))
    }
}

/// What a facet is told to apply when it catches up.
pub(crate) enum News<'a> {
    /// A record another handle published.
    Change(&'a Change),
    /// Records this cursor had not read were trimmed: anything the facet
    /// holds in memory may be stale.
    Lost,
}

/// The feed as one handle sees it.
pub(crate) struct Feed {
    /// Marks this handle's records, which it skips when it reads.
    origin: i64,
    /// The newest `seq` when the schema was found current; `-1` before (the
    /// table may not exist yet, and there is nothing to catch up on).
    start: AtomicI64,
    retention: Duration,
    /// When this handle last trimmed (milliseconds of the vault's clock).
    trimmed_at: AtomicI64,
}

/// `Cursor::applied` before the first read: no transport gives it (the
/// wal-index version is `iChange << 32 | mxFrame`, and `mxFrame` never
/// reaches `u32::MAX` frames).
const NEVER: u64 = u64::MAX;

/// How often the publisher trims, at most.
const TRIM_EVERY_MS: i64 = 1_000;

impl Feed {
    /// A feed for a new handle, keeping records for `retention`.
    pub(crate) fn new(retention: Duration) -> Result<Feed> {
        let origin = getrandom::u64().map_err(|e| Error::Internal {
            detail: format!("no randomness for the change feed's origin: {e}"),
        })?;
        Ok(Feed {
            origin: origin.cast_signed(),
            start: AtomicI64::new(-1),
            retention,
            trimmed_at: AtomicI64::new(i64::MIN),
        })
    }

    /// The mark of this handle's records.
    #[cfg(feature = "postgres")]
    pub(crate) fn origin(&self) -> i64 {
        self.origin
    }

    /// Starts reading, from the newest record on: what was committed before
    /// this handle held anything in memory needs no applying. Call once the
    /// schema is current.
    pub(crate) fn start(&self, transport: &impl Transport) -> Result<()> {
        let last = transport.last()?;
        let _ = self
            .start
            .compare_exchange(-1, last, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }

    /// Appends `records` inside the caller's write transaction on `conn`,
    /// and trims the feed there when it is due. Before the schema is
    /// current (a vault opened without migrating) there may be no `changes`
    /// table to write to: nothing is published.
    pub(crate) async fn publish(
        &self,
        conn: &mut SqliteConnection,
        at: Timestamp,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        if !self.publishing(records) {
            return Ok(());
        }
        store::feed::publish(conn, self.origin, at, facet, records).await?;
        if self.trim_due(at) {
            self.trim(conn, at).await?;
        }
        Ok(())
    }

    /// [`Feed::publish`] on the hot writer's connection, inside the
    /// caller's write there.
    pub(crate) fn publish_here(
        &self,
        conn: &rusqlite::Connection,
        at: Timestamp,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        if !self.publishing(records) {
            return Ok(());
        }
        store::feed::publish_here(conn, self.origin, at, facet, records)?;
        if self.trim_due(at) {
            store::feed::trim_here(conn, self.cutoff(at))?;
        }
        Ok(())
    }

    /// [`Feed::publish`] inside the caller's transaction on a PostgreSQL
    /// connection, with a `NOTIFY` that wakes every instance's listener at
    /// the commit.
    #[cfg(feature = "postgres")]
    pub(crate) async fn publish_pg(
        &self,
        conn: &mut sqlx::PgConnection,
        at: Timestamp,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        if !self.publishing(records) {
            return Ok(());
        }
        crate::postgres::feed::publish(conn, self.origin, at, facet, records).await?;
        if self.trim_due(at) {
            crate::postgres::feed::trim(conn, self.cutoff(at)).await?;
        }
        Ok(())
    }

    /// Records older than this are trimmed at `now`.
    pub(crate) fn cutoff(&self, now: Timestamp) -> Timestamp {
        now.saturating_sub(self.retention)
    }

    /// Whether there is something to publish, and a table to publish it to.
    fn publishing(&self, records: &[Record<'_>]) -> bool {
        !records.is_empty() && self.start.load(Ordering::Acquire) >= 0
    }

    /// Whether the publisher trims at `at` (at most once a second), taking
    /// the turn if so: a failed trim is tried again after the next second.
    fn trim_due(&self, at: Timestamp) -> bool {
        let now = at.as_millis();
        let due = now.saturating_sub(self.trimmed_at.load(Ordering::Relaxed)) >= TRIM_EVERY_MS;
        if due {
            self.trimmed_at.store(now, Ordering::Relaxed);
        }
        due
    }

    /// Deletes the records older than the retention at `now` (keeping the
    /// newest), inside the caller's transaction; how many went.
    pub(crate) async fn trim(&self, conn: &mut SqliteConnection, now: Timestamp) -> Result<u64> {
        store::feed::trim(conn, self.cutoff(now)).await
    }

    /// Applies what other handles published for `cursor`'s facet since it
    /// last looked (see the module docs). `apply` runs under the cursor's
    /// lock, so two callers never apply the same records, and a caller that
    /// returns from here has seen every record committed before it came in
    /// (unless the cursor bounds staleness and looked less than its period
    /// ago).
    #[inline]
    pub(crate) fn catch_up(
        &self,
        transport: &impl Transport,
        cursor: &Cursor,
        now: Timestamp,
        apply: impl FnMut(News<'_>),
    ) -> Result<()> {
        let start = self.start.load(Ordering::Acquire);
        if start < 0 {
            return Ok(());
        }
        let now = now.as_millis();
        if cursor.every_ms > 0 {
            if now < cursor.next_check.load(Ordering::Relaxed) {
                return Ok(());
            }
            cursor
                .next_check
                .store(now.saturating_add(cursor.every_ms), Ordering::Relaxed);
        }
        let version = transport.version()?;
        // The common case, without the lock: nothing committed since the
        // records were last applied (`applied` is stored after they were).
        if cursor.applied.load(Ordering::Acquire) == version {
            return Ok(());
        }
        self.read(transport, cursor, start, version, apply)
    }

    /// The rest of [`catch_up`](Feed::catch_up), when the version moved:
    /// under the cursor's lock, reads and applies the records after the
    /// cursor's `seq`, then marks `version` applied.
    #[cold]
    fn read(
        &self,
        transport: &impl Transport,
        cursor: &Cursor,
        start: i64,
        version: u64,
        mut apply: impl FnMut(News<'_>),
    ) -> Result<()> {
        // A panic in `apply` leaves `seq` where it was: records are applied again.
        let mut seq = cursor.seq.lock().unwrap_or_else(PoisonError::into_inner);
        if cursor.applied.load(Ordering::Acquire) == version {
            return Ok(());
        }
        let after = seq.unwrap_or(start);
        let batch = transport.read(cursor.facet, after, self.origin)?;
        if batch.first.is_some_and(|first| first > after + 1) {
            apply(News::Lost);
        }
        batch.changes.iter().for_each(|c| apply(News::Change(c)));
        *seq = Some(batch.last.unwrap_or(after).max(after));
        cursor.applied.store(version, Ordering::Release);
        Ok(())
    }
}

/// Where one facet of one handle stands in the feed.
pub(crate) struct Cursor {
    facet: Facet,
    /// Look at most once per this many milliseconds (0: on every call).
    every_ms: i64,
    /// When a bounded cursor looks next (milliseconds of the vault's clock).
    next_check: AtomicI64,
    /// The transport's version when the records were last applied.
    applied: AtomicU64,
    /// The last `seq` applied (`None`: nothing read yet, start from the
    /// feed's start).
    seq: Mutex<Option<i64>>,
}

impl Cursor {
    /// A cursor for `facet` that looks for news at most once per `every`
    /// (zero: on every call).
    pub(crate) fn new(facet: Facet, every: Duration) -> Cursor {
        Cursor {
            facet,
            every_ms: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
            next_check: AtomicI64::new(i64::MIN),
            applied: AtomicU64::new(NEVER),
            seq: Mutex::new(None),
        }
    }
}

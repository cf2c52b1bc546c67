//! Hot-path readers: rusqlite connections used on the caller's thread.
//!
//! A query through sqlx hops to the connection's worker thread and back
//! (~59 µs here) while the indexed lookup itself takes ~4 µs. The point
//! lookups that run on every request (session by token hash, cache entry by
//! key, bucket by subject) therefore run synchronously, here, through a small
//! pool of `query_only` connections with cached prepared statements.
//!
//! Invariants:
//! 1. A connection is used by one thread at a time: each sits in its own mutex,
//!    and no guard is held across an `.await` (the closures are synchronous).
//! 2. Readers never write: `PRAGMA query_only = ON` is set before a connection
//!    joins the pool.
//! 3. Slots open lazily, and only under contention, so opening a vault costs
//!    one connection, not N.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::conn::SharedSettings;
use crate::{Error, Result};

pub(crate) struct Readers {
    settings: SharedSettings,
    slots: Vec<Mutex<Option<rusqlite::Connection>>>,
    next: AtomicUsize,
    closed: AtomicBool,
}

impl Readers {
    /// A pool of `size` slots; `first` (already open) takes slot 0.
    pub(crate) fn new(
        settings: SharedSettings,
        size: usize,
        first: rusqlite::Connection,
    ) -> Result<Self> {
        first.execute_batch("PRAGMA query_only = ON;")?;
        let mut slots: Vec<_> = (0..size.max(1)).map(|_| Mutex::new(None)).collect();
        slots[0] = Mutex::new(Some(first));
        Ok(Readers {
            settings,
            slots,
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Runs `f` on a free reader, on this thread.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut guard = self.slot();
        if guard.is_none() {
            let conn = self.settings.open_rusqlite(false)?;
            conn.execute_batch("PRAGMA query_only = ON;")?;
            *guard = Some(conn);
        }
        let conn = guard.as_ref().ok_or(Error::Closed)?;
        f(conn)
            .map_err(|e| super::conn::classify(&self.settings.path, self.settings.key.as_ref(), e))
    }

    /// A free slot, preferring one whose connection is already open: a new
    /// connection is opened only when every open one is busy (with a
    /// passphrase key each costs a PBKDF2 run). When all are busy, waits for
    /// the next in turn.
    fn slot(&self) -> MutexGuard<'_, Option<rusqlite::Connection>> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut unopened = None;
        for i in 0..n {
            if let Ok(guard) = self.slots[(start + i) % n].try_lock() {
                if guard.is_some() {
                    return guard;
                }
                unopened.get_or_insert(guard);
            }
        }
        if let Some(guard) = unopened {
            return guard;
        }
        self.slots[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes every reader; later calls get [`Error::Closed`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            let conn = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(conn) = conn {
                // A reader has nothing to flush; a failed close only leaks a handle.
                let _ = conn.close();
            }
        }
    }
}

/// The hot-path writer: one rusqlite connection for single-statement writes
/// that a request waits on (a shared-mode rate-limit check), run on the
/// caller's thread to save sqlx's thread hops. It takes turns with the sqlx
/// writer through SQLite's write lock ([`super::Store::hot_write`]).
///
/// It never waits for that lock on the caller's thread. The lock is often
/// held across an `.await` by this process's own sqlx writer (a flush), and
/// on a `current_thread` runtime the task that would release it cannot run
/// while this thread sits in SQLite's busy handler: that was a stall of the
/// whole busy timeout, then SQLITE_BUSY. So its busy timeout is 0, and while
/// the lock is taken it yields to the runtime and tries again after a short,
/// growing pause, up to the busy timeout.
pub(crate) struct HotWriter {
    settings: SharedSettings,
    conn: Mutex<Option<rusqlite::Connection>>,
    closed: AtomicBool,
}

/// The longest pause between two tries for the write lock.
const MAX_PAUSE: Duration = Duration::from_millis(5);

impl HotWriter {
    pub(crate) fn new(settings: SharedSettings) -> Self {
        HotWriter {
            settings,
            conn: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when `f`
    /// returns `Ok` and rolled back otherwise.
    pub(crate) async fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        let guard = loop {
            if let Some(guard) = self.begin()? {
                break guard;
            }
            if started.elapsed() >= self.settings.busy_timeout {
                return Err(Error::from(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some(format!(
                        "the write lock stayed taken for the whole busy timeout ({:?})",
                        self.settings.busy_timeout
                    )),
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        };
        let conn = guard.as_ref().ok_or(Error::Closed)?;
        match f(conn) {
            Ok(out) => {
                if let Err(e) = conn.execute_batch("COMMIT") {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(self.classify(e));
                }
                Ok(out)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Takes the write lock without waiting: the connection inside `BEGIN
    /// IMMEDIATE`, or `None` while another connection holds the lock.
    fn begin(&self) -> Result<Option<MutexGuard<'_, Option<rusqlite::Connection>>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            let conn = self.settings.open_rusqlite(false)?;
            conn.busy_timeout(Duration::ZERO)?;
            *guard = Some(conn);
        }
        let conn = guard.as_ref().ok_or(Error::Closed)?;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(Some(guard)),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    fn classify(&self, e: rusqlite::Error) -> Error {
        super::conn::classify(&self.settings.path, self.settings.key.as_ref(), e)
    }

    /// Closes the connection; later calls get [`Error::Closed`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = conn {
            // Every transaction has ended by now; a failed close only leaks a handle.
            let _ = conn.close();
        }
    }
}

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
pub(crate) struct HotWriter {
    settings: SharedSettings,
    conn: Mutex<Option<rusqlite::Connection>>,
    closed: AtomicBool,
}

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
    pub(crate) fn with<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.settings.open_rusqlite(false)?);
        }
        let conn = guard.as_ref().ok_or(Error::Closed)?;
        let classify =
            |e| super::conn::classify(&self.settings.path, self.settings.key.as_ref(), e);
        super::conn::retry_busy(self.settings.busy_timeout, || {
            conn.execute_batch("BEGIN IMMEDIATE")
        })
        .map_err(classify)?;
        match f(conn) {
            Ok(out) => {
                if let Err(e) = conn.execute_batch("COMMIT") {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(classify(e));
                }
                Ok(out)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
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

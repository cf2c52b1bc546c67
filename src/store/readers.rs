//! Hot-path connections: rusqlite, used on the caller's thread.
//!
//! A query through sqlx hops to the connection's worker thread and back,
//! which costs many times the indexed lookup itself (docs/performance.md
//! has the figures). The point
//! lookups that run on every request (session by token hash, cache entry by
//! key, bucket by subject) therefore run synchronously, here, through a small
//! pool of `query_only` connections with cached prepared statements; and the
//! short writes a request waits on run on one
//! [`HotWriter`](super::writer::HotWriter).
//!
//! # What may block the caller's thread, and for how long
//!
//! The caller's thread is usually a tokio worker, often the only one (a
//! `current_thread` runtime). It must never wait for something that needs
//! that same thread to finish, and never for work that grows with the file.
//!
//! - **Opening a connection** runs PBKDF2 for a passphrase key (~200 ms)
//!   and may wait out the busy timeout while another process sets the file
//!   up. It never runs on the caller's thread: the first reader (opened with
//!   the store) and the hot writer are opened on tokio's blocking pool, and
//!   later readers are added to the pool by a blocking-pool thread.
//! - **The write lock** is often held across an `.await` by this process's
//!   own sqlx writer (a flush), whose task may need this very thread to
//!   reach its commit. The hot writer never waits for it here (busy timeout
//!   0); the task yields and tries again (see
//!   [`HotWriter`](super::writer::HotWriter)).
//! - **Reads** never wait for the write lock (WAL). A reader's busy handler
//!   only runs for the moments a checkpoint or WAL recovery on another
//!   connection holds the WAL index, work that does not need this thread.
//! - **The pool's mutexes** are held only for one synchronous lookup or
//!   write (no guard crosses an `.await`), so waiting for one costs at most
//!   that lookup, done by another thread. A reader that finds every open
//!   connection busy takes the first one freed.
//!
//! Invariants:
//! 1. A connection is used by one thread at a time: each sits in its own mutex,
//!    and no guard is held across an `.await` (the closures are synchronous).
//! 2. Readers never write: `PRAGMA query_only = ON` is set before a connection
//!    joins the pool.
//! 3. Slots `0..opened` hold a connection (until `close`), the others none.
//!    Slots fill in order, only under contention, and one at a time, so
//!    opening a vault costs one connection, not N.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use super::conn::SharedSettings;
use super::page_cache::Role;
use super::watch::Header;
use crate::{Error, Result};

type Slot = Mutex<Option<rusqlite::Connection>>;

pub(crate) struct Readers {
    pool: Arc<Pool>,
    next: AtomicUsize,
    /// The wal-index header of slot 0's connection (see [`Header`]);
    /// cleared before that connection closes.
    header: RwLock<Option<Header>>,
}

/// What a background opener shares with the pool.
struct Pool {
    settings: SharedSettings,
    slots: Box<[Slot]>,
    /// How many slots hold a connection (invariant 3).
    opened: AtomicUsize,
    /// A connection is being opened in the background.
    opening: AtomicBool,
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
        // SAFETY: `first` has read the file, goes into slot 0, and is closed
        // only by `close`, which clears `header` first; no other thread has
        // it yet.
        let header = unsafe { Header::of(&first) };
        let slots: Box<[Slot]> = (0..size.max(1)).map(|_| Mutex::new(None)).collect();
        *lock(&slots[0]) = Some(first);
        Ok(Readers {
            pool: Arc::new(Pool {
                settings,
                slots,
                opened: AtomicUsize::new(1),
                opening: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            next: AtomicUsize::new(0),
            header: RwLock::new(header),
        })
    }

    /// A value that changes whenever any connection commits: the wal-index
    /// header's, or else (no shared wal-index) `PRAGMA data_version` on
    /// slot 0, always the same connection so that two values compare.
    #[inline]
    pub(crate) fn commit_version(&self) -> Result<u64> {
        if let Some(header) = &*self.header.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(header.version());
        }
        self.with_first(|conn| {
            let mut stmt = conn.prepare_cached("PRAGMA data_version")?;
            stmt.query_row([], |row| row.get::<_, i64>(0))
        })
        .map(i64::cast_unsigned)
    }

    /// Runs `f` on a free reader, on this thread.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.pool.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.run(self.slot(), f)
    }

    /// Runs `f` on the first reader (slot 0, open until `close`), waiting
    /// for it if another thread holds it (for one lookup at most).
    fn with_first<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.pool.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.run(lock(&self.pool.slots[0]), f)
    }

    fn run<T>(
        &self,
        guard: MutexGuard<'_, Option<rusqlite::Connection>>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let conn = guard.as_ref().ok_or(Error::Closed)?;
        let settings = &self.pool.settings;
        f(conn).map_err(|e| super::conn::classify(&settings.path, settings.key.as_ref(), e))
    }

    /// A free open connection. When every open one is busy (only another
    /// thread can hold one, for one lookup), asks for one more in the
    /// background and tries the open ones again until one is free: whichever
    /// holder finishes first, or the new connection, ends the wait.
    fn slot(&self) -> MutexGuard<'_, Option<rusqlite::Connection>> {
        let pool = &self.pool;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let opened = pool.opened.load(Ordering::Acquire).max(1);
            for i in 0..opened {
                match pool.slots[(start + i) % opened].try_lock() {
                    Ok(guard) => return guard,
                    Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                    Err(TryLockError::WouldBlock) => {}
                }
            }
            if opened < pool.slots.len() {
                Pool::grow(pool);
            }
            std::thread::yield_now();
        }
    }

    /// Closes every reader; later calls get [`Error::Closed`]. Waits for a
    /// background open in flight, so that no connection outlives the call.
    pub(crate) async fn close(&self) {
        let pool = &self.pool;
        pool.closed.store(true, Ordering::SeqCst);
        *self.header.write().unwrap_or_else(PoisonError::into_inner) = None;
        while pool.opening.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for slot in &pool.slots {
            if let Some(conn) = lock(slot).take() {
                // A reader has nothing to flush; a failed close only leaks a handle.
                let _ = conn.close();
            }
        }
    }
}

impl Pool {
    /// Opens one more reader on a blocking-pool thread (or here, outside a
    /// runtime: then there is no worker to keep free), unless one is
    /// being opened already.
    fn grow(pool: &Arc<Pool>) {
        if pool.opening.swap(true, Ordering::SeqCst) {
            return;
        }
        // Paired with `close`: one of the two sees the other's flag.
        if pool.closed.load(Ordering::SeqCst) {
            pool.opening.store(false, Ordering::SeqCst);
            return;
        }
        let pool = Arc::clone(pool);
        let open = move || {
            let conn = pool
                .settings
                .open_rusqlite(Role::HotReader, false)
                .and_then(|conn| {
                    conn.execute_batch("PRAGMA query_only = ON;")?;
                    Ok(conn)
                });
            match conn {
                Ok(conn) => pool.add(conn),
                Err(e) => tracing::warn!(error = %e, "could not open one more hot reader"),
            }
            pool.opening.store(false, Ordering::SeqCst);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(open)),
            Err(_) => open(),
        }
    }

    /// Puts a new reader in the first empty slot (dropped if the pool closed).
    fn add(&self, conn: rusqlite::Connection) {
        let n = self.opened.load(Ordering::Acquire);
        let Some(slot) = self.slots.get(n) else {
            return;
        };
        {
            let mut guard = lock(slot);
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            *guard = Some(conn);
            self.opened.store(n + 1, Ordering::Release);
        }
        // The readers share one part of the budget: each one open shrinks
        // to its share (SQLite lets the pages beyond it go).
        let sql = format!(
            "PRAGMA cache_size = -{}",
            self.settings.page_cache.hot_reader_kib(n + 1)
        );
        for slot in &self.slots[..=n] {
            if let Some(conn) = lock(slot).as_ref()
                && let Err(e) = conn.execute_batch(&sql)
            {
                tracing::warn!(error = %e, "could not shrink a hot reader's page cache");
            }
        }
    }
}

fn lock(slot: &Slot) -> MutexGuard<'_, Option<rusqlite::Connection>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

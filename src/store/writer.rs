//! The hot writer: one rusqlite connection for the short writes a request
//! waits on (session create, rotate and revoke, strict and shared-mode limit
//! checks, preference patches), run on the caller's thread to save sqlx's
//! thread hops, with group commit.
//!
//! # Group commit
//!
//! SQLite's cost is the commit. Callers take turns on the connection (an
//! async mutex, first come first served); the one whose turn it is writes
//! inside the open transaction (`BEGIN IMMEDIATE`, begun by the first of
//! them). If more callers are waiting for their turn, it leaves the
//! transaction open for them and waits; the last one commits for everyone,
//! and every caller is acknowledged only after the commit that holds its
//! write. So a caller alone pays one commit, as before, and callers that
//! arrive while a commit is in flight share the next one. A group holds at
//! most [`MAX_GROUP`] writes, so that a steady stream of callers still
//! commits.
//!
//! A write that fails is undone alone: a caller that joins a group that
//! already holds writes runs inside a savepoint, rolled back if it fails.
//! If SQLite ends the whole transaction (some I/O errors do), or the commit
//! fails, every write in the group fails with that error.
//!
//! A group never loses its committer: whoever holds the turn commits unless
//! a caller is waiting for it, and when a waiting caller is cancelled, or
//! the group's callers are, the members left (or the last one, as it goes)
//! commit what is there.
//!
//! # Never waiting for the write lock on the caller's thread
//!
//! The write lock is often held across an `.await` by this process's own
//! sqlx writer (a flush), and on a `current_thread` runtime the task that
//! would release it cannot run while this thread sits in SQLite's busy
//! handler: that was a stall of the whole busy timeout, then SQLITE_BUSY.
//! So the connection's busy timeout is 0, and while the lock is taken the
//! caller holding the turn yields to the runtime and tries again after a
//! short, growing pause, up to the busy timeout.
//!
//! # Checkpoints
//!
//! SQLite's automatic checkpoint is off on this connection: a commit that
//! leaves enough of the WAL to copy starts one in the background instead,
//! and the turn's holder checkpoints only when the WAL has grown long (see
//! [`checkpoint`](super::checkpoint)).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::ffi;
use tokio::sync::{Mutex, MutexGuard, Notify};

use super::checkpoint::{self, Checkpointer};
use super::conn::SharedSettings;
use super::watch::Header;
use crate::{Error, Result};

/// The most writes one commit holds.
const MAX_GROUP: usize = 128;

/// The longest pause between two tries for the write lock.
const MAX_PAUSE: Duration = Duration::from_millis(5);

pub(crate) struct HotWriter {
    settings: SharedSettings,
    turn: Mutex<Turn>,
    /// Callers waiting for the turn to write (not those waiting for a commit).
    arriving: AtomicUsize,
    /// Wakes the callers waiting for a commit: it happened, or their group
    /// may have lost its committer.
    settled: Notify,
    closed: AtomicBool,
    writes: AtomicU64,
    commits: AtomicU64,
    checkpointer: Checkpointer,
}

/// What the caller holding the turn may use.
struct Turn {
    conn: Option<rusqlite::Connection>,
    /// `conn`'s wal-index header, cleared before `conn` closes; `None`
    /// outside WAL mode, where SQLite checkpoints as it commits.
    wal: Option<Header>,
    /// The transaction open on `conn`, if any.
    open: Option<Group>,
}

/// The writes of one transaction.
struct Group {
    /// Writes made in it so far.
    members: usize,
    outcome: Arc<Outcome>,
}

/// How a group's transaction ended: set once, by whoever ends it.
type Outcome = OnceLock<std::result::Result<(), Failure>>;

/// A failed commit, kept so that each of the group's callers gets the error.
#[derive(Debug, Clone)]
struct Failure {
    code: ffi::Error,
    message: String,
}

impl Failure {
    fn of(e: &rusqlite::Error) -> Failure {
        let code = match e {
            rusqlite::Error::SqliteFailure(code, _) => *code,
            _ => ffi::Error::new(ffi::SQLITE_ERROR),
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }

    fn error(&self) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(self.code, Some(self.message.clone()))
    }
}

impl HotWriter {
    pub(crate) fn new(settings: SharedSettings) -> Self {
        HotWriter {
            turn: Mutex::new(Turn {
                conn: None,
                wal: None,
                open: None,
            }),
            arriving: AtomicUsize::new(0),
            settled: Notify::new(),
            closed: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            checkpointer: Checkpointer::new(settings.clone()),
            settings,
        }
    }

    /// Runs `f` in a write transaction, perhaps shared with other callers'
    /// writes (see the module docs), and returns once that transaction has
    /// committed. `f` is undone, and its error returned, if it fails.
    pub(crate) async fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let mut turn = self.take_turn().await?;
        if turn.open.is_none() {
            self.begin(&mut turn).await?;
        }
        let shared = turn.open.as_ref().is_some_and(|g| g.members > 0);
        let conn = turn.conn.as_ref().ok_or(Error::Closed)?;
        // A panic in `f` (a caller's own code may run there: a preferences
        // upgrade) undoes its write and gives the turn back before it goes
        // on unwinding; left open, the transaction would hold the write lock
        // against every other connection until the next caller came.
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.savepoint(conn, shared).and_then(|()| {
                let value = f(conn)?;
                if shared {
                    Self::run_cached(conn, "RELEASE member").map_err(|e| self.classify(e))?;
                }
                Ok(value)
            })
        }));
        let value = match written {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                self.undo(&mut turn, shared);
                self.release(turn);
                return Err(e);
            }
            Err(panic) => {
                self.undo(&mut turn, shared);
                self.release(turn);
                std::panic::resume_unwind(panic);
            }
        };
        let group = turn.open.as_mut().ok_or(Error::Closed)?;
        group.members += 1;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            writer: self,
            outcome: group.outcome.clone(),
        };
        self.release(turn);
        member.committed().await.map(|()| value)
    }

    /// Commits what is open and keeps the hot writer idle until the returned
    /// guard drops: for the sqlx writer to take the write lock meanwhile.
    /// Without it, under a steady stream of hot writes the sqlx writer would
    /// wait in SQLite's busy handler, whose pauses grow to 100 ms, and
    /// rarely find the lock free; with it, the hot writer is the one that
    /// waits, in its short pauses (see the module docs).
    pub(crate) async fn hold(&self) -> Held<'_> {
        let mut turn = self.wait_turn().await;
        self.commit(&mut turn);
        Held { _turn: turn }
    }

    /// Waits for the turn, counted in `arriving` meanwhile.
    async fn wait_turn(&self) -> MutexGuard<'_, Turn> {
        let arriving = Arriving::new(self);
        let turn = self.turn.lock().await;
        arriving.arrived();
        turn
    }

    /// Waits for the turn, opening the connection on first use.
    async fn take_turn(&self) -> Result<MutexGuard<'_, Turn>> {
        let mut turn = self.wait_turn().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if turn.conn.is_none() {
            // Opened on the blocking pool: PBKDF2 for a passphrase, and
            // perhaps a wait for another process setting the file up.
            let settings = self.settings.clone();
            let conn = super::conn::blocking("open the hot writer", move || {
                let conn = settings.open_rusqlite(super::Role::HotWriter, false)?;
                conn.busy_timeout(Duration::ZERO)?;
                Ok(conn)
            })
            .await?;
            // SAFETY: `conn` has read the file, and `close` clears `wal`
            // before it closes `conn`; only the turn's holder uses either.
            turn.wal = unsafe { Header::of(&conn) };
            if turn.wal.is_some() {
                // Checkpoints run in the background instead (see `checkpoint`).
                conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                    .map_err(|e| self.classify(e))?;
            }
            turn.conn = Some(conn);
        }
        Ok(turn)
    }

    /// Opens a transaction (see the module docs on the write lock).
    async fn begin(&self, turn: &mut Turn) -> Result<()> {
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        let begun = loop {
            match self.execute(turn, "BEGIN IMMEDIATE") {
                Err(Error::Busy { .. }) if started.elapsed() < self.settings.busy_timeout => {}
                Err(Error::Busy { .. }) => {
                    break Err(Error::Busy {
                        detail: format!(
                            "the write lock stayed taken for the whole busy timeout ({:?})",
                            self.settings.busy_timeout
                        ),
                    });
                }
                begun => break begun,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        };
        begun?;
        turn.open = Some(Group {
            members: 0,
            outcome: Arc::new(OnceLock::new()),
        });
        Ok(())
    }

    fn execute(&self, turn: &Turn, sql: &str) -> Result<()> {
        let conn = turn.conn.as_ref().ok_or(Error::Closed)?;
        Self::run_cached(conn, sql).map_err(|e| self.classify(e))
    }

    /// Undoes the failed write of the caller holding the turn: its
    /// savepoint, or the whole transaction if it held nothing else. If
    /// SQLite already ended the transaction, the group's other writes are
    /// gone with it, and their callers learn so.
    fn undo(&self, turn: &mut Turn, shared: bool) {
        let Some(conn) = turn.conn.as_ref() else {
            return;
        };
        if conn.is_autocommit() {
            if let Some(group) = turn.open.take() {
                let failure = Failure {
                    code: ffi::Error::new(ffi::SQLITE_ABORT),
                    message: "another write of the same commit failed and SQLite rolled the transaction back".into(),
                };
                self.settle(&group, Err(failure));
            }
        } else if shared {
            let _ = conn.execute_batch("ROLLBACK TO member; RELEASE member");
        } else if turn.open.take().is_some() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }

    /// Commits the open transaction, and tells its members how it went.
    fn commit(&self, turn: &mut Turn) {
        let (Some(conn), Some(group)) = (turn.conn.as_ref(), turn.open.take()) else {
            return;
        };
        let committed = Self::run_cached(conn, "COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            Failure::of(&e)
        });
        self.commits.fetch_add(1, Ordering::Relaxed);
        let ok = committed.is_ok();
        self.settle(&group, committed);
        if ok {
            self.checkpoint(turn);
        }
    }

    /// After a commit, once its callers are told: starts a checkpoint in
    /// the background when enough frames wait to be copied, or, when the
    /// WAL has grown long, copies what is left here so that it can start
    /// again from its beginning (see [`checkpoint`]).
    fn checkpoint(&self, turn: &Turn) {
        let (Some(conn), Some(wal)) = (turn.conn.as_ref(), turn.wal.as_ref()) else {
            return;
        };
        let (frames, backlog) = wal.frames();
        if frames >= checkpoint::RESTART_FRAMES && backlog > 0 {
            if let Err(e) = conn.query_row(checkpoint::PASSIVE, [], |_| Ok(())) {
                tracing::debug!(error = %e, "a checkpoint failed; the next commit tries again");
            }
        } else if backlog >= checkpoint::CHECKPOINT_FRAMES {
            self.checkpointer.start();
        }
    }

    fn settle(&self, group: &Group, outcome: std::result::Result<(), Failure>) {
        let _ = group.outcome.set(outcome);
        self.settled.notify_waiters();
    }

    /// Gives the turn up: commits first unless a caller is waiting for it
    /// (who then commits, or leaves it to the next) and the group has room.
    fn release(&self, mut turn: MutexGuard<'_, Turn>) {
        if turn
            .open
            .as_ref()
            .is_some_and(|g| g.members >= MAX_GROUP || self.arriving.load(Ordering::SeqCst) == 0)
        {
            self.commit(&mut turn);
        }
        let open = turn.open.is_some();
        drop(turn);
        // The caller counted as waiting may have been cancelled since.
        if open && self.arriving.load(Ordering::SeqCst) == 0 {
            self.settled.notify_waiters();
        }
    }

    /// Opens the savepoint of a write that joins a group holding others.
    fn savepoint(&self, conn: &rusqlite::Connection, shared: bool) -> Result<()> {
        if shared {
            Self::run_cached(conn, "SAVEPOINT member").map_err(|e| self.classify(e))?;
        }
        Ok(())
    }

    /// Runs a statement that every group or write runs, prepared once.
    fn run_cached(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// Commits a group left open with nobody coming to commit it, if the
    /// turn is free (whoever holds it commits or leaves it to a caller who
    /// will).
    fn commit_orphan(&self, outcome: &Arc<Outcome>) {
        if self.arriving.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Ok(mut turn) = self.turn.try_lock() else {
            return;
        };
        if turn
            .open
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(&g.outcome, outcome))
        {
            self.commit(&mut turn);
        }
    }

    fn classify(&self, e: rusqlite::Error) -> Error {
        super::conn::classify(&self.settings.path, self.settings.key.as_ref(), e)
    }

    /// How many writes were made, and in how many commits.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }

    /// Commits what is open and closes the connection; later calls get
    /// [`Error::Closed`].
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut turn = self.turn.lock().await;
        self.commit(&mut turn);
        self.checkpointer.close();
        turn.wal = None;
        if let Some(conn) = turn.conn.take() {
            // No transaction is open; a failed close only leaks a handle.
            let _ = conn.close();
        }
    }
}

/// The hot writer kept idle (see [`HotWriter::hold`]).
pub(crate) struct Held<'w> {
    _turn: MutexGuard<'w, Turn>,
}

/// A caller waiting for the turn; counted in `arriving` until it has it or
/// is cancelled.
struct Arriving<'w> {
    writer: &'w HotWriter,
    waiting: bool,
}

impl<'w> Arriving<'w> {
    fn new(writer: &'w HotWriter) -> Self {
        writer.arriving.fetch_add(1, Ordering::SeqCst);
        Arriving {
            writer,
            waiting: true,
        }
    }

    fn arrived(mut self) {
        self.waiting = false;
        self.writer.arriving.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        if self.waiting && self.writer.arriving.fetch_sub(1, Ordering::SeqCst) == 1 {
            // A group may have been left open for this caller.
            self.writer.settled.notify_waiters();
        }
    }
}

/// A caller whose write is in an open group, waiting for its commit.
struct Member<'w> {
    writer: &'w HotWriter,
    outcome: Arc<Outcome>,
}

impl Member<'_> {
    async fn committed(self) -> Result<()> {
        loop {
            let settled = self.writer.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome
                    .as_ref()
                    .map_err(|f| self.writer.classify(f.error()))
                    .copied();
            }
            self.writer.commit_orphan(&self.outcome);
            if self.outcome.get().is_none() {
                settled.await;
            }
        }
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        // Cancelled before the commit: the write stays in the group, and
        // is committed even if no other caller is left to do it.
        if self.outcome.get().is_none() {
            self.writer.commit_orphan(&self.outcome);
        }
    }
}

//! Checkpoints off the request path.
//!
//! SQLite's automatic checkpoint runs in the connection that committed,
//! right after its commit: on the hot writer that is a request's thread,
//! holding the writer's turn, while it copies the WAL's new pages into the
//! database file and syncs both. Every caller waiting for the turn waits
//! for that too. So the hot writer turns the automatic checkpoint off, and
//! after a commit that leaves [`CHECKPOINT_FRAMES`] frames or more to copy
//! it starts a passive checkpoint on tokio's blocking pool, on a connection
//! of its own ([`Checkpointer`]). A passive checkpoint takes no write lock:
//! the hot writer goes on committing meanwhile.
//!
//! The WAL only starts again from its beginning when a writer begins a
//! transaction with nothing left to copy; under a steady stream of commits
//! a checkpoint running beside them never catches up with the last one, so
//! the WAL would grow without end. Once it holds [`RESTART_FRAMES`] frames,
//! the hot writer checkpoints what is left itself, holding its turn, as
//! SQLite would have, and the next transaction starts the WAL again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::conn::SharedSettings;
use super::page_cache::Role;

/// The backlog of frames that starts a checkpoint in the background
/// (SQLite's own automatic checkpoint threshold).
pub(super) const CHECKPOINT_FRAMES: u32 = 1000;

/// The WAL's length, in frames, past which the hot writer checkpoints what
/// is left itself (about 16 MiB of 4 KiB pages).
pub(super) const RESTART_FRAMES: u32 = 4 * CHECKPOINT_FRAMES;

/// The statement of a checkpoint that waits for nobody.
pub(super) const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// Runs passive checkpoints on tokio's blocking pool, one at a time, on a
/// connection it opens on first use and closes in [`Checkpointer::close`].
pub(super) struct Checkpointer {
    settings: SharedSettings,
    conn: Arc<Mutex<Option<rusqlite::Connection>>>,
    running: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Checkpointer {
    pub(super) fn new(settings: SharedSettings) -> Self {
        Checkpointer {
            settings,
            conn: Arc::default(),
            running: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// Starts a checkpoint in the background, unless one is running, the
    /// checkpointer is closed, or there is no tokio runtime to run it on.
    /// A checkpoint that fails (the connection cannot open, another
    /// process is checkpointing) is left for the next one to do.
    pub(super) fn start(&self) {
        if self.closed.load(Ordering::Acquire) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let (settings, conn, running, closed) = (
            self.settings.clone(),
            self.conn.clone(),
            self.running.clone(),
            self.closed.clone(),
        );
        drop(runtime.spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            if !closed.load(Ordering::Acquire) {
                if conn.is_none() {
                    match settings.open_rusqlite(Role::Other, false) {
                        Ok(opened) => *conn = Some(opened),
                        Err(e) => tracing::warn!(error = %e, "could not open the checkpoint connection"),
                    }
                }
                if let Some(conn) = conn.as_ref()
                    && let Err(e) = conn.query_row(PASSIVE, [], |_| Ok(()))
                {
                    tracing::debug!(error = %e, "a background checkpoint failed; the next one will copy its pages");
                }
            }
            running.store(false, Ordering::Release);
        }));
    }

    /// Waits for a running checkpoint (on this thread: closing is rare, and
    /// a checkpoint short) and closes the connection; later calls to
    /// [`Checkpointer::start`] do nothing.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let taken = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = taken {
            // No transaction is open; a failed close only leaks a handle.
            let _ = conn.close();
        }
    }
}

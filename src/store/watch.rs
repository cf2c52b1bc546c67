//! Noticing that another connection committed, without a query: the
//! wal-index header in SQLite's shared memory.
//!
//! In WAL mode every commit rewrites the wal-index header at the start of the
//! `-shm` file, which every connection to the file maps into memory; its
//! `iChange` field counts transactions and `mxFrame` is the last valid WAL
//! frame (SQLite's file-format documentation, "WAL-index format"). SQLite
//! itself starts each read transaction by comparing that header with the one
//! it saw last; `PRAGMA data_version` is that comparison surfaced through a
//! statement, at the cost of a read lock and a statement step. Reading the
//! two words directly costs two loads.
//!
//! The memory is SQLite's own mapping, obtained through the connection's
//! file (`SQLITE_FCNTL_FILE_POINTER`, then the VFS's `xShmMap` for region 0,
//! which returns the region the connection already has): no other file
//! descriptor on the `-shm` file is opened (closing one would drop the
//! process's POSIX locks on it). It stays mapped, and the file keeps its
//! size, while that connection is open, so the header is read only under
//! [`Header`]'s owner's lock, which is cleared before the connection closes.
//!
//! Ordering: a writer writes the second copy of the header, a barrier, then
//! the first; this reads the first. A commit that completed before the read
//! is seen; a read transaction begun after a changed value is seen sees that
//! commit (SQLite retries a torn header until both copies agree, and the
//! second copy was complete before the first began to change).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// SQLite's wal-index region size (`WALINDEX_PGSZ`).
const REGION_BYTES: i32 = 32 * 1024;
/// `iChange` and `mxFrame`, as 32-bit word offsets into the header.
const ICHANGE: usize = 2;
const MX_FRAME: usize = 4;
/// `nBackfill`, the WAL frames a checkpoint has copied into the database
/// file: the first word of the checkpoint information that follows the
/// header's two 48-byte copies.
const N_BACKFILL: usize = 24;

/// The first copy of the wal-index header of one connection's file.
pub(crate) struct Header(NonNull<u32>);

// SAFETY: the pointer is to process-shared memory read only with atomic
// loads; its owner guarantees that it is read only while mapped.
unsafe impl Send for Header {}
unsafe impl Sync for Header {}

impl Header {
    /// The header of `conn`'s wal-index, or `None` when the connection has
    /// no shared wal-index (not in WAL mode).
    ///
    /// # Safety
    /// `conn` must have read the file, must stay open, and its journal mode
    /// WAL, for as long as the returned value is used, and no other thread
    /// may use `conn` during this call.
    pub(crate) unsafe fn of(conn: &rusqlite::Connection) -> Option<Header> {
        use libsqlite3_sys as ffi;
        // Outside WAL mode `xShmMap` would open a wal-index of its own, which
        // nothing would ever unmap.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the handle is open (we hold `conn`), and the file-control
        // call only writes the file pointer into `file`.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        if rc != ffi::SQLITE_OK || file.is_null() {
            return None;
        }
        // SAFETY: `file` is the open main-database file of `conn`, whose
        // methods outlive it; `xShmMap` with `bExtend = 0` maps nothing new
        // when region 0 is mapped already, and writes a null pointer when
        // there is no wal-index.
        let region = unsafe {
            let methods = (*file).pMethods;
            if methods.is_null() || (*methods).iVersion < 2 {
                return None;
            }
            let map = (*methods).xShmMap?;
            let mut region: *mut std::ffi::c_void = std::ptr::null_mut();
            if map(file, 0, REGION_BYTES, 0, &raw mut region) != ffi::SQLITE_OK {
                return None;
            }
            region
        };
        NonNull::new(region.cast()).map(Header)
    }

    /// A value that changes with every commit to the file, by any
    /// connection of any process.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        u64::from(self.word(ICHANGE)) << 32 | u64::from(self.word(MX_FRAME))
    }

    /// The frames in the WAL since it last restarted, and how many of them
    /// no checkpoint has copied into the database file yet.
    pub(crate) fn frames(&self) -> (u32, u32) {
        let frames = self.word(MX_FRAME);
        (frames, frames.saturating_sub(self.word(N_BACKFILL)))
    }

    #[inline]
    fn word(&self, i: usize) -> u32 {
        // SAFETY: the header and the checkpoint information after it are
        // 4-byte-aligned words at the start of the mapped 32 KiB region
        // (see `of`); other processes write them, so they are read
        // atomically.
        unsafe { AtomicU32::from_ptr(self.0.as_ptr().add(i)) }.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::Header;

    fn open(path: &std::path::Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS t (x);")
            .unwrap();
        conn
    }

    #[test]
    fn the_header_changes_with_each_commit_of_any_connection_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let watcher = open(&path);
        let writer = open(&path);
        // SAFETY: `watcher` has read the file and outlives `header`.
        let header = unsafe { Header::of(&watcher) }.expect("a WAL connection has a wal-index");
        let mut seen = header.version();
        for i in 0..3 {
            assert_eq!(header.version(), seen, "changed with no commit");
            writer.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            assert_ne!(header.version(), seen, "commit {i} not seen");
            seen = header.version();
        }
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        seen = header.version();
        writer.execute("INSERT INTO t VALUES (9)", []).unwrap();
        assert_ne!(
            header.version(),
            seen,
            "the first commit after a WAL restart not seen"
        );
    }

    #[test]
    fn the_frames_count_commits_and_the_backlog_empties_with_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = open(&path);
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        // SAFETY: `writer` has read the file and outlives `header`.
        let header = unsafe { Header::of(&writer) }.unwrap();
        let (start, _) = header.frames();
        for i in 0..3 {
            writer.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        let (frames, backlog) = header.frames();
        assert!(frames >= start + 3, "{start} then {frames}");
        assert!(backlog >= 3, "{backlog} of {frames}");
        writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        assert_eq!(header.frames(), (frames, 0), "the checkpoint copied all");
        writer.execute("INSERT INTO t VALUES (9)", []).unwrap();
        let (restarted, backlog) = header.frames();
        assert!(restarted < frames, "the WAL restarted: {restarted}");
        assert_eq!(backlog, restarted);
    }

    #[test]
    fn a_connection_outside_wal_mode_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("j.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x);").unwrap();
        // SAFETY: `conn` has read the file and outlives the call.
        assert!(unsafe { Header::of(&conn) }.is_none());
    }
}

//! How every connection to the file is set up, whichever driver holds it.
//!
//! Order matters: first the busy timeout (another process may hold a lock
//! while this one opens), then the key (SQLCipher must have it before the
//! first page is read), then `auto_vacuum` (it only takes effect on a new
//! file, before any table exists), WAL, `synchronous`, the page cache,
//! foreign keys and `secure_delete`. Readers then switch to `query_only`.
//!
//! `secure_delete` is a per-connection setting. SQLCipher turns it on for a
//! keyed connection, but a file without a key would get SQLite's default
//! (off), so every connection asks for it: whichever connection deletes a
//! row zeroes its bytes and the pages it frees.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use rusqlite::OpenFlags;

use super::page_cache::{PageCache, Role};
use crate::key::Key;
use crate::{Error, Result};

/// `synchronous` for the writer: what a power cut may cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// WAL + NORMAL: a commit survives a process crash; a power cut may lose
    /// the last few commits, never the file's consistency.
    #[default]
    Normal,
    /// WAL + FULL: every acknowledged commit survives a power cut.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Everything needed to open one more connection. Shared by all of a
/// vault's connections; holds the key, which is wiped when the last
/// connection factory is dropped.
#[derive(Clone)]
pub(crate) struct ConnSettings {
    pub(crate) path: PathBuf,
    pub(crate) key: Option<Key>,
    pub(crate) synchronous: Synchronous,
    pub(crate) page_cache: PageCache,
    pub(crate) busy_timeout: Duration,
    /// Open the file read-only as it is (SQLite's `immutable`): its
    /// directory cannot be written, so SQLite could not make the -wal and
    /// -shm files a WAL reader needs, and no WAL is there, so nobody is
    /// writing it. Every write fails with [`Error::ReadOnly`].
    pub(crate) as_is: bool,
}

impl ConnSettings {
    /// The same settings (key included) for another file: a backup.
    pub(crate) fn for_path(&self, path: &Path) -> ConnSettings {
        ConnSettings {
            path: path.to_owned(),
            ..self.clone()
        }
    }

    /// The pragmas that follow the key for a connection of kind `role`, as
    /// one batch. None of them writes to a file that is already set up, so
    /// a refused open leaves it untouched.
    pub(crate) fn setup_sql(&self, role: Role) -> String {
        format!(
            "PRAGMA busy_timeout = {}; {}PRAGMA synchronous = {}; \
             PRAGMA cache_size = -{}; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
            self.busy_timeout.as_millis(),
            if self.as_is {
                ""
            } else {
                "PRAGMA journal_mode = WAL; "
            },
            self.synchronous.pragma(),
            self.page_cache.kib(role),
        )
    }

    /// Opens a rusqlite connection with `flags` (read-only and as it is,
    /// through a `file:` URI, when [`ConnSettings::as_is`]).
    fn open_with(&self, flags: OpenFlags) -> rusqlite::Result<rusqlite::Connection> {
        if !self.as_is {
            return rusqlite::Connection::open_with_flags(&self.path, flags);
        }
        let flags = (flags - OpenFlags::SQLITE_OPEN_READ_WRITE - OpenFlags::SQLITE_OPEN_CREATE)
            | OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI;
        rusqlite::Connection::open_with_flags(immutable_uri(&self.path), flags)
    }

    /// Keys a fresh handle. Errors name the database, never the key.
    ///
    /// # Safety
    /// `db` must be a valid handle that no other thread uses during the call.
    pub(crate) unsafe fn apply_key(&self, db: *mut libsqlite3_sys::sqlite3) -> Result<()> {
        let Some(key) = &self.key else { return Ok(()) };
        // SAFETY: forwarded from the caller.
        unsafe { key.apply(db) }.map_err(|rc| Error::Corrupt {
            path: Some(self.path.clone()),
            detail: format!("SQLCipher refused the key (code {rc})"),
        })
    }

    /// Opens a rusqlite connection for `role`: keyed, set up, statement
    /// cache sized for the hot lookups. A one-row read right after the key proves it before
    /// anything could write, so a wrong key is seen with the file untouched.
    ///
    /// `creating` sets `auto_vacuum = INCREMENTAL` before the switch to WAL
    /// writes the first page. Only then: the pragma rewrites the header
    /// even when the value does not change.
    pub(crate) fn open_rusqlite(&self, role: Role, creating: bool) -> Result<rusqlite::Connection> {
        silence_sqlcipher_log();
        let classify = |e| classify(&self.path, self.key.as_ref(), e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = self.open_with(flags).map_err(classify)?;
        // Another process may be creating or migrating the file right now.
        conn.busy_timeout(self.busy_timeout)?;
        // SAFETY: the connection was just opened on this thread and is not shared.
        unsafe { self.apply_key(conn.handle())? };
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(classify)?;
        let mut setup = self.setup_sql(role);
        if creating {
            setup.insert_str(0, "PRAGMA auto_vacuum = INCREMENTAL; ");
        }
        retry_busy(self.busy_timeout, || conn.execute_batch(&setup)).map_err(classify)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

impl ConnSettings {
    /// A bare keyed, read-only connection for integrity checks: no probe, no
    /// setup, so that it opens even when the schema cannot be read.
    pub(crate) fn open_for_check(&self) -> Result<rusqlite::Connection> {
        silence_sqlcipher_log();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = self
            .open_with(flags)
            .map_err(|e| classify(&self.path, self.key.as_ref(), e))?;
        conn.busy_timeout(self.busy_timeout)?;
        // SAFETY: the connection was just opened on this thread and is not shared.
        unsafe { self.apply_key(conn.handle())? };
        Ok(conn)
    }
}

/// `file:<path>?immutable=1`, with the characters a URI gives a meaning to
/// escaped.
pub(crate) fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02x}", u32::from(c))),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// Whether the vault at `path` must be opened as it is: its directory
/// cannot be written (by this user) and no WAL file is there.
pub(crate) fn must_open_as_is(path: &Path) -> bool {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let writable = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok();
    // A path that is not UTF-8 cannot be put in a URI faithfully.
    !writable && path.to_str().is_some() && !super::with_suffix(path, "-wal").exists()
}

/// Retries `f` while SQLite answers SQLITE_BUSY without waiting, up to
/// `timeout`. SQLite skips the busy handler when waiting could deadlock: two
/// connections that both read a new file and then both switch it to WAL. One
/// of them must let go and try again, which is what this does, with the same
/// kind of growing pause SQLite's own busy handler uses.
pub(crate) fn retry_busy<T>(
    timeout: Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < timeout =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// Turns SQLite's "not a database" / "corrupt" codes into statevault's
/// words. A file SQLite calls corrupt because its header counts more pages
/// than it holds is [`Error::Truncated`]: cut at a page boundary, an
/// encrypted file's length alone does not show it.
pub(crate) fn classify(path: &Path, key: Option<&Key>, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match (e.sqlite_error_code(), key) {
        (Some(ErrorCode::NotADatabase), Some(key)) => Error::WrongKey {
            path: path.to_owned(),
            key: key.describe(),
        },
        (Some(ErrorCode::NotADatabase), None) => Error::NotADatabase {
            path: path.to_owned(),
            reason: "SQLite cannot read its header (encrypted? then a key is needed)".into(),
        },
        (Some(ErrorCode::ReadOnly), _) => Error::ReadOnly {
            path: Some(path.to_owned()),
            detail: e.to_string(),
        },
        (Some(ErrorCode::DatabaseCorrupt), _) => {
            truncation(path, key).unwrap_or_else(|| Error::Corrupt {
                path: Some(path.to_owned()),
                detail: e.to_string(),
            })
        }
        _ => Error::from(e),
    }
}

/// [`Error::Truncated`] when the header of the file at `path` counts more
/// pages than the file holds. SQLite refuses such a file as corrupt; an
/// encrypted file's header is read by decrypting page 1 with `key`.
fn truncation(path: &Path, key: Option<&Key>) -> Option<Error> {
    let page_size = super::file::CIPHER_PAGE_SIZE;
    let pages = super::file::cipher_header_pages(path, key?)?;
    let len = std::fs::metadata(path).ok()?.len();
    let held = len / page_size;
    (pages > held).then(|| Error::Truncated {
        path: path.to_owned(),
        len,
        page_size,
        detail: format!(": the header counts {pages} pages, the file holds {held}"),
    })
}

/// SQLCipher logs "ERROR CORE ... hmac check failed" to stderr on a wrong key;
/// statevault reports that itself, as a typed error. The level is global.
fn silence_sqlcipher_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(conn) = rusqlite::Connection::open_in_memory() {
            // Without SQLCipher the pragma is unknown and ignored.
            let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
        }
    });
}

/// Shared handle to the settings, for the sqlx connect hook.
pub(crate) type SharedSettings = Arc<ConnSettings>;

/// Runs blocking file work (`what`, for the error) on tokio's blocking
/// pool, off the runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| match e.is_cancelled() {
            true => Error::Closed,
            false => Error::Internal {
                detail: format!("{what}: the task failed: {e}"),
            },
        })?
}

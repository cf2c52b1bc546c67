//! The file: key, SQLCipher pragmas, WAL, one writer, readers, migrations.
//!
//! # Who talks to the file, and how
//!
//! Each door's name says which driver it uses and on which thread it runs:
//! `*_here` is rusqlite on the caller's thread, `sqlx_*` is sqlx on its
//! connection's worker thread.
//!
//! | path | door | why |
//! | --- | --- | --- |
//! | writes | [`Store::sqlx_transaction`] (`BEGIN IMMEDIATE`), [`Store::sqlx_writer`] (one autocommit statement), [`Store::sqlx_writer_conn`] (pragmas around a transaction): the one sqlx writer connection | one writer per process; batches go as multi-row statements, one hop per batch |
//! | hot point reads | [`Store::read_here`]: rusqlite [`Readers`](readers) | a sqlx round trip costs many times the indexed lookup it carries (two thread hops; see docs/performance.md) |
//! | short writes a request waits on (session create, rotate, revoke; strict and shared limits; preference patches) | [`Store::write_here`]: the rusqlite [`HotWriter`], with group commit, which never waits on this thread for the write lock | the same hops; one commit for the writes that arrive together |
//! | anything that grows with the file (a large cache value, an integrity check) | the sqlx pools or tokio's blocking pool | the caller's thread may be the runtime's only one |
//! | scans, admin queries | [`Store::sqlx_reader`], `query_only` | off the async threads, no hurry |
//! | migrations | sqlx's migrator on the writer | shared bookkeeping with `sqlx-cli` |
//!
//! Both drivers link the same `libsqlite3-sys` built with bundled SQLCipher,
//! and every connection is keyed through `sqlite3_key_v2` before its first
//! read (see [`conn`]), so there is one SQLCipher and one key path.
//!
//! Opening reads the file's bytes first ([`file::inspect`]) and then opens
//! one rusqlite connection that proves the key and reads the applied
//! migrations. Only if migrations are pending does a sqlx connection open at
//! startup; otherwise the sqlx pools connect on first use. A refused file
//! (wrong key, future schema, truncated …) is left byte-for-byte as it was.

mod bulk;
mod check;
mod checkpoint;
mod conn;
mod copy;
pub(crate) mod feed;
mod file;
mod inspect;
pub(crate) mod meta;
mod migrate;
mod page_cache;
mod read_only_sql;
mod readers;
mod watch;
mod writer;

use std::path::Path;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Sqlite, Transaction};

pub use check::{CIPHER_PASSES, Check, CheckReport};
pub use conn::Synchronous;
pub(crate) use conn::{ConnSettings, SharedSettings, blocking};
pub(crate) use copy::{copy_into, proves_key, rekey, write_backup};
pub(crate) use file::{FileKind, with_suffix};
pub use migrate::MigrationStatus;
pub(crate) use migrate::{Applied, latest_version};
pub(crate) use page_cache::{PageCache, Role};
use readers::Readers;
use writer::{Held, HotWriter};

use crate::key::KeySource;
use crate::{Error, Result};

/// How to open the file: everything [`crate::VaultOptions`] says about it.
pub(crate) struct OpenSpec<'a> {
    pub(crate) path: &'a Path,
    pub(crate) key: &'a KeySource,
    pub(crate) create_if_missing: bool,
    pub(crate) synchronous: Synchronous,
    /// The page caches' budget for the whole vault, in bytes.
    pub(crate) page_cache_budget: u64,
    pub(crate) busy_timeout: std::time::Duration,
    pub(crate) readers: usize,
}

pub(crate) struct Store {
    settings: SharedSettings,
    writer: SqlitePool,
    reader: SqlitePool,
    hot: Readers,
    hot_writer: HotWriter,
}

impl Store {
    pub(crate) async fn open(spec: OpenSpec<'_>) -> Result<Store> {
        let (settings, created) = settings(&spec, spec.create_if_missing)?;
        // On the blocking pool: PBKDF2 for a passphrase, and perhaps a wait
        // for another process setting the file up (see `readers`).
        let opening = settings.clone();
        let first = blocking("open", move || {
            let first = opening.open_rusqlite(Role::HotReader, created)?;
            Applied::read(&first)?.validate()?;
            Ok(first)
        })
        .await?;
        let readers = spec.readers.max(1);
        Ok(Store {
            writer: pool(&settings, 1, false),
            reader: pool(&settings, u32::try_from(readers).unwrap_or(u32::MAX), true),
            hot: Readers::new(settings.clone(), readers, first)?,
            hot_writer: HotWriter::new(settings.clone()),
            settings,
        })
    }

    /// Checks an existing file without opening it as a vault (see [`check`]).
    pub(crate) async fn check_file(spec: OpenSpec<'_>) -> Result<CheckReport> {
        let (settings, _) = settings(&spec, false)?;
        check_blocking(settings).await
    }

    /// Checks this store's file.
    pub(crate) async fn check(&self) -> Result<CheckReport> {
        check_blocking(self.settings.clone()).await
    }

    /// How this store's connections are made (path, key, pragmas).
    pub(crate) fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Closes the readers (hot and sqlx) but not the writer: for work that
    /// must be the file's only connection.
    pub(crate) async fn close_readers(&self) {
        self.hot.close().await;
        self.hot_writer.close().await;
        self.reader.close().await;
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.settings.path
    }

    pub(crate) fn encrypted(&self) -> bool {
        self.settings.key.is_some()
    }

    /// The writer connection itself, for work that sets a connection pragma
    /// around its transaction (`synchronous`, locking mode) or runs outside one
    /// (`VACUUM`).
    pub(crate) async fn sqlx_writer_conn(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>> {
        self.writer.acquire().await.map_err(closed_or)
    }

    /// The statement that puts a connection back to the configured
    /// `synchronous` after a commit made with `FULL`.
    pub(crate) fn synchronous_pragma(&self) -> &'static str {
        match self.settings.synchronous {
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            Synchronous::Full => "PRAGMA synchronous = FULL",
        }
    }

    /// The sqlx read pool (`query_only`), for scans and admin queries.
    pub(crate) fn sqlx_reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// One connection of the sqlx read pool, for several statements in a
    /// row; a closed pool is [`Error::Closed`].
    pub(crate) async fn sqlx_reader_conn(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>> {
        self.reader.acquire().await.map_err(closed_or)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the hot rusqlite
    /// writer, on this thread, and returns once it has committed. For a
    /// short write a request waits on: it saves sqlx's thread hops (and a
    /// ping on the worker each time a pooled connection is given back), and
    /// writes that arrive together share one commit (group commit, see
    /// [`writer`]); `f` runs inside a savepoint then, so a failure undoes
    /// its own writes only. The hot writer and the sqlx writer take turns
    /// through SQLite's write lock, as two processes would; while another
    /// connection holds it, this task yields to the runtime and tries again:
    /// the holder may be this process's own flush, which needs this thread
    /// to commit. The commit blocks the thread for an fsync under
    /// `synchronous=FULL`.
    pub(crate) async fn write_here<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        self.hot_writer.with(f).await
    }

    /// How many writes [`Store::write_here`] made, and in how many commits.
    pub(crate) fn hot_write_counts(&self) -> (u64, u64) {
        self.hot_writer.counts()
    }

    /// Runs a point lookup on a rusqlite reader, on this thread. It never
    /// opens a connection here and never waits for the write lock (see
    /// [`readers`]); keep `f` to work that does not grow with the file.
    pub(crate) fn read_here<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.hot.with(f)
    }

    /// Runs `f` in one read transaction on a rusqlite reader, on this
    /// thread: every statement in it reads the file as of the first one,
    /// whatever commits meanwhile (WAL). For reads that must agree with each
    /// other (a user's export); run it on the blocking pool when what it
    /// reads can be large. `f` must read through the connection it is given
    /// only: it holds a reader, and with one reader open (or the first one,
    /// which the change feed's check uses) another read would wait for it
    /// forever.
    pub(crate) fn read_snapshot<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        self.hot.with(|conn| {
            let snapshot = conn.unchecked_transaction()?;
            Ok(f(&snapshot))
        })?
    }

    /// A write transaction that takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that later turns into a write fails with
    /// SQLITE_BUSY at once, whatever the busy timeout, while another process
    /// holds the lock.
    ///
    /// The hot writer stays idle while the lock is taken (see
    /// [`Store::idle_hot_writer`]), so that under a stream of request-path
    /// writes a flush still gets the lock at once.
    pub(crate) async fn sqlx_transaction(&self) -> Result<Transaction<'static, Sqlite>> {
        let _idle = self.idle_hot_writer().await;
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(closed_or)
    }

    /// Keeps the hot writer idle until the guard drops, having committed
    /// what it holds (see [`HotWriter::hold`]): take it before the writer
    /// connection, and give it to [`Store::immediate`]. Taken in that order
    /// only (this, then the sqlx writer), so that no task waits for one
    /// while holding the other the wrong way round.
    ///
    /// `None` while the sqlx writer connection is in use (a backup, an
    /// erasure, another transaction): the caller will wait for it, and
    /// holding the hot writer meanwhile would stall every request's writes
    /// for as long as that work takes.
    pub(crate) async fn idle_hot_writer(&self) -> Option<Held<'_>> {
        let free = self.writer.num_idle() > 0 || self.writer.size() == 0;
        if free {
            Some(self.hot_writer.hold().await)
        } else {
            None
        }
    }

    /// Runs `work` in a `BEGIN IMMEDIATE` transaction on a writer
    /// connection the caller holds (for work that sets a connection pragma
    /// around its transaction): committed if it succeeds, rolled back if it
    /// or the commit fails. `idle` (from [`Store::idle_hot_writer`], taken
    /// before `conn`) is released once the lock is taken.
    pub(crate) async fn immediate<T>(
        &self,
        conn: &mut sqlx::SqliteConnection,
        idle: Option<Held<'_>>,
        work: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        drop(idle);
        let result = match work(&mut *conn).await {
            Ok(value) => sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map(|_| value)
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        result
    }

    /// The writer pool (one connection), for a single statement that runs
    /// in its own (autocommit) transaction: SQLite takes the write lock
    /// before the statement reads anything, as `BEGIN IMMEDIATE` would, and
    /// it costs one hop to the connection's thread instead of three.
    pub(crate) fn sqlx_writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Returns free pages to the file system (`PRAGMA incremental_vacuum`)
    /// and folds the WAL into the file without waiting for readers (`PRAGMA
    /// wal_checkpoint(PASSIVE)`). Returns the pages freed.
    pub(crate) async fn give_back_space(&self) -> Result<i64> {
        let mut conn = self.writer.acquire().await.map_err(closed_or)?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(&mut *conn)
            .await?;
        let left: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *conn)
            .await?;
        Ok(free - left)
    }

    /// Leaves no copy of deleted rows in the file or its WAL, on the writer
    /// connection `conn` (outside any transaction).
    ///
    /// `secure_delete` zeroes a deleted cell and a freed page, but not every
    /// copy SQLite made before: when a b-tree page is rebuilt (a split, a row
    /// that grew), cells that moved elsewhere stay behind in the page's
    /// unallocated gap, and the WAL keeps every page's older images. So:
    /// 1. `VACUUM` rewrites every page from the live rows alone. It holds the
    ///    write lock meanwhile, and builds the copy in memory: the bundled
    ///    SQLCipher keeps temporary databases there (`SQLITE_TEMP_STORE=2`),
    ///    so no plaintext reaches a temporary file;
    /// 2. `wal_checkpoint(TRUNCATE)` copies the WAL into the file and empties
    ///    it. It waits for readers up to the busy timeout (SQLite's busy
    ///    handler), and is tried again while another connection runs a
    ///    checkpoint of its own, which SQLite does not wait for. A reader that
    ///    still holds an older snapshot after that gives
    ///    [`Error::ErasureIncomplete`].
    pub(crate) async fn purge(&self, conn: &mut sqlx::SqliteConnection) -> Result<()> {
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *conn)
                .await?;
            let waited = started.elapsed();
            if busy == 0 {
                return Ok(());
            }
            if waited >= self.settings.busy_timeout {
                return Err(Error::ErasureIncomplete {
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }

    /// What the file has applied.
    pub(crate) fn applied(&self) -> Result<Applied> {
        self.read_here(Applied::read)
    }

    /// Applies pending migrations. Another process may be migrating the same
    /// file at the same moment; if a run fails and the file turns out to be
    /// migrated after all, that is success.
    pub(crate) async fn migrate(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let applied = self.applied()?;
            applied.validate()?;
            if !applied.pending() {
                return Ok(());
            }
            match migrate::MIGRATOR.run(&self.writer).await {
                Ok(()) => return Ok(()),
                // A migration that read the schema before another process
                // committed its own fails at once with SQLITE_BUSY; look again
                // after a pause, for as long as the busy timeout allows.
                Err(e) if started.elapsed() < self.settings.busy_timeout => {
                    tracing::debug!(error = %e, "migration attempt failed; checking whether another process migrated");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Closes every connection: the sqlx readers first, then the hot ones,
    /// the writer last, so that the last connection to close checkpoints
    /// the WAL into the file and removes the -wal and -shm files. That
    /// takes a read-write connection: the sqlx readers are opened read-only
    /// and, closing last (a read command never opens the writer), left
    /// both files behind. The hot readers are read-write (`query_only`).
    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.hot_writer.close().await;
        self.hot.close().await;
        self.writer.close().await;
    }
}

/// The connection settings of an existing file, without opening it.
pub(crate) fn existing_settings(spec: &OpenSpec<'_>) -> Result<SharedSettings> {
    settings(spec, false).map(|(settings, _)| settings)
}

/// Judges the file by its bytes, finds its key, and (when allowed and
/// needed) creates it; returns the connection settings and whether it was created.
fn settings(spec: &OpenSpec<'_>, create: bool) -> Result<(SharedSettings, bool)> {
    let path = spec.path;
    let kind = file::inspect(path)?;
    match (kind, spec.key) {
        (FileKind::New, _) if !create => {
            let path = path.to_owned();
            return Err(if path.exists() {
                Error::Empty { path }
            } else {
                Error::Missing { path }
            });
        }
        (FileKind::Plain, KeySource::Auto | KeySource::Key(_) | KeySource::File(_)) => {
            return Err(Error::NotEncrypted {
                path: path.to_owned(),
            });
        }
        (FileKind::Encrypted, KeySource::None) => {
            return Err(Error::KeyRequired {
                path: path.to_owned(),
            });
        }
        _ => {}
    }
    let created = kind == FileKind::New;
    let key = spec.key.resolve(path, created)?;
    if created {
        file::create_private(path)?;
    }
    let settings = Arc::new(ConnSettings {
        path: path.to_owned(),
        key,
        synchronous: spec.synchronous,
        page_cache: PageCache {
            budget: spec.page_cache_budget,
            readers: spec.readers.max(1),
        },
        busy_timeout: spec.busy_timeout,
        as_is: !created && conn::must_open_as_is(path),
    });
    Ok((settings, created))
}

async fn check_blocking(settings: SharedSettings) -> Result<CheckReport> {
    match tokio::task::spawn_blocking(move || check::check_file(&settings)).await {
        Ok(report) => report,
        Err(e) => Ok(CheckReport {
            checks: vec![Check {
                name: "check",
                ok: false,
                problems: vec![format!("the check task failed: {e}")],
                passes: 1,
            }],
        }),
    }
}

/// A sqlx pool whose connections are keyed and set up like every other.
///
/// A `query_only` pool's connections are also opened read-only: SQLCipher
/// runs `PRAGMA rekey` while the statement is prepared, past `query_only`,
/// and only a read-only connection stops it re-encrypting the file.
fn pool(settings: &SharedSettings, max: u32, query_only: bool) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(&settings.path)
        .read_only(query_only || settings.as_is)
        .immutable(settings.as_is)
        .busy_timeout(settings.busy_timeout)
        .statement_cache_capacity(128)
        .disable_statement_logging();
    let settings = settings.clone();
    SqlitePoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        // No reaper: idle connections to a local file cost nothing, and
        // sqlx's reaper can spin a core forever, and hang the exit, once its
        // idle count underflows (launchbadge/sqlx#3645; seen here in a CLI
        // `sweep` of tests/soak.rs).
        .idle_timeout(None)
        .max_lifetime(None)
        // a ping before every acquire would cost one more thread hop per query
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            let settings = settings.clone();
            Box::pin(async move {
                {
                    let mut handle = conn.lock_handle().await?;
                    // SAFETY: the locked handle guarantees the worker thread is
                    // not using the connection during the call.
                    unsafe { settings.apply_key(handle.as_raw_handle().as_ptr()) }
                        .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
                }
                let role = if query_only {
                    Role::Reader
                } else {
                    Role::Writer
                };
                let mut setup = settings.setup_sql(role);
                if query_only {
                    setup.push_str(" PRAGMA query_only = ON;");
                }
                sqlx::raw_sql(AssertSqlSafe(setup))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options)
}

/// A multi-row statement built for one call, run without sqlx keeping it
/// prepared: its text changes with the number of rows, and every size kept
/// in a connection's statement cache would hold its compiled program (tens
/// of KiB for a few hundred rows, up to the cache's 128 entries) for as long
/// as the connection lives.
pub(crate) fn one_off(
    q: &mut sqlx::QueryBuilder<Sqlite>,
) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments> {
    q.build().persistent(false)
}

/// A closed pool says `PoolClosed`; callers see [`Error::Closed`].
pub(crate) fn closed_or(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolClosed => Error::Closed,
        e => Error::from(e),
    }
}

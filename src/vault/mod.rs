//! [`Vault`]: the handle a service opens, and [`VaultOptions`], how it opens.

mod file;
mod info;
mod options;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use info::{Info, Rows, WriteCounts};
#[cfg(feature = "postgres")]
pub(crate) use options::redact_url;
pub(crate) use options::url_scheme;
pub use options::{DB_ENV, DEFAULT_DB, VaultOptions};

use crate::audit::{self, Audit, AuditEvent, EventKind};
use crate::backup::{BackupConfig, Recovery};
use crate::cache::{Cache, CacheState};
use crate::clock::{Clock, Timestamp};
use crate::core::feed::Feed;
use crate::core::{Core, Storage, lock, meta};
use crate::health::HealthState;
use crate::limits::{Limits, LimitsState};
use crate::metrics::{BoxFuture, CacheCounts, Metrics, MetricsState};
use crate::prefs::{Preferences, PreferencesConfig};
use crate::sessions::{self, Sessions};
use crate::store::{MigrationStatus, Store};
use crate::{Error, Result};

/// A handle to one vault file. Cheap to clone: clones share the connections.
///
/// Call [`close`](Vault::close) before the process exits: it flushes what is
/// buffered and closes every connection (connections still open when `main`
/// returns have crashed processes at exit with bundled SQLCipher).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// use statevault::{Vault, VaultOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// assert!(vault.is_encrypted()); // key made beside it: app.db.key
/// let info = vault.info().await?;
/// assert_eq!(info.journal_mode, "wal");
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store, clock and keyed-hash secret every facet shares.
    core: Core,
    sessions: sessions::State,
    audit: audit::State,
    preferences: PreferencesConfig,
    /// The application's preferences schema recorded in the file, used when
    /// `preferences` knows nothing ([`PreferencesConfig::record_in_file`]).
    recorded_preferences: OnceLock<PreferencesConfig>,
    /// Set to `true` to stop the background tasks; each one watches it, so
    /// none misses the signal, busy or not.
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Rate-limit buckets in memory, written behind by [`Vault::flush`].
    limits: LimitsState,
    /// The cache's L1 and write-behind buffer.
    cache: CacheState,
    /// Metric series in memory, written per interval by [`Vault::flush`].
    metrics: MetricsState,
    health: HealthState,
    /// Where the key was read from, for the health report.
    key_file: Option<PathBuf>,
    backups: BackupConfig,
    /// Set when opening fell back to a backup.
    recovery: OnceLock<Recovery>,
}

impl Drop for Inner {
    /// Dropping the last handle only signals the background tasks; `close()`
    /// is what waits for them and writes what is buffered.
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl Vault {
    /// Opens (and by default creates and migrates) the vault.
    ///
    /// Refuses, leaving the file as it was: a wrong key
    /// ([`Error::WrongKey`]), a file that is not a database, a truncated
    /// file, a schema newer than this build ([`Error::SchemaTooNew`]).
    /// With [`BackupConfig::recover_on_open`], a damaged file is instead
    /// moved aside and the newest backup that verifies is opened in its
    /// place ([`Vault::recovery`] says so).
    pub async fn open(options: VaultOptions) -> Result<Vault> {
        match Vault::open_as_is(options.clone()).await {
            Err(damage) if options.backups.recover_on_open && damage.is_damage() => {
                let recovery = Vault::recover(&options, &damage).await?;
                let vault = Vault::open_as_is(options).await?;
                if let Err(e) = vault.record_recovery(recovery).await {
                    vault.close().await?;
                    return Err(e);
                }
                Ok(vault)
            }
            opened => opened,
        }
    }

    /// Opens the file as it is, never falling back to a backup.
    pub(crate) async fn open_as_is(options: VaultOptions) -> Result<Vault> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        options.validate()?;
        let limits = LimitsState::new(&options.limits)?;
        let metrics = MetricsState::new(options.metrics.clone())?;
        let key_file = options.key_file_path();
        tracing::debug!(?options, "opening vault");
        let feed = Feed::new(options.feed_retention)?;
        let storage = open_storage(&options).await?;
        let vault = Vault {
            inner: Arc::new(Inner {
                core: Core::new(storage, options.clock, feed),
                sessions: sessions::State::new(options.sessions),
                audit: audit::State::new(options.audit),
                preferences: options.preferences,
                recorded_preferences: OnceLock::new(),
                shutdown: watch::Sender::new(false),
                tasks: Mutex::new(Vec::new()),
                limits,
                cache: CacheState::new(options.cache),
                metrics,
                health: HealthState::new(options.health),
                key_file,
                backups: options.backups,
                recovery: OnceLock::new(),
            }),
        };
        if let Err(e) = vault.finish_open(options.migrate).await {
            vault.close().await?;
            return Err(e);
        }
        vault.spawn_periodic("flush", options.flush_interval, |vault| async move {
            vault.flush().await
        });
        if let Some(every) = options.sweep_interval {
            vault.spawn_periodic("sweep", every, |vault| async move {
                vault.sweep().await.map(drop)
            });
        }
        Ok(vault)
    }

    /// Starts a task that runs `job` every `every` (real time: this is I/O
    /// scheduling, not a TTL) until the vault closes or is dropped. It holds
    /// only a weak reference, so it never keeps a dropped vault alive. A
    /// failed run is logged and retried at the next tick.
    fn spawn_periodic<F, Fut>(&self, name: &'static str, every: Duration, job: F)
    where
        F: Fn(Vault) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
        let mut shutdown = self.inner.shutdown.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(every) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = job(Vault { inner }).await {
                    tracing::warn!(task = name, error = %e, "background task failed; it runs again at the next tick");
                }
            }
        });
        lock(&self.inner.tasks).push(task);
    }

    async fn finish_open(&self, migrate: bool) -> Result<()> {
        if migrate {
            self.migrate_storage().await?;
        }
        self.settle_meta().await
    }

    /// Applies the storage's pending migrations.
    async fn migrate_storage(&self) -> Result<()> {
        match self.core().storage() {
            Storage::File(store) => store.migrate().await,
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.migrate().await.map(drop),
        }
    }

    /// Once the schema is current: records the file's origin if it has none
    /// yet, loads the keyed-hash secret and settles the preferences schema.
    async fn settle_meta(&self) -> Result<()> {
        match self.core().storage() {
            Storage::File(store) => {
                if store.applied()?.pending() {
                    return Ok(());
                }
                if self.meta(meta::CREATED_AT).await?.is_none() {
                    meta::record_creation(store, self.now(), self.is_encrypted()).await?;
                }
                self.core().load_hash_salt().await?;
                self.core().feed().start(&**store)?;
            }
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => {
                if db.pending().await? {
                    return Ok(());
                }
                self.core().load_hash_salt().await?;
                let feed = self.core().feed();
                feed.start(db.start_feed(feed.origin()).await?)?;
            }
        }
        self.settle_preferences().await
    }

    /// Records the application's preferences schema in the file, or, for a
    /// process that knows none, adopts the one recorded there.
    async fn settle_preferences(&self) -> Result<()> {
        let recorded = self.meta(meta::PREFERENCES_SCHEMA).await?;
        let config = &self.inner.preferences;
        if config.knows_nothing() {
            if let Some(text) = recorded {
                let _ = self
                    .inner
                    .recorded_preferences
                    .set(PreferencesConfig::from_recorded(&text)?);
            }
            return Ok(());
        }
        let Some(mine) = config.to_recorded() else {
            return Ok(());
        };
        let newer_recorded = recorded
            .as_deref()
            .and_then(|text| PreferencesConfig::from_recorded(text).ok())
            .is_some_and(|theirs| theirs.version() > config.version());
        if recorded.as_deref() == Some(mine.as_str()) || newer_recorded {
            return Ok(());
        }
        match self.core().storage() {
            Storage::File(store) => {
                let mut conn = store.sqlx_writer_conn().await?;
                meta::set(&mut conn, meta::PREFERENCES_SCHEMA, &mine, self.now()).await
            }
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.set_meta(meta::PREFERENCES_SCHEMA, &mine).await,
        }
    }

    /// A fact from `vault_meta`.
    pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>> {
        self.core().meta(key).await
    }

    /// The store, clock and keyed-hash secret the facets share.
    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    /// The file's connections, for what works only on the file so far.
    pub(crate) fn store(&self) -> Result<&Store> {
        self.core().store()
    }

    /// Sessions: create, validate, rotate, revoke, list.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self.core(), &self.inner.sessions)
    }

    /// The audit log: append, query, verify the chain.
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(self.core(), &self.inner.audit)
    }

    /// Preferences: per-user JSON merged over the application's defaults.
    pub fn preferences(&self) -> Preferences<'_> {
        let config = self
            .inner
            .recorded_preferences
            .get()
            .unwrap_or(&self.inner.preferences);
        Preferences::new(self.core(), config)
    }

    /// Writes every facet's buffered state now, in as few transactions as it
    /// takes (one per facet). The background task does this every
    /// `flush_interval`; call it when you need the file to have everything,
    /// for instance before another process reads it.
    #[tracing::instrument(name = "vault.flush", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn flush(&self) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async { self.flush_buffers(false).await }.await,
            crate::trace::ok,
        )
    }

    /// Flushes every facet; `last` also writes metric intervals still open.
    async fn flush_buffers(&self, last: bool) -> Result<()> {
        let sessions = self.sessions().flush().await;
        let audit = self.audit().flush().await;
        let limits = self.inner.limits.flush(self.core()).await;
        let cache = self.inner.cache.flush(self.core()).await;
        let metrics = self.inner.metrics.flush(self.core(), last).await;
        sessions.and(audit).and(limits).and(cache).and(metrics)
    }

    /// The two-level cache: L1 in memory, L2 in the vault's storage. See
    /// [`Cache`].
    pub fn cache(&self) -> Cache<'_> {
        Cache::new(self.core(), &self.inner.cache)
    }

    /// Rate limits: token buckets, violations, penalties. See [`Limits`].
    pub fn limits(&self) -> Limits<'_> {
        Limits::new(self.core(), &self.inner.limits)
    }

    /// Metrics: counters, gauges, timings; percentiles over any range;
    /// Prometheus exposition.
    pub fn metrics(&self) -> Metrics<'_> {
        Metrics::new(self.core(), &self.inner.metrics, self)
    }

    pub(crate) fn health_state(&self) -> &HealthState {
        &self.inner.health
    }

    /// The file the key was read from, if it came from one.
    pub(crate) fn key_file(&self) -> Option<&PathBuf> {
        self.inner.key_file.as_ref()
    }

    /// The database file, or a PostgreSQL database's URL without its
    /// password.
    pub fn path(&self) -> &Path {
        self.core().path()
    }

    /// Whether the file is encrypted (opened with a key). A PostgreSQL
    /// database's values are always sealed.
    pub fn is_encrypted(&self) -> bool {
        match self.core().storage() {
            Storage::File(store) => store.encrypted(),
            #[cfg(feature = "postgres")]
            Storage::Postgres(_) => true,
        }
    }

    /// How many of the writes a request waits on this handle made, and in
    /// how many commits (see [`WriteCounts`]). Zero on PostgreSQL, where
    /// each write is its own statement or transaction.
    pub fn write_counts(&self) -> WriteCounts {
        let (writes, commits) = match self.core().storage() {
            Storage::File(store) => store.hot_write_counts(),
            #[cfg(feature = "postgres")]
            Storage::Postgres(_) => (0, 0),
        };
        WriteCounts { writes, commits }
    }

    /// A keyed hash (HMAC-SHA256 under a secret random salt kept in the
    /// encrypted file) of a value that identifies a person, such as an IP
    /// address or a user agent. Equal inputs give equal hashes within one
    /// vault, so they can be compared and counted; without the salt they
    /// cannot be reversed by hashing guesses. `domain` separates uses
    /// (`"ip"`, `"user_agent"`, …).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> statevault::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let vault = statevault::Vault::open(statevault::VaultOptions::new(dir.path().join("v.db"))).await?;
    /// let a = vault.keyed_hash("ip", b"203.0.113.7")?;
    /// assert_eq!(a, vault.keyed_hash("ip", b"203.0.113.7")?);
    /// assert_ne!(a, vault.keyed_hash("user_agent", b"203.0.113.7")?);
    /// # vault.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn keyed_hash(&self, domain: &str, value: &[u8]) -> Result<[u8; 32]> {
        self.core().keyed_hash(domain, value)
    }

    /// The vault's clock, as every facet reads it.
    pub fn clock(&self) -> &dyn Clock {
        self.core().clock()
    }

    /// The vault clock's current time.
    pub fn now(&self) -> Timestamp {
        self.core().now()
    }

    /// Every migration this build has, and whether the storage has it
    /// applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        match self.core().storage() {
            Storage::File(store) => Ok(store.applied()?.status()),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.migration_status().await,
        }
    }

    /// Applies pending migrations (for vaults opened with `migrate(false)`).
    pub async fn migrate(&self) -> Result<()> {
        self.migrate_storage().await?;
        self.settle_meta().await
    }

    /// Set when this handle was opened from a backup because the file was
    /// damaged ([`BackupConfig::recover_on_open`]): which backup, and where
    /// the damaged file was moved.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.inner.recovery.get()
    }

    /// Where backups go and how long they are kept.
    pub(crate) fn backup_config(&self) -> &BackupConfig {
        &self.inner.backups
    }

    /// Remembers the recovery and records it in the audit log.
    async fn record_recovery(&self, recovery: Recovery) -> Result<()> {
        tracing::warn!(
            backup = %recovery.backup.display(),
            damaged = %recovery.damaged_file.display(),
            reason = %recovery.reason,
            "the vault file was damaged; opened from the newest backup that verifies"
        );
        self.audit()
            .append_durable(AuditEvent::new(EventKind::Admin, "vault.recover").details(
                serde_json::json!({
                    "backup": recovery.backup.display().to_string(),
                    "damaged_file": recovery.damaged_file.display().to_string(),
                    "reason": recovery.reason,
                }),
            ))
            .await?;
        let _ = self.inner.recovery.set(recovery);
        Ok(())
    }

    /// Stops the background tasks, writes what is buffered, and closes every
    /// connection. Later calls on this handle or its clones fail with
    /// [`Error::Closed`]. Idempotent. If the final write fails, the
    /// connections are closed all the same and the error is returned.
    #[tracing::instrument(name = "vault.close", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn close(&self) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                self.inner.shutdown.send_replace(true);
                // What the `metrics` facade records from now on would never be written.
                self.inner.metrics.close();
                let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
                for task in tasks {
                    // Each task ends at the signal; a panic in one is already logged.
                    let _ = task.await;
                }
                let flushed = if self.core().is_closed() {
                    Ok(())
                } else {
                    self.flush_buffers(true).await
                };
                self.core().close().await;
                flushed
            }
            .await,
            crate::trace::ok,
        )
    }
}

/// The file, or with feature `postgres` the database a `postgres://` URL
/// names: as [`Database::init`](crate::postgres::Database::init) when the
/// vault may create and migrate, as [`Database::open`](crate::postgres::Database::open)
/// otherwise, with a pool of [`VaultOptions::postgres_connections`].
async fn open_storage(options: &VaultOptions) -> Result<Storage> {
    #[cfg(feature = "postgres")]
    if let Some(url) = options.postgres_url() {
        use crate::postgres::Database;
        let key = options.key_origin();
        let connections = options.postgres_connections;
        let db = if options.migrate && options.create_if_missing {
            Database::init_with(url, key, connections).await?.0
        } else {
            Database::open_with(url, key, connections).await?
        };
        return Ok(Storage::Postgres(db));
    }
    Ok(Storage::File(Box::new(Store::open(options.spec()).await?)))
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path())
            .field("encrypted", &self.is_encrypted())
            .finish_non_exhaustive()
    }
}

/// The vault tells metrics what the other facets know.
impl crate::metrics::Sources for Vault {
    fn active_sessions(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move { self.sessions().count_live().await })
    }

    fn cache_counts(&self) -> BoxFuture<'_, Result<CacheCounts>> {
        Box::pin(async move {
            let stats = self.cache().stats().await?;
            let (l1, l2) = (&stats.l1, &stats.l2);
            Ok(CacheCounts {
                levels: [
                    ("l1", l1.hits, l1.misses, l1.evictions, l1.entries, l1.bytes),
                    ("l2", l2.hits, l2.misses, l2.evictions, l2.entries, l2.bytes),
                ],
                hit_ratio: stats.hit_ratio,
            })
        })
    }
}

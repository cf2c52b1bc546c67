//! [`Vault`]: the handle a service opens, and [`VaultOptions`], how it opens.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::audit::{self, Audit, AuditConfig, AuditEvent, EventKind};
use crate::backup::{BackupConfig, Recovery};
use crate::cache::{CacheConfig, CacheState};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::health::{HealthConfig, HealthState};
use crate::key::{KEY_ENV, Key, KeySource, default_key_file};
use crate::limits::{LimitsConfig, LimitsState};
use crate::metrics::{Metrics, MetricsConfig, MetricsState};
use crate::prefs::{Preferences, PreferencesConfig};
use crate::sessions::{self, SessionConfig, Sessions};
use crate::store::{self, CheckReport, MigrationStatus, OpenSpec, Store, Synchronous};
use crate::{Error, Result};

/// The environment variable naming the default database path.
pub const DB_ENV: &str = "STATEVAULT_DB";
/// The database path used when neither a path nor `STATEVAULT_DB` is given.
pub const DEFAULT_DB: &str = "statevault.db";

/// How to open a [`Vault`]. Every setting has a default; see each method.
#[derive(Clone)]
pub struct VaultOptions {
    path: PathBuf,
    key: KeySource,
    create_if_missing: bool,
    migrate: bool,
    synchronous: Synchronous,
    readers: usize,
    cache_bytes: u64,
    busy_timeout: Duration,
    flush_interval: Duration,
    sweep_interval: Option<Duration>,
    clock: Arc<dyn Clock>,
    sessions: SessionConfig,
    audit: AuditConfig,
    preferences: PreferencesConfig,
    limits: LimitsConfig,
    cache: CacheConfig,
    metrics: MetricsConfig,
    health: HealthConfig,
    backups: BackupConfig,
}

impl VaultOptions {
    /// Options for the database at `path`: key from [`KeySource::Auto`],
    /// created (with its key file) if missing, migrated on open,
    /// `synchronous=NORMAL`, 4 readers, a 64 MiB page cache per connection, a
    /// 5 s busy timeout, buffered writes flushed every second, the system
    /// clock, and each facet's default configuration.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VaultOptions {
            path: path.into(),
            key: KeySource::Auto,
            create_if_missing: true,
            migrate: true,
            synchronous: Synchronous::Normal,
            readers: 4,
            cache_bytes: 64 << 20,
            busy_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_secs(1),
            sweep_interval: Some(Duration::from_secs(3600)),
            clock: Arc::new(SystemClock),
            sessions: SessionConfig::default(),
            audit: AuditConfig::default(),
            preferences: PreferencesConfig::default(),
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            backups: BackupConfig::default(),
        }
    }

    /// Options for the default database: `$STATEVAULT_DB`, else `statevault.db`.
    pub fn from_env() -> Self {
        VaultOptions::new(
            std::env::var_os(DB_ENV).map_or_else(|| PathBuf::from(DEFAULT_DB), PathBuf::from),
        )
    }

    /// Where the key comes from (default [`KeySource::Auto`]).
    pub fn key_source(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Encrypt with this key.
    pub fn key(self, key: Key) -> Self {
        self.key_source(KeySource::Key(key))
    }

    /// Read the key from this file.
    pub fn key_file(self, path: impl Into<PathBuf>) -> Self {
        self.key_source(KeySource::File(path.into()))
    }

    /// No encryption: a plain SQLite file, readable by any SQLite tool.
    pub fn no_encryption(self) -> Self {
        self.key_source(KeySource::None)
    }

    /// Create the database (and, with [`KeySource::Auto`], its key file) if
    /// it does not exist (default `true`).
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create_if_missing = yes;
        self
    }

    /// Apply pending migrations on open (default `true`).
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    /// `synchronous` for every connection (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How many hot-path reader connections (1–64, default 4).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// SQLite page cache per connection, in bytes (at least 64 KiB, default
    /// 64 MiB). SQLCipher decrypts and checks every page it reads from the
    /// OS, so a cache that holds the working set saves that work.
    pub fn page_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// How long to wait for another process's write lock (at most 1 h,
    /// default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often buffered writes (last-seen touches, …) are written to the
    /// file by the vault's background task (10 ms – 1 h, default 1 s). A
    /// crash loses at most this much of them; [`Vault::close`] and
    /// [`Vault::flush`] write them at once.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// How often the vault's background task runs retention
    /// ([`Vault::sweep`]); `None` leaves it to the application or to
    /// `statevault sweep` (at least 1 s; default hourly).
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// How sessions behave (default [`SessionConfig::default`]).
    pub fn sessions(mut self, config: SessionConfig) -> Self {
        self.sessions = config;
        self
    }

    /// The audit log's retention and limits (default [`AuditConfig::default`]).
    pub fn audit(mut self, config: AuditConfig) -> Self {
        self.audit = config;
        self
    }

    /// The application's preference defaults, schema version and upgrades
    /// (default: no defaults, any keys).
    pub fn preferences(mut self, config: PreferencesConfig) -> Self {
        self.preferences = config;
        self
    }

    /// The clock every facet reads (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The rate limits (default [`LimitsConfig::default`], the seeds'
    /// limits); validated when the vault opens.
    pub fn limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// How the two-level cache is sized (default [`CacheConfig::default`]).
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// How metrics are aggregated and kept (default [`MetricsConfig::default`]).
    pub fn metrics(mut self, config: MetricsConfig) -> Self {
        self.metrics = config;
        self
    }

    /// The health report's thresholds (default [`HealthConfig::default`]).
    pub fn health(mut self, config: HealthConfig) -> Self {
        self.health = config;
        self
    }

    /// Where backups go, how long they are kept, and whether opening a
    /// damaged file falls back to the newest good one (default
    /// [`BackupConfig::default`]: `backups/` beside the file, 7 days, no
    /// recovery).
    pub fn backups(mut self, config: BackupConfig) -> Self {
        self.backups = config;
        self
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the key comes from, as set by [`VaultOptions::key_source`] (or
    /// a [`crate::Config`]).
    pub fn key_origin(&self) -> &KeySource {
        &self.key
    }

    /// The key as configured (read from its file or the environment).
    pub(crate) fn resolve_key(&self) -> Result<Option<Key>> {
        self.key.resolve(&self.path, false)
    }

    pub(crate) fn backup_config(&self) -> &BackupConfig {
        &self.backups
    }

    pub(crate) fn clock_now(&self) -> Timestamp {
        self.clock.now()
    }

    /// How an existing file at this path would be opened (its key found).
    pub(crate) fn resolve_settings(&self) -> Result<crate::store::SharedSettings> {
        self.validate()?;
        crate::store::existing_settings(&self.spec())
    }

    /// The key file this vault's key is read from, if it comes from one.
    fn key_file_path(&self) -> Option<PathBuf> {
        match &self.key {
            KeySource::File(path) => Some(path.clone()),
            KeySource::Auto if std::env::var_os(KEY_ENV).is_none() => {
                Some(default_key_file(&self.path))
            }
            _ => None,
        }
    }

    fn spec(&self) -> OpenSpec<'_> {
        OpenSpec {
            path: &self.path,
            key: &self.key,
            create_if_missing: self.create_if_missing,
            synchronous: self.synchronous,
            cache_bytes: self.cache_bytes,
            busy_timeout: self.busy_timeout,
            readers: self.readers,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.readers) {
            return Err(Error::invalid(
                "readers",
                format!("{} is not in 1..=64", self.readers),
            ));
        }
        if self.cache_bytes < 64 << 10 {
            return Err(Error::invalid(
                "page_cache_bytes",
                format!("{} is less than 64 KiB", self.cache_bytes),
            ));
        }
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid("busy_timeout", "longer than an hour"));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid("path", "empty"));
        }
        if self
            .sweep_interval
            .is_some_and(|every| every < Duration::from_secs(1))
        {
            return Err(Error::invalid("sweep_interval", "shorter than a second"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.flush_interval) {
            return Err(Error::invalid(
                "flush_interval",
                "not between 10 ms and 1 h",
            ));
        }
        self.sessions.validate()?;
        self.audit.validate()?;
        self.preferences.validate()?;
        self.metrics.validate()?;
        self.health.validate()?;
        self.cache.validate()
    }
}

impl fmt::Debug for VaultOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultOptions")
            .field("path", &self.path)
            .field("key", &self.key)
            .field("create_if_missing", &self.create_if_missing)
            .field("migrate", &self.migrate)
            .field("synchronous", &self.synchronous)
            .field("readers", &self.readers)
            .field("cache_bytes", &self.cache_bytes)
            .field("busy_timeout", &self.busy_timeout)
            .field("flush_interval", &self.flush_interval)
            .field("sweep_interval", &self.sweep_interval)
            .field("sessions", &self.sessions)
            .field("audit", &self.audit)
            .field("preferences", &self.preferences)
            .field("limits", &self.limits)
            .field("metrics", &self.metrics)
            .field("health", &self.health)
            .field("backups", &self.backups)
            .finish_non_exhaustive()
    }
}

/// A `vault_meta` value as text (read as a BLOB, since the column may hold
/// bytes that are not UTF-8), or the error naming its row.
pub(crate) fn meta_text(key: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| bad_meta(key, "is not UTF-8 text"))
}

/// The error for a `vault_meta` row the vault cannot use: it names the row.
pub(crate) fn bad_meta(key: &str, problem: impl std::fmt::Display) -> Error {
    Error::invalid("vault_meta", format!("{key} {problem} (fix that row)"))
}

/// The `vault_meta` key of the application's preferences schema.
const PREFERENCES_SCHEMA: &str = "preferences_schema";

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
    store: Store,
    clock: Arc<dyn Clock>,
    /// The secret behind [`Vault::keyed_hash`], from `vault_meta`
    /// (`hash_salt`); set once the schema exists.
    hash_salt: OnceLock<Zeroizing<[u8; 32]>>,
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
                let recovery = crate::backup::recover(&options, &damage).await?;
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
        let store = Store::open(options.spec()).await?;
        let vault = Vault {
            inner: Arc::new(Inner {
                store,
                clock: options.clock,
                hash_salt: OnceLock::new(),
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
            self.store().migrate().await?;
        }
        if self.meta("created_at")?.is_none() && !self.store().applied()?.pending() {
            self.record_creation().await?;
        }
        self.load_hash_salt()?;
        self.settle_preferences().await
    }

    /// Records the application's preferences schema in the file, or, for a
    /// process that knows none, adopts the one recorded there.
    async fn settle_preferences(&self) -> Result<()> {
        if self.store().applied()?.pending() {
            return Ok(());
        }
        let recorded = self.meta(PREFERENCES_SCHEMA)?;
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
        sqlx::query(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(PREFERENCES_SCHEMA)
        .bind(mine)
        .bind(self.now())
        .execute(self.store().writer())
        .await
        .map_err(crate::store::closed_or)?;
        Ok(())
    }

    /// Loads the keyed-hash secret; a file created or adopted by this build
    /// has one from [`Vault::record_creation`].
    fn load_hash_salt(&self) -> Result<()> {
        if let Some(hex) = self.meta("hash_salt")? {
            let salt = crate::key::parse_hex32(&hex)
                .ok_or_else(|| bad_meta("hash_salt", "is not 64 hex digits"))?;
            let _ = self.inner.hash_salt.set(salt);
        }
        Ok(())
    }

    /// Writes the facts `info` shows about the file's origin, once.
    async fn record_creation(&self) -> Result<()> {
        let now = self.now();
        let created_by = format!("statevault {}", env!("CARGO_PKG_VERSION"));
        let mut tx = self.store().begin_write().await?;
        sqlx::query!(
            "INSERT INTO vault_meta (key, value, updated_at)
             VALUES ('created_at', ?1, ?1), ('created_by', ?2, ?1)
             ON CONFLICT (key) DO NOTHING",
            now,
            created_by,
        )
        .execute(&mut *tx)
        .await?;
        let salt = Key::generate()?
            .raw_bytes()
            .map(|bytes| crate::key::hex(bytes.as_slice()))
            .ok_or_else(|| Error::invalid("hash_salt", "generated key is not raw"))?;
        sqlx::query!(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES ('hash_salt', ?1, ?2)
             ON CONFLICT (key) DO NOTHING",
            *salt,
            now,
        )
        .execute(&mut *tx)
        .await?;
        if self.is_encrypted() {
            sqlx::query!(
                "INSERT INTO vault_meta (key, value, updated_at) VALUES ('key_created_at', ?1, ?1)
                 ON CONFLICT (key) DO NOTHING",
                now,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A fact from `vault_meta`, read on this thread.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>> {
        let bytes: Option<Vec<u8>> = self.store().read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT CAST(value AS BLOB) FROM vault_meta WHERE key = ?1")?;
            let mut rows = stmt.query([key])?;
            rows.next()?.map(|row| row.get(0)).transpose()
        })?;
        bytes.map(|bytes| meta_text(key, bytes)).transpose()
    }

    pub(crate) fn cache_state(&self) -> &CacheState {
        &self.inner.cache
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Sessions: create, validate, rotate, revoke, list.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self, &self.inner.sessions)
    }

    /// The audit log: append, query, verify the chain.
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(self, &self.inner.audit)
    }

    /// Preferences: per-user JSON merged over the application's defaults.
    pub fn preferences(&self) -> Preferences<'_> {
        let config = self
            .inner
            .recorded_preferences
            .get()
            .unwrap_or(&self.inner.preferences);
        Preferences::new(self, config)
    }

    /// Writes every facet's buffered state now, in as few transactions as it
    /// takes (one per facet). The background task does this every
    /// `flush_interval`; call it when you need the file to have everything,
    /// for instance before another process reads it.
    pub async fn flush(&self) -> Result<()> {
        self.flush_buffers(false).await
    }

    /// Flushes every facet; `last` also writes metric intervals still open.
    async fn flush_buffers(&self, last: bool) -> Result<()> {
        let sessions = self.sessions().flush().await;
        let audit = self.audit().flush().await;
        let limits = self.inner.limits.flush(self).await;
        let cache = self.inner.cache.flush(self).await;
        let metrics = self.inner.metrics.flush(self, last).await;
        sessions.and(audit).and(limits).and(cache).and(metrics)
    }

    /// Metrics: counters, gauges, timings; percentiles over any range;
    /// Prometheus exposition.
    pub fn metrics(&self) -> Metrics<'_> {
        Metrics::new(self, &self.inner.metrics)
    }

    pub(crate) fn health_state(&self) -> &HealthState {
        &self.inner.health
    }

    /// The file the key was read from, if it came from one.
    pub(crate) fn key_file(&self) -> Option<&PathBuf> {
        self.inner.key_file.as_ref()
    }

    pub(crate) fn limits_state(&self) -> &LimitsState {
        &self.inner.limits
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.store().path()
    }

    /// Whether the file is encrypted (opened with a key).
    pub fn is_encrypted(&self) -> bool {
        self.store().encrypted()
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
        use hmac::{KeyInit, Mac};
        let salt = self
            .inner
            .hash_salt
            .get()
            .ok_or_else(|| Error::invalid("vault", "not migrated yet: no hash salt"))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(salt.as_slice())
            .map_err(|_| Error::invalid("hash_salt", "rejected by HMAC"))?;
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        Ok(mac.finalize().into_bytes().into())
    }

    /// The vault's clock, as every facet reads it.
    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// The vault clock's current time.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The vault clock's [`now_coarse`](Clock::now_coarse).
    pub(crate) fn now_coarse(&self) -> Timestamp {
        self.inner.clock.now_coarse()
    }

    /// Every migration this build has, and whether the file has it applied.
    pub fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        Ok(self.store().applied()?.status())
    }

    /// Applies pending migrations (for vaults opened with `migrate(false)`).
    pub async fn migrate(&self) -> Result<()> {
        self.store().migrate().await?;
        if self.meta("created_at")?.is_none() {
            self.record_creation().await?;
        }
        self.load_hash_salt()?;
        self.settle_preferences().await
    }

    /// What the file is: size, encryption, journal mode, schema, rows per table.
    pub async fn info(&self) -> Result<Info> {
        let mut conn = self
            .store()
            .reader()
            .acquire()
            .await
            .map_err(store::closed_or)?;
        let cipher_version: Option<String> = sqlx::query_scalar("PRAGMA cipher_version")
            .fetch_optional(&mut *conn)
            .await?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut tables = BTreeMap::new();
        for name in names {
            // Table names come from sqlite_schema, quoted as identifiers.
            let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
            let rows: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?;
            tables.insert(name, rows);
        }
        drop(conn);
        let applied = self.store().applied()?;
        let files = crate::metrics::file_sizes(self);
        Ok(Info {
            path: self.path().to_owned(),
            file_bytes: files.file_bytes,
            wal_bytes: files.wal_bytes,
            encrypted: self.is_encrypted(),
            cipher_version,
            journal_mode,
            schema_version: applied.version(),
            latest_schema_version: store::latest_version(),
            created_at: self.meta("created_at")?,
            key_created_at: self.meta("key_created_at")?,
            tables,
        })
    }

    /// Integrity checks of the file: SQLCipher's `cipher_integrity_check`
    /// (every page's HMAC) when encrypted, then SQLite's `integrity_check` and
    /// `foreign_key_check`. A check that cannot even run counts as failed.
    pub async fn check(&self) -> Result<CheckReport> {
        if self.store().reader().is_closed() {
            return Err(Error::Closed);
        }
        self.store().check().await
    }

    /// Checks the file at `options`' path without opening it as a vault, so
    /// that files too damaged to open still get a report naming what is
    /// wrong. Writes nothing, creates nothing.
    pub async fn check_file(options: &VaultOptions) -> Result<CheckReport> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        options.validate()?;
        Store::check_file(options.spec()).await
    }

    /// Runs one statement on a read-only connection and returns every row.
    /// Only `SELECT`, `WITH`, `VALUES`, `EXPLAIN` and the PRAGMAs that only
    /// read are run; anything else (a write, `VACUUM`, `ATTACH`, a key or
    /// setting PRAGMA, a second statement) is [`Error::InvalidInput`] before
    /// SQLite sees it, and a `WITH` that writes is refused by SQLite, with
    /// the same error.
    pub async fn query_read_only(&self, sql: &str) -> Result<Rows> {
        crate::read_only_sql::check(sql)?;
        let mut conn = self
            .store()
            .reader()
            .acquire()
            .await
            .map_err(store::closed_or)?;
        let writes = |e: sqlx::Error| {
            let read_only = e
                .as_database_error()
                .and_then(|db| db.code()?.parse::<i32>().ok())
                .is_some_and(|code| code & 0xff == libsqlite3_sys::SQLITE_READONLY);
            if read_only {
                crate::read_only_sql::refused("the statement writes")
            } else {
                Error::from(e)
            }
        };
        let stmt = conn
            .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .map_err(writes)?;
        let columns = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        let rows = stmt
            .query()
            .fetch_all(&mut *conn)
            .await
            .map_err(writes)?
            .iter()
            .map(|row| (0..row.len()).map(|i| json_value(row, i)).collect())
            .collect::<Result<_>>()?;
        Ok(Rows { columns, rows })
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
    pub async fn close(&self) -> Result<()> {
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            // Each task ends at the signal; a panic in one is already logged.
            let _ = task.await;
        }
        let flushed = if self.store().reader().is_closed() {
            Ok(())
        } else {
            self.flush_buffers(true).await
        };
        self.store().close().await;
        flushed
    }
}

/// Locks a std mutex, ignoring poisoning: the data it guards stays valid
/// whatever a panicking holder was doing.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path())
            .field("encrypted", &self.is_encrypted())
            .finish_non_exhaustive()
    }
}

/// A SQLite value as JSON: integers and reals as numbers, text as strings,
/// blobs as `x'<hex>'` strings (the SQL literal form).
fn json_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<serde_json::Value> {
    use serde_json::Value;
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" => Value::from(row.try_get_unchecked::<i64, _>(i)?),
        "REAL" => Value::from(row.try_get_unchecked::<f64, _>(i)?),
        "BLOB" => {
            let bytes = row.try_get_unchecked::<Vec<u8>, _>(i)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Value::from(format!("x'{hex}'"))
        }
        _ => Value::from(row.try_get_unchecked::<String, _>(i)?),
    })
}

/// What [`Vault::info`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The database file.
    pub path: PathBuf,
    /// Its size in bytes (without the WAL).
    pub file_bytes: u64,
    /// The size of its `-wal` file (0 when there is none).
    pub wal_bytes: u64,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// SQLCipher's version (`PRAGMA cipher_version`).
    pub cipher_version: Option<String>,
    /// The journal mode, `wal` for a vault.
    pub journal_mode: String,
    /// The newest migration applied to the file.
    pub schema_version: i64,
    /// The newest migration this build has.
    pub latest_schema_version: i64,
    /// When statevault first created or adopted the file.
    pub created_at: Option<String>,
    /// When the current key was set.
    pub key_created_at: Option<String>,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
}

/// Rows from [`Vault::query_read_only`].
#[derive(Debug, Clone, Serialize)]
pub struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One vector of values per row, in column order.
    pub rows: Vec<Vec<serde_json::Value>>,
}

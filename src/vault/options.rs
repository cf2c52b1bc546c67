//! [`VaultOptions`](crate::VaultOptions): how a [`Vault`](super::Vault) opens, with a default for every setting.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditConfig;
use crate::backup::BackupConfig;
use crate::cache::CacheConfig;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::health::HealthConfig;
use crate::key::{KEY_ENV, Key, KeySource, default_key_file};
use crate::limits::LimitsConfig;
use crate::metrics::MetricsConfig;
use crate::prefs::PreferencesConfig;
use crate::sessions::SessionConfig;
use crate::store::{OpenSpec, Synchronous};
use crate::{Error, Result};

/// The environment variable naming the default database path.
pub const DB_ENV: &str = "STATEVAULT_DB";
/// The database path used when neither a path nor `STATEVAULT_DB` is given.
pub const DEFAULT_DB: &str = "statevault.db";

/// The page cache budget of a vault, unless set otherwise: enough to keep
/// the upper levels of every index and the hot leaves of a small file
/// decrypted; docs/operations.md says when to raise it.
const DEFAULT_PAGE_CACHE_BUDGET: u64 = 8 << 20;
/// The smallest page cache budget: below it each connection would fall back
/// to the floor of a few pages, whatever the budget said.
const MIN_PAGE_CACHE_BUDGET: u64 = 1 << 20;

/// How to open a [`Vault`](crate::Vault). Every setting has a default; see each method.
#[derive(Clone)]
pub struct VaultOptions {
    pub(super) path: PathBuf,
    pub(super) key: KeySource,
    pub(super) create_if_missing: bool,
    pub(super) migrate: bool,
    pub(super) synchronous: Synchronous,
    pub(super) readers: usize,
    pub(super) postgres_connections: u32,
    pub(super) page_cache_budget: u64,
    pub(super) busy_timeout: Duration,
    pub(super) flush_interval: Duration,
    pub(super) sweep_interval: Option<Duration>,
    pub(super) feed_retention: Duration,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sessions: SessionConfig,
    pub(super) audit: AuditConfig,
    pub(super) preferences: PreferencesConfig,
    pub(super) limits: LimitsConfig,
    pub(super) cache: CacheConfig,
    pub(super) metrics: MetricsConfig,
    pub(super) health: HealthConfig,
    pub(super) backups: BackupConfig,
}

impl VaultOptions {
    /// Options for the database at `path`: key from [`KeySource::Auto`],
    /// created (with its key file) if missing, migrated on open,
    /// `synchronous=NORMAL`, 4 readers, an 8 MiB page cache budget for the
    /// whole vault, a 5 s busy timeout, buffered writes flushed every second, the system
    /// clock, and each facet's default configuration.
    ///
    /// `path` is a file path: opening refuses a URL such as `postgres://…`
    /// with [`Error::InvalidInput`] instead of taking it for a path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VaultOptions {
            path: path.into(),
            key: KeySource::Auto,
            create_if_missing: true,
            migrate: true,
            synchronous: Synchronous::Normal,
            readers: 4,
            postgres_connections: DEFAULT_POSTGRES_CONNECTIONS,
            page_cache_budget: DEFAULT_PAGE_CACHE_BUDGET,
            busy_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_secs(1),
            sweep_interval: Some(Duration::from_secs(3600)),
            feed_retention: Duration::from_secs(60),
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

    /// With a `postgres://` URL: the most connections the vault's pool
    /// opens (1–1024, default 16). The server's `max_connections` bounds
    /// their sum over every instance.
    pub fn postgres_connections(mut self, connections: u32) -> Self {
        self.postgres_connections = connections;
        self
    }

    /// The page caches of all the vault's connections together, in bytes
    /// (at least 1 MiB, default 8 MiB).
    ///
    /// SQLCipher decrypts and checks every page it reads from the OS, so a
    /// cache that holds the working set saves that work; but SQLite gives
    /// each connection a cache of its own, so the budget is split: a quarter
    /// for the writer, half among the hot-path readers, the rest for the
    /// other connections (docs/operations.md has the split and what a vault
    /// costs in memory). A cache only grows as pages are read: a budget
    /// above the file's size costs no more than the file. Raise it when
    /// requests read a larger working set: each hot reader's share (an
    /// eighth of the budget with 4 readers) should hold the pages that
    /// requests touch again and again.
    pub fn page_cache_budget(mut self, bytes: u64) -> Self {
        self.page_cache_budget = bytes;
        self
    }

    /// The page cache budget of the whole vault, in bytes: the same as
    /// [`VaultOptions::page_cache_budget`]. This option once sized each
    /// connection's cache on its own, so that a vault used up to ten times
    /// the figure; a value chosen for that now caps the whole vault.
    #[deprecated(
        since = "0.1.0",
        note = "use `page_cache_budget`: the budget is for the whole vault, no longer per connection"
    )]
    pub fn page_cache_bytes(self, bytes: u64) -> Self {
        self.page_cache_budget(bytes)
    }

    /// How long to wait for another process's write lock (at most 1 h,
    /// default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often buffered writes (last-seen touches, …) are written to the
    /// file by the vault's background task (10 ms – 1 h, default 1 s). A
    /// crash loses at most this much of them; [`Vault::close`](crate::Vault::close) and
    /// [`Vault::flush`](crate::Vault::flush) write them at once.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// How often the vault's background task runs retention
    /// ([`Vault::sweep`](crate::Vault::sweep)); `None` leaves it to the application or to
    /// `statevault sweep` (at least 1 s; default hourly).
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// How long the change feed keeps a record (1 s – 1 day, default one
    /// minute). Another handle on the file that has not looked at a facet
    /// for longer than this may find records it had not read trimmed; it
    /// then drops what that facet holds in memory, so it is never stale,
    /// only colder. Longer keeps more rows in the file: one per cached key
    /// flushed, per session token changed, per limit reset.
    pub fn feed_retention(mut self, keep: Duration) -> Self {
        self.feed_retention = keep;
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

    /// The database as a PostgreSQL URL (`postgres://…`, `postgresql://…`),
    /// if it names a server rather than a file. A vault refuses it when it
    /// opens; `statevault::postgres::Database` takes it (feature
    /// `postgres`).
    pub fn postgres_url(&self) -> Option<&str> {
        url_scheme(&self.path).filter(|scheme| is_postgres(scheme))?;
        self.path.to_str()
    }

    /// Where the key comes from, as set by [`VaultOptions::key_source`](crate::VaultOptions::key_source) (or
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
    pub(super) fn key_file_path(&self) -> Option<PathBuf> {
        match &self.key {
            KeySource::File(path) => Some(path.clone()),
            KeySource::Auto if std::env::var_os(KEY_ENV).is_none() => {
                Some(default_key_file(&self.path))
            }
            _ => None,
        }
    }

    pub(super) fn spec(&self) -> OpenSpec<'_> {
        OpenSpec {
            path: &self.path,
            key: &self.key,
            create_if_missing: self.create_if_missing,
            synchronous: self.synchronous,
            page_cache_budget: self.page_cache_budget,
            busy_timeout: self.busy_timeout,
            readers: self.readers,
        }
    }

    /// The path for `Debug` and logs: a URL without its password.
    fn shown_path(&self) -> String {
        match self.path.to_str() {
            Some(url) if url_scheme(&self.path).is_some() => redact_url(url),
            _ => format!("{:?}", self.path),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.postgres_connections) {
            return Err(Error::invalid(
                "postgres_connections",
                format!("{} is not in 1..=1024", self.postgres_connections),
            ));
        }
        if !(1..=64).contains(&self.readers) {
            return Err(Error::invalid(
                "readers",
                format!("{} is not in 1..=64", self.readers),
            ));
        }
        if self.page_cache_budget < MIN_PAGE_CACHE_BUDGET {
            return Err(Error::invalid(
                "page_cache_budget",
                format!("{} is less than 1 MiB", self.page_cache_budget),
            ));
        }
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid("busy_timeout", "longer than an hour"));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid("path", "empty"));
        }
        if let Some(scheme) = url_scheme(&self.path)
            && !(cfg!(feature = "postgres") && is_postgres(scheme))
        {
            return Err(Error::invalid("path", not_a_path(scheme)));
        }
        if self
            .sweep_interval
            .is_some_and(|every| every < Duration::from_secs(1))
        {
            return Err(Error::invalid("sweep_interval", "shorter than a second"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.feed_retention) {
            return Err(Error::invalid(
                "feed_retention",
                "not between 1 s and 1 day",
            ));
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
            .field("path", &format_args!("{}", self.shown_path()))
            .field("key", &self.key)
            .field("create_if_missing", &self.create_if_missing)
            .field("migrate", &self.migrate)
            .field("synchronous", &self.synchronous)
            .field("readers", &self.readers)
            .field("postgres_connections", &self.postgres_connections)
            .field("page_cache_budget", &self.page_cache_budget)
            .field("busy_timeout", &self.busy_timeout)
            .field("flush_interval", &self.flush_interval)
            .field("sweep_interval", &self.sweep_interval)
            .field("feed_retention", &self.feed_retention)
            .field("sessions", &self.sessions)
            .field("audit", &self.audit)
            .field("preferences", &self.preferences)
            .field("limits", &self.limits)
            .field("cache", &self.cache)
            .field("metrics", &self.metrics)
            .field("health", &self.health)
            .field("backups", &self.backups)
            .finish_non_exhaustive()
    }
}

/// The scheme of a path written as a URL (`postgres://…`, `sqlite://…`),
/// which must never be taken for a file path: `postgres://host/db` would
/// otherwise become a directory named `postgres:` in the current directory.
pub(crate) fn url_scheme(path: &Path) -> Option<&str> {
    let (scheme, _) = path.to_str()?.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// `url` without a password, in its user part or as a `password=`
/// parameter, for messages, logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The default of [`VaultOptions::postgres_connections`].
const DEFAULT_POSTGRES_CONNECTIONS: u32 = 16;

/// Why a URL is refused, naming its scheme only: the rest may hold a
/// password.
fn not_a_path(scheme: &str) -> String {
    if is_postgres(scheme) {
        format!(
            "{scheme}:// names a PostgreSQL server, which this build cannot use: build \
             statevault with feature `postgres`, or give a file's path"
        )
    } else {
        format!("{scheme}:// is a URL, not a file path; give the file's path without it")
    }
}

/// Whether a URL's scheme names PostgreSQL.
fn is_postgres(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

#[cfg(test)]
mod tests {
    use super::VaultOptions;

    #[test]
    fn debug_never_shows_a_urls_password() {
        let shown = format!(
            "{:?}",
            VaultOptions::new("postgres://app:hunter2@db.internal/state?password=hunter3")
        );
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.contains("postgres://app@db.internal/state"),
            "{shown}"
        );
        let file = format!("{:?}", VaultOptions::new("app.db"));
        assert!(file.contains(r#"path: "app.db""#), "{file}");
    }
}

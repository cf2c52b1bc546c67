//! `statevault.toml`: every setting of a vault in one file.
//!
//! The sections follow the seeds' storage configuration (session
//! management, caching, rate limiting, audit logging, metrics collection,
//! user preferences, cleanup, storage paths), plus `[storage]` for the file
//! itself, `[backup]` and `[health]`. Every key is optional and defaults to
//! the library's default; a key the file does not know, or a value of the
//! wrong type or out of range, is an [`Error::Config`] that names the key.
//! Durations are whole numbers with the unit in the key's name.
//!
//! Two environment variables override the file, for containers:
//! `STATEVAULT_DB` (the database path) and `STATEVAULT_KEY` (the key
//! itself, instead of a key file).
//!
//! ```
//! use statevault::Config;
//!
//! let config = Config::parse(r#"
//!     [session_management]
//!     idle_timeout_minutes = 30
//!
//!     [caching.ttl_seconds]
//!     search = 60
//!
//!     [rate_limiting.limits.exports]
//!     per_hour = 10
//!     strict = true
//! "#)?;
//! let options = config.options()?;
//! # let _ = options;
//!
//! let err = Config::parse("[caching]\nl1_size = 5").unwrap_err();
//! assert!(err.to_string().contains("caching"));
//! assert!(err.to_string().contains("l1_size"));
//! # Ok::<(), statevault::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backup::BackupConfig;
use crate::cache::CacheConfig;
use crate::error::{Error, Result};
use crate::health::HealthConfig;
use crate::key::KeySource;
use crate::limits::{Limit, LimitsConfig, Window};
use crate::metrics::MetricsConfig;
use crate::prefs::PreferencesConfig;
use crate::sessions::{SessionConfig, WhenFull};
use crate::store::Synchronous;
use crate::vault::{DB_ENV, DEFAULT_DB, VaultOptions};
use crate::{AuditConfig, KEY_ENV};

/// The file name looked for beside the database when no `--config` is given.
pub const CONFIG_FILE: &str = "statevault.toml";

const SECOND: u64 = 1;
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// A parsed `statevault.toml` (see the module docs for the keys).
#[derive(Debug, Default)]
pub struct Config {
    /// The directory relative paths in the file are resolved against.
    base: PathBuf,
    file: File,
}

impl Config {
    /// Reads and checks the file at `path`; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config = parse(&text).map_err(|detail| Error::Config {
            path: path.to_owned(),
            detail,
        })?;
        config.base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// `statevault.toml` in `dir`, if there is one.
    pub fn discover(dir: &Path) -> Result<Option<Config>> {
        let path = dir.join(CONFIG_FILE);
        if path.is_file() {
            Config::load(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Parses TOML text; relative paths in it are relative to the current
    /// directory.
    pub fn parse(text: &str) -> Result<Config> {
        parse(text).map_err(|detail| Error::Config {
            path: PathBuf::from("<text>"),
            detail,
        })
    }

    /// The database the file names (`storage_paths.database`), resolved,
    /// unless `STATEVAULT_DB` overrides it.
    pub fn database(&self) -> Option<PathBuf> {
        if std::env::var_os(DB_ENV).is_some() {
            return None;
        }
        self.file
            .storage_paths
            .database
            .as_ref()
            .map(|p| self.base.join(p))
    }

    /// Options for the vault the file describes: the database from
    /// `STATEVAULT_DB`, else `storage_paths.database`, else `statevault.db`,
    /// with every setting of the file applied.
    pub fn options(&self) -> Result<VaultOptions> {
        let path = std::env::var_os(DB_ENV)
            .map(PathBuf::from)
            .or_else(|| self.database())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
        self.apply(VaultOptions::new(path))
    }

    /// Applies the file's settings to `options`, keeping its path. The key
    /// comes from `STATEVAULT_KEY` when set, else `storage_paths.key_file`,
    /// else as `options` had it; `encryption = false` opens a plain file.
    pub fn apply(&self, options: VaultOptions) -> Result<VaultOptions> {
        let f = &self.file;
        let mut options = options;
        if f.storage_paths.encryption == Some(false) {
            options = options.key_source(KeySource::None);
        } else if let Some(key_file) = &f.storage_paths.key_file
            && std::env::var_os(KEY_ENV).is_none()
        {
            options = options.key_source(KeySource::File(self.base.join(key_file)));
        }
        let s = &f.storage;
        if let Some(sync) = s.synchronous {
            options = options.synchronous(sync.into());
        }
        if let Some(n) = s.readers {
            options = options.readers(n);
        }
        if let Some(mb) = s.page_cache_mb {
            options = options.page_cache_bytes(mb.saturating_mul(1 << 20));
        }
        if let Some(ms) = s.busy_timeout_ms {
            options = options.busy_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = s.flush_interval_ms {
            options = options.flush_interval(Duration::from_millis(ms));
        }
        if let Some(cleanup) = f.cleanup.enabled {
            let every = secs(f.cleanup.interval_seconds.unwrap_or(HOUR), SECOND);
            options = options.sweep_interval(cleanup.then_some(every));
        } else if let Some(every) = f.cleanup.interval_seconds {
            options = options.sweep_interval(Some(secs(every, SECOND)));
        }
        Ok(options
            .sessions(f.session_management.config())
            .cache(f.caching.config())
            .limits(f.rate_limiting.config())
            .audit(f.audit_logging.config())
            .metrics(f.metrics_collection.config())
            .preferences(f.user_preferences.config()?)
            .backups(
                f.backup
                    .config(f.storage_paths.backups.as_ref().map(|p| self.base.join(p))),
            )
            .health(f.health.config()))
    }
}

fn parse(text: &str) -> std::result::Result<Config, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| describe(text, None, &e))?;
    let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        describe(text, Some(path), e.inner())
    })?;
    file.check()?;
    Ok(Config {
        base: PathBuf::new(),
        file,
    })
}

/// `key: message (line N)`, the key being the table for an unknown key.
fn describe(text: &str, key: Option<String>, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let mut out = match key.filter(|k| k != ".") {
        Some(key) => format!("{key}: {}", e.message().trim()),
        None => e.message().trim().to_owned(),
    };
    if let Some(line) = line {
        out.push_str(&format!(" (line {line})"));
    }
    out
}

fn secs(n: u64, unit: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(unit))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    storage_paths: Paths,
    #[serde(default)]
    storage: Storage,
    #[serde(default)]
    session_management: Sessions,
    #[serde(default)]
    caching: Caching,
    #[serde(default)]
    rate_limiting: RateLimiting,
    #[serde(default)]
    audit_logging: Audit,
    #[serde(default)]
    metrics_collection: Metrics,
    #[serde(default)]
    user_preferences: Preferences,
    #[serde(default)]
    cleanup: Cleanup,
    #[serde(default)]
    backup: Backup,
    #[serde(default)]
    health: Health,
}

impl File {
    /// Range checks serde cannot express, each naming its key.
    fn check(&self) -> std::result::Result<(), String> {
        let bad = |key: &str, reason: &str| Err(format!("{key}: {reason}"));
        let paths = &self.storage_paths;
        for (key, path) in [
            ("storage_paths.database", &paths.database),
            ("storage_paths.key_file", &paths.key_file),
            ("storage_paths.backups", &paths.backups),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(key, "must not be empty");
            }
        }
        if let Some(n) = self.storage.readers
            && !(1..=64).contains(&n)
        {
            return bad("storage.readers", "must be between 1 and 64");
        }
        if self.session_management.max_per_user == Some(0) {
            return bad("session_management.max_per_user", "must be at least 1");
        }
        for (name, limit) in &self.rate_limiting.limits {
            let key = |field: &str| format!("rate_limiting.limits.{name}.{field}");
            for (field, rate) in limit.rates() {
                if !(rate.is_finite() && rate > 0.0) {
                    return bad(&key(field), "must be a finite number above 0");
                }
            }
            if let Some(burst) = limit.burst_allowance
                && !(burst.is_finite() && burst >= 0.0)
            {
                return bad(
                    &key("burst_allowance"),
                    "must be a finite number, 0 or more",
                );
            }
            if limit.rates().next().is_none() {
                return bad(
                    &format!("rate_limiting.limits.{name}"),
                    "has no window: give per_second, per_minute, per_15_minutes, per_hour or per_day",
                );
            }
        }
        if let Some(ratio) = self.health.cache_hit_ratio_warning
            && !(0.0..=1.0).contains(&ratio)
        {
            return bad("health.cache_hit_ratio_warning", "must be between 0 and 1");
        }
        for (key, percent) in [
            (
                "health.disk_warning_free_percent",
                self.health.disk_warning_free_percent,
            ),
            (
                "health.disk_critical_free_percent",
                self.health.disk_critical_free_percent,
            ),
        ] {
            if let Some(p) = percent
                && !(0.0..=100.0).contains(&p)
            {
                return bad(key, "must be between 0 and 100");
            }
        }
        if let Some(level) = self.caching.compression_level
            && !(1..=19).contains(&level)
        {
            return bad("caching.compression_level", "must be between 1 and 19");
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Paths {
    database: Option<PathBuf>,
    key_file: Option<PathBuf>,
    encryption: Option<bool>,
    backups: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Sync {
    Normal,
    Full,
}

impl From<Sync> for Synchronous {
    fn from(sync: Sync) -> Self {
        match sync {
            Sync::Normal => Synchronous::Normal,
            Sync::Full => Synchronous::Full,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    synchronous: Option<Sync>,
    readers: Option<usize>,
    page_cache_mb: Option<u64>,
    busy_timeout_ms: Option<u64>,
    flush_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Full {
    EvictOldest,
    Refuse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sessions {
    idle_timeout_minutes: Option<u64>,
    absolute_lifetime_hours: Option<u64>,
    rotation_interval_hours: Option<u64>,
    max_per_user: Option<usize>,
    when_full: Option<Full>,
    retention_days: Option<u64>,
    memory_entries: Option<usize>,
    memory_ttl_ms: Option<u64>,
    max_data_kb: Option<usize>,
}

impl Sessions {
    fn config(&self) -> SessionConfig {
        let mut c = SessionConfig::default();
        if let Some(n) = self.idle_timeout_minutes {
            c.idle_timeout = secs(n, MINUTE);
        }
        if let Some(n) = self.absolute_lifetime_hours {
            c.absolute_lifetime = secs(n, HOUR);
        }
        if let Some(n) = self.rotation_interval_hours {
            c.rotation_interval = secs(n, HOUR);
        }
        if let Some(n) = self.max_per_user {
            c.max_per_user = n;
        }
        if let Some(full) = self.when_full {
            c.when_full = match full {
                Full::EvictOldest => WhenFull::EvictOldest,
                Full::Refuse => WhenFull::Refuse,
            };
        }
        if let Some(n) = self.retention_days {
            c.retention = secs(n, DAY);
        }
        if let Some(n) = self.memory_entries {
            c.memory_entries = n;
        }
        if let Some(ms) = self.memory_ttl_ms {
            c.memory_ttl = Duration::from_millis(ms);
        }
        if let Some(kb) = self.max_data_kb {
            c.max_data_bytes = kb.saturating_mul(1024);
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Caching {
    default_ttl_seconds: Option<u64>,
    max_ttl_seconds: Option<u64>,
    max_value_kb: Option<usize>,
    compression_level: Option<i32>,
    #[serde(default)]
    l1_cache: L1,
    #[serde(default)]
    l2_cache: L2,
    #[serde(default)]
    ttl_seconds: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct L1 {
    enabled: Option<bool>,
    max_size: Option<usize>,
    max_size_mb: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct L2 {
    max_size_mb: Option<u64>,
}

impl Caching {
    fn config(&self) -> CacheConfig {
        let mut c = CacheConfig::default();
        if let Some(n) = self.default_ttl_seconds {
            c = c.default_ttl(secs(n, SECOND));
        }
        if let Some(n) = self.max_ttl_seconds {
            c = c.max_ttl(secs(n, SECOND));
        }
        if let Some(kb) = self.max_value_kb {
            c = c.max_value_bytes(kb.saturating_mul(1024));
        }
        if let Some(level) = self.compression_level {
            c = c.compression_level(level);
        }
        if let Some(n) = self.l1_cache.max_size {
            c = c.l1_entries(n);
        }
        if self.l1_cache.enabled == Some(false) {
            c = c.l1_entries(0);
        }
        if let Some(mb) = self.l1_cache.max_size_mb {
            c = c.l1_bytes(mb.saturating_mul(1 << 20));
        }
        if let Some(mb) = self.l2_cache.max_size_mb {
            c = c.l2_bytes(mb.saturating_mul(1 << 20));
        }
        for (namespace, ttl) in &self.ttl_seconds {
            c = c.namespace_ttl(namespace, secs(*ttl, SECOND));
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimiting {
    shared: Option<bool>,
    violation_retention_days: Option<u64>,
    idle_bucket_retention_days: Option<u64>,
    #[serde(default)]
    limits: BTreeMap<String, LimitSpec>,
}

/// One named limit: a window per rate given; the burst goes on the
/// shortest window.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    per_second: Option<f64>,
    per_minute: Option<f64>,
    per_15_minutes: Option<f64>,
    per_hour: Option<f64>,
    per_day: Option<f64>,
    burst_allowance: Option<f64>,
    strict: Option<bool>,
    shared: Option<bool>,
}

impl LimitSpec {
    /// `(key, tokens)` for each window given, shortest first.
    fn rates(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("per_second", self.per_second),
            ("per_minute", self.per_minute),
            ("per_15_minutes", self.per_15_minutes),
            ("per_hour", self.per_hour),
            ("per_day", self.per_day),
        ]
        .into_iter()
        .filter_map(|(key, rate)| rate.map(|r| (key, r)))
    }

    fn limit(&self) -> Limit {
        let mut limit = Limit::new().strict(self.strict.unwrap_or(false));
        if let Some(shared) = self.shared {
            limit = limit.shared(shared);
        }
        for (i, (key, tokens)) in self.rates().enumerate() {
            let period = match key {
                "per_second" => SECOND,
                "per_minute" => MINUTE,
                "per_15_minutes" => 15 * MINUTE,
                "per_hour" => HOUR,
                _ => DAY,
            };
            let mut window = Window::per(secs(period, 1), tokens);
            if i == 0 {
                window = window.burst(self.burst_allowance.unwrap_or(0.0));
            }
            limit = limit.window(window);
        }
        limit
    }
}

impl RateLimiting {
    fn config(&self) -> LimitsConfig {
        let mut c = LimitsConfig::default();
        if let Some(shared) = self.shared {
            c = c.shared(shared);
        }
        if let Some(days) = self.violation_retention_days {
            c = c.violation_retention(secs(days, DAY));
        }
        if let Some(days) = self.idle_bucket_retention_days {
            c = c.idle_bucket_retention(secs(days, DAY));
        }
        for (name, spec) in &self.limits {
            c = c.limit(name.clone(), spec.limit());
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Audit {
    retention_days: Option<u64>,
    max_details_kb: Option<usize>,
}

impl Audit {
    fn config(&self) -> AuditConfig {
        let mut c = AuditConfig::default();
        if let Some(days) = self.retention_days {
            c.retention = secs(days, DAY);
        }
        if let Some(kb) = self.max_details_kb {
            c.max_details_bytes = kb.saturating_mul(1024);
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metrics {
    collection_interval_seconds: Option<u64>,
    retention_days: Option<u64>,
    downsample_after_days: Option<u64>,
}

impl Metrics {
    fn config(&self) -> MetricsConfig {
        let mut c = MetricsConfig::default();
        if let Some(n) = self.collection_interval_seconds {
            c.interval = secs(n, SECOND);
        }
        if let Some(days) = self.retention_days {
            c.retention = secs(days, DAY);
        }
        if let Some(days) = self.downsample_after_days {
            c.downsample_after = secs(days, DAY);
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preferences {
    defaults: Option<toml::Table>,
    allow_unknown_keys: Option<bool>,
}

impl Preferences {
    fn config(&self) -> Result<PreferencesConfig> {
        let Some(defaults) = &self.defaults else {
            let c = PreferencesConfig::default();
            return Ok(match self.allow_unknown_keys {
                Some(yes) => c.allow_unknown_keys(yes),
                None => c,
            });
        };
        let defaults = serde_json::to_value(defaults)?;
        Ok(PreferencesConfig::new(defaults)
            .allow_unknown_keys(self.allow_unknown_keys.unwrap_or(false)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cleanup {
    enabled: Option<bool>,
    interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    retention_days: Option<u64>,
    recover_on_open: Option<bool>,
}

impl Backup {
    fn config(&self, dir: Option<PathBuf>) -> BackupConfig {
        let default = BackupConfig::default();
        BackupConfig {
            dir,
            retention: self
                .retention_days
                .map_or(default.retention, |days| secs(days, DAY)),
            recover_on_open: self.recover_on_open.unwrap_or(default.recover_on_open),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    key_rotation_days: Option<u64>,
    disk_warning_free_percent: Option<f64>,
    disk_critical_free_percent: Option<f64>,
    wal_warning_mb: Option<u64>,
    wal_critical_mb: Option<u64>,
    violation_window_minutes: Option<u64>,
    violation_warning: Option<u64>,
    violation_critical: Option<u64>,
    cache_hit_ratio_warning: Option<f64>,
    cache_min_lookups: Option<u64>,
    integrity_interval_minutes: Option<u64>,
}

impl Health {
    fn config(&self) -> HealthConfig {
        let mut c = HealthConfig::default();
        if let Some(days) = self.key_rotation_days {
            c.key_rotation = secs(days, DAY);
        }
        if let Some(p) = self.disk_warning_free_percent {
            c.disk_warning_free = p / 100.0;
        }
        if let Some(p) = self.disk_critical_free_percent {
            c.disk_critical_free = p / 100.0;
        }
        if let Some(mb) = self.wal_warning_mb {
            c.wal_warning_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(mb) = self.wal_critical_mb {
            c.wal_critical_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(m) = self.violation_window_minutes {
            c.violation_window = secs(m, MINUTE);
        }
        if let Some(n) = self.violation_warning {
            c.violation_warning = n;
        }
        if let Some(n) = self.violation_critical {
            c.violation_critical = n;
        }
        if let Some(r) = self.cache_hit_ratio_warning {
            c.cache_hit_ratio_warning = r;
        }
        if let Some(n) = self.cache_min_lookups {
            c.cache_min_lookups = n;
        }
        if let Some(m) = self.integrity_interval_minutes {
            c.integrity_interval = secs(m, MINUTE);
        }
        c
    }
}

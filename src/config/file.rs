//! The file's sections as serde reads them, and how each becomes the
//! library's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::audit::AuditConfig;
use crate::backup::BackupConfig;
use crate::cache::CacheConfig;
use crate::error::Result;
use crate::health::HealthConfig;
use crate::limits::{Limit, LimitsConfig, Window};
use crate::metrics::MetricsConfig;
use crate::prefs::PreferencesConfig;
use crate::sessions::{SessionConfig, WhenFull};
use crate::store::Synchronous;

pub(super) const SECOND: u64 = 1;
pub(super) const MINUTE: u64 = 60;
pub(super) const HOUR: u64 = 3600;
pub(super) const DAY: u64 = 86_400;

pub(super) fn secs(n: u64, unit: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(unit))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub(super) storage_paths: Paths,
    #[serde(default)]
    pub(super) storage: Storage,
    #[serde(default)]
    pub(super) session_management: Sessions,
    #[serde(default)]
    pub(super) caching: Caching,
    #[serde(default)]
    pub(super) rate_limiting: RateLimiting,
    #[serde(default)]
    pub(super) audit_logging: Audit,
    #[serde(default)]
    pub(super) metrics_collection: Metrics,
    #[serde(default)]
    pub(super) user_preferences: Preferences,
    #[serde(default)]
    pub(super) cleanup: Cleanup,
    #[serde(default)]
    pub(super) backup: Backup,
    #[serde(default)]
    pub(super) health: Health,
}

impl File {
    /// Range checks serde cannot express, each naming its key.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
        match (
            self.storage.page_cache_budget_mb,
            self.storage.page_cache_mb,
        ) {
            (Some(_), Some(_)) => {
                return bad(
                    "storage.page_cache_mb",
                    "is the old name of storage.page_cache_budget_mb: give only one",
                );
            }
            (Some(0), None) => return bad("storage.page_cache_budget_mb", "must be at least 1"),
            (None, Some(0)) => return bad("storage.page_cache_mb", "must be at least 1"),
            _ => {}
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
pub(super) struct Paths {
    pub(super) database: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) encryption: Option<bool>,
    pub(super) backups: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Sync {
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
pub(super) struct Storage {
    pub(super) synchronous: Option<Sync>,
    pub(super) readers: Option<usize>,
    pub(super) page_cache_budget_mb: Option<u64>,
    /// The old name of `page_cache_budget_mb`, from when it sized each
    /// connection's cache; still read, as the whole vault's budget.
    pub(super) page_cache_mb: Option<u64>,
    pub(super) busy_timeout_ms: Option<u64>,
    pub(super) flush_interval_ms: Option<u64>,
    pub(super) feed_retention_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Full {
    EvictOldest,
    Refuse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sessions {
    pub(super) idle_timeout_minutes: Option<u64>,
    pub(super) absolute_lifetime_hours: Option<u64>,
    pub(super) rotation_interval_hours: Option<u64>,
    pub(super) max_per_user: Option<usize>,
    pub(super) when_full: Option<Full>,
    pub(super) retention_days: Option<u64>,
    pub(super) memory_entries: Option<usize>,
    pub(super) memory_ttl_ms: Option<u64>,
    pub(super) feed_check_interval_ms: Option<u64>,
    pub(super) max_data_kb: Option<usize>,
}

impl Storage {
    /// The page cache budget for the whole vault, in MiB, under either name.
    pub(super) fn page_cache_budget_mb(&self) -> Option<u64> {
        self.page_cache_budget_mb.or(self.page_cache_mb)
    }
}

impl Sessions {
    pub(super) fn config(&self) -> SessionConfig {
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
        if let Some(ms) = self.feed_check_interval_ms {
            c.feed_check_interval = Duration::from_millis(ms);
        }
        if let Some(kb) = self.max_data_kb {
            c.max_data_bytes = kb.saturating_mul(1024);
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Caching {
    pub(super) default_ttl_seconds: Option<u64>,
    pub(super) max_ttl_seconds: Option<u64>,
    pub(super) max_value_kb: Option<usize>,
    pub(super) compression_level: Option<i32>,
    pub(super) feed_check_interval_ms: Option<u64>,
    #[serde(default)]
    l1_cache: L1,
    #[serde(default)]
    l2_cache: L2,
    #[serde(default)]
    pub(super) ttl_seconds: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct L1 {
    pub(super) enabled: Option<bool>,
    pub(super) max_size: Option<usize>,
    pub(super) max_size_mb: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct L2 {
    pub(super) max_size_mb: Option<u64>,
}

impl Caching {
    pub(super) fn config(&self) -> CacheConfig {
        let mut c = CacheConfig::default();
        if let Some(n) = self.default_ttl_seconds {
            c = c.default_ttl(secs(n, SECOND));
        }
        if let Some(ms) = self.feed_check_interval_ms {
            c = c.feed_check_interval(Duration::from_millis(ms));
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
pub(super) struct RateLimiting {
    pub(super) shared: Option<bool>,
    pub(super) violation_retention_days: Option<u64>,
    pub(super) idle_bucket_retention_days: Option<u64>,
    #[serde(default)]
    pub(super) limits: BTreeMap<String, LimitSpec>,
}

/// One named limit: a window per rate given; the burst goes on the
/// shortest window.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitSpec {
    pub(super) per_second: Option<f64>,
    pub(super) per_minute: Option<f64>,
    per_15_minutes: Option<f64>,
    pub(super) per_hour: Option<f64>,
    pub(super) per_day: Option<f64>,
    pub(super) burst_allowance: Option<f64>,
    pub(super) strict: Option<bool>,
    pub(super) shared: Option<bool>,
}

impl LimitSpec {
    /// `(key, tokens)` for each window given, shortest first.
    pub(super) fn rates(&self) -> impl Iterator<Item = (&'static str, f64)> {
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

    pub(super) fn limit(&self) -> Limit {
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
    pub(super) fn config(&self) -> LimitsConfig {
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
pub(super) struct Audit {
    pub(super) retention_days: Option<u64>,
    pub(super) max_details_kb: Option<usize>,
}

impl Audit {
    pub(super) fn config(&self) -> AuditConfig {
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
pub(super) struct Metrics {
    pub(super) collection_interval_seconds: Option<u64>,
    pub(super) retention_days: Option<u64>,
    pub(super) downsample_after_days: Option<u64>,
}

impl Metrics {
    pub(super) fn config(&self) -> MetricsConfig {
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
pub(super) struct Preferences {
    pub(super) defaults: Option<toml::Table>,
    pub(super) allow_unknown_keys: Option<bool>,
}

impl Preferences {
    pub(super) fn config(&self) -> Result<PreferencesConfig> {
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
pub(super) struct Cleanup {
    pub(super) enabled: Option<bool>,
    pub(super) interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Backup {
    pub(super) retention_days: Option<u64>,
    pub(super) recover_on_open: Option<bool>,
}

impl Backup {
    pub(super) fn config(&self, dir: Option<PathBuf>) -> BackupConfig {
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
pub(super) struct Health {
    pub(super) key_rotation_days: Option<u64>,
    pub(super) disk_warning_free_percent: Option<f64>,
    pub(super) disk_critical_free_percent: Option<f64>,
    pub(super) wal_warning_mb: Option<u64>,
    pub(super) wal_critical_mb: Option<u64>,
    pub(super) violation_window_minutes: Option<u64>,
    pub(super) violation_warning: Option<u64>,
    pub(super) violation_critical: Option<u64>,
    pub(super) cache_hit_ratio_warning: Option<f64>,
    pub(super) cache_min_lookups: Option<u64>,
    pub(super) integrity_interval_minutes: Option<u64>,
}

impl Health {
    pub(super) fn config(&self) -> HealthConfig {
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

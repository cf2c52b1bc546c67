//! Health: each component of a vault healthy, warning or critical, with the
//! reason. One function per component; [`Vault::health`] runs them all.
//! Adding a component (the cache's hit ratio, say) is one more function and
//! one more line in [`Vault::health`].
//!
//! A report is cheap enough to serve on every load-balancer probe: every
//! component but one costs a lookup or a system call. The exception,
//! `PRAGMA quick_check`, reads the whole file; it runs at most once per
//! [`HealthConfig::integrity_interval`] on the vault's clock (on a reader
//! connection's thread), and the reports in between say how old its answer
//! is.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::file_sizes;
use crate::{Error, Result, Timestamp, Vault};

/// A component's state, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Nothing to do.
    Healthy,
    /// Works, but needs attention soon.
    Warning,
    /// Broken, or about to be.
    Critical,
}

impl HealthStatus {
    /// The CLI's exit code: 0 healthy, 1 warning, 2 critical.
    pub fn exit_code(self) -> u8 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Warning => 1,
            HealthStatus::Critical => 2,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        })
    }
}

/// One component's state and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// `file`, `integrity`, `key_file`, `key_age`, `disk`, `wal`, `violations`.
    pub name: &'static str,
    /// Its state.
    pub status: HealthStatus,
    /// Why, in words.
    pub reason: String,
}

impl Component {
    fn new(name: &'static str, status: HealthStatus, reason: impl Into<String>) -> Self {
        Component {
            name,
            status,
            reason: reason.into(),
        }
    }
}

/// What [`Vault::health`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The worst component's state.
    pub status: HealthStatus,
    /// When it was checked (the vault's clock).
    pub checked_at: Option<Timestamp>,
    /// Every component.
    pub components: Vec<Component>,
}

impl HealthReport {
    fn of(checked_at: Option<Timestamp>, components: Vec<Component>) -> Self {
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        HealthReport {
            status,
            checked_at,
            components,
        }
    }

    /// The report for a vault that cannot be opened: `file` critical.
    pub fn cannot_open(error: &Error) -> Self {
        HealthReport::of(
            None,
            vec![Component::new(
                "file",
                HealthStatus::Critical,
                format!("cannot open: {error}"),
            )],
        )
    }

    /// The component named `name`, if checked.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Thresholds of the health report.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// A key older than this is a warning (default 90 days).
    pub key_rotation: Duration,
    /// Free disk below this fraction of the filesystem is a warning (default 0.10).
    pub disk_warning_free: f64,
    /// Free disk below this fraction is critical (default 0.02).
    pub disk_critical_free: f64,
    /// A WAL larger than this is a warning (default 64 MiB).
    pub wal_warning_bytes: u64,
    /// A WAL larger than this is critical (default 1 GiB).
    pub wal_critical_bytes: u64,
    /// How far back violations are counted (default 5 minutes).
    pub violation_window: Duration,
    /// More violations than this in the window is a warning (default 100).
    pub violation_warning: u64,
    /// More than this is critical (default 1000).
    pub violation_critical: u64,
    /// A cache hit ratio below this is a warning (default 0.5) …
    pub cache_hit_ratio_warning: f64,
    /// … once the cache has seen at least this many lookups (default 1000).
    pub cache_min_lookups: u64,
    /// How long a `PRAGMA quick_check` answer is reused (default 10
    /// minutes): the check reads the whole file.
    pub integrity_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            key_rotation: Duration::from_secs(90 * 86_400),
            disk_warning_free: 0.10,
            disk_critical_free: 0.02,
            wal_warning_bytes: 64 << 20,
            wal_critical_bytes: 1 << 30,
            violation_window: Duration::from_secs(300),
            violation_warning: 100,
            violation_critical: 1000,
            cache_hit_ratio_warning: 0.5,
            cache_min_lookups: 1000,
            integrity_interval: Duration::from_secs(600),
        }
    }
}

/// The health settings and the last integrity check, inside the vault.
pub(crate) struct HealthState {
    config: HealthConfig,
    /// The last `quick_check` that ran to the end; locked across the check,
    /// so that reports asked for at once share one run.
    integrity: tokio::sync::Mutex<Option<Integrity>>,
}

impl HealthState {
    pub(crate) fn new(config: HealthConfig) -> Self {
        HealthState {
            config,
            integrity: tokio::sync::Mutex::new(None),
        }
    }
}

/// What one `quick_check` said, and when (the vault's clock).
#[derive(Clone)]
struct Integrity {
    at: Timestamp,
    lines: Vec<String>,
}

impl HealthConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let fraction = 0.0..=1.0;
        if !fraction.contains(&self.disk_warning_free)
            || !fraction.contains(&self.disk_critical_free)
            || !fraction.contains(&self.cache_hit_ratio_warning)
        {
            return Err(Error::invalid(
                "health.disk",
                "free fractions must be in 0..=1",
            ));
        }
        if self.disk_critical_free > self.disk_warning_free
            || self.wal_critical_bytes < self.wal_warning_bytes
            || self.violation_critical < self.violation_warning
        {
            return Err(Error::invalid(
                "health",
                "a critical threshold is milder than its warning",
            ));
        }
        Ok(())
    }
}

fn worse_than(value: f64, warning: f64, critical: f64) -> HealthStatus {
    if value > critical {
        HealthStatus::Critical
    } else if value > warning {
        HealthStatus::Warning
    } else {
        HealthStatus::Healthy
    }
}

impl Vault {
    /// Checks every component: the file opens and takes a write, `PRAGMA
    /// quick_check`, the key file's mode, the key's age, free disk, WAL
    /// size, the recent violation rate, the cache hit ratio.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> statevault::Result<()> {
    /// use statevault::{HealthStatus, Vault, VaultOptions};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let vault = Vault::open(VaultOptions::new(dir.path().join("v.db"))).await?;
    /// let report = vault.health().await;
    /// assert_eq!(report.component("key_file").unwrap().status, HealthStatus::Healthy);
    /// vault.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health(&self) -> HealthReport {
        let config = &self.health_state().config;
        let components = vec![
            self.check_writable().await,
            self.check_integrity(config).await,
            self.check_key_file(),
            self.check_key_age(config),
            self.check_disk(config),
            self.check_wal(config),
            self.check_violations(config),
            self.check_cache(config).await,
        ];
        HealthReport::of(Some(self.now()), components)
    }

    async fn check_writable(&self) -> Component {
        let name = "file";
        if let Err(e) = std::fs::OpenOptions::new().append(true).open(self.path()) {
            return Component::new(name, HealthStatus::Critical, format!("not writable: {e}"));
        }
        match self.store().sqlx_transaction().await {
            // Dropping the transaction rolls it back: nothing is written.
            Ok(tx) => {
                drop(tx);
                Component::new(
                    name,
                    HealthStatus::Healthy,
                    "opens and takes the write lock",
                )
            }
            Err(e) => Component::new(name, HealthStatus::Critical, format!("cannot write: {e}")),
        }
    }

    /// `quick_check`'s answer, at most `integrity_interval` old.
    async fn check_integrity(&self, config: &HealthConfig) -> Component {
        let name = "integrity";
        let mut last = self.health_state().integrity.lock().await;
        let now = self.now();
        let fresh = last
            .as_ref()
            .filter(|c| c.at <= now && now.duration_since(c.at) < config.integrity_interval);
        let checked = match fresh {
            Some(checked) => checked.clone(),
            None => match self.quick_check().await {
                Ok(lines) => last.insert(Integrity { at: now, lines }).clone(),
                Err(e) => {
                    return Component::new(
                        name,
                        HealthStatus::Critical,
                        format!("quick_check failed: {e}"),
                    );
                }
            },
        };
        let age = match now.duration_since(checked.at).as_secs() {
            0 => "checked just now".to_owned(),
            secs => format!("checked {secs} s ago"),
        };
        let every = config.integrity_interval.as_secs();
        match checked.lines.as_slice() {
            [ok] if ok == "ok" => Component::new(
                name,
                HealthStatus::Healthy,
                format!("quick_check: ok ({age}; at most every {every} s)"),
            ),
            lines => Component::new(
                name,
                HealthStatus::Critical,
                format!("quick_check: {} ({age})", lines.join("; ")),
            ),
        }
    }

    /// Runs `PRAGMA quick_check` on a reader connection.
    async fn quick_check(&self) -> Result<Vec<String>> {
        let mut conn = self
            .store()
            .sqlx_reader()
            .acquire()
            .await
            .map_err(crate::store::closed_or)?;
        Ok(sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&mut *conn)
            .await?)
    }

    fn check_key_file(&self) -> Component {
        use std::os::unix::fs::PermissionsExt;
        let name = "key_file";
        if !self.is_encrypted() {
            return Component::new(name, HealthStatus::Warning, "the file is not encrypted");
        }
        let Some(path) = self.key_file() else {
            return Component::new(name, HealthStatus::Healthy, "key not read from a file");
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 == 0 {
                    Component::new(name, HealthStatus::Healthy, format!("mode {mode:04o}"))
                } else {
                    Component::new(
                        name,
                        HealthStatus::Critical,
                        format!("{} has mode {mode:04o}; want 0600", display(path)),
                    )
                }
            }
            Err(e) => Component::new(
                name,
                HealthStatus::Critical,
                format!("cannot read {}: {e}", display(path)),
            ),
        }
    }

    fn check_key_age(&self, config: &HealthConfig) -> Component {
        let name = "key_age";
        if !self.is_encrypted() {
            return Component::new(name, HealthStatus::Healthy, "no key");
        }
        let created = match self.meta("key_created_at") {
            Ok(Some(text)) => Timestamp::parse(&text),
            Ok(None) => {
                return Component::new(name, HealthStatus::Warning, "key creation time unknown");
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(created) => {
                let age = self.now().duration_since(created);
                let days = age.as_secs() / 86_400;
                let period = config.key_rotation.as_secs() / 86_400;
                if age > config.key_rotation {
                    Component::new(
                        name,
                        HealthStatus::Warning,
                        format!(
                            "key is {days} days old; rotate every {period} days (statevault rekey)"
                        ),
                    )
                } else {
                    Component::new(
                        name,
                        HealthStatus::Healthy,
                        format!("key is {days} days old (rotation period {period} days)"),
                    )
                }
            }
            Err(e) => Component::new(name, HealthStatus::Warning, format!("key age unknown: {e}")),
        }
    }

    fn check_disk(&self, config: &HealthConfig) -> Component {
        let name = "disk";
        let dir = self
            .path()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(st) => {
                let total = st.f_blocks.saturating_mul(st.f_frsize);
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                let fraction = if total == 0 {
                    1.0
                } else {
                    free as f64 / total as f64
                };
                let status = if fraction < config.disk_critical_free {
                    HealthStatus::Critical
                } else if fraction < config.disk_warning_free {
                    HealthStatus::Warning
                } else {
                    HealthStatus::Healthy
                };
                Component::new(
                    name,
                    status,
                    format!(
                        "{} MiB free of {} MiB ({:.1} %)",
                        free >> 20,
                        total >> 20,
                        fraction * 100.0
                    ),
                )
            }
            Err(e) => Component::new(name, HealthStatus::Warning, format!("statvfs failed: {e}")),
        }
    }

    fn check_wal(&self, config: &HealthConfig) -> Component {
        let wal = file_sizes(self.path()).wal_bytes;
        Component::new(
            "wal",
            worse_than(
                wal as f64,
                config.wal_warning_bytes as f64,
                config.wal_critical_bytes as f64,
            ),
            format!(
                "{wal} bytes (warning above {}, critical above {})",
                config.wal_warning_bytes, config.wal_critical_bytes
            ),
        )
    }

    fn check_violations(&self, config: &HealthConfig) -> Component {
        let name = "violations";
        let since = self.now().saturating_sub(config.violation_window);
        match crate::limits::violations_since(self.core(), since) {
            Ok(n) => Component::new(
                name,
                worse_than(
                    n as f64,
                    config.violation_warning as f64,
                    config.violation_critical as f64,
                ),
                format!(
                    "{n} rate-limit violations in the last {} s (warning above {}, critical above {})",
                    config.violation_window.as_secs(),
                    config.violation_warning,
                    config.violation_critical
                ),
            ),
            Err(e) => Component::new(name, HealthStatus::Warning, format!("cannot count: {e}")),
        }
    }
}

impl Vault {
    /// This process's cache hit ratio, once it has seen enough lookups.
    async fn check_cache(&self, config: &HealthConfig) -> Component {
        let name = "cache";
        let stats = match self.cache().stats().await {
            Ok(stats) => stats,
            Err(e) => return Component::new(name, HealthStatus::Warning, format!("no stats: {e}")),
        };
        let lookups = stats.l1.hits + stats.l1.misses;
        if lookups < config.cache_min_lookups {
            return Component::new(
                name,
                HealthStatus::Healthy,
                format!("{lookups} lookups so far, too few to judge the hit ratio"),
            );
        }
        let status = if stats.hit_ratio < config.cache_hit_ratio_warning {
            HealthStatus::Warning
        } else {
            HealthStatus::Healthy
        };
        Component::new(
            name,
            status,
            format!(
                "hit ratio {:.1} % over {lookups} lookups (warning below {:.0} %)",
                100.0 * stats.hit_ratio,
                100.0 * config.cache_hit_ratio_warning
            ),
        )
    }
}

fn display(path: &Path) -> std::path::Display<'_> {
    path.display()
}

//! What a health report says, and how health is configured.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::{Error, Result};

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
    pub(crate) fn new(name: &'static str, status: HealthStatus, reason: impl Into<String>) -> Self {
        Component {
            name,
            status,
            reason: reason.into(),
        }
    }
}

/// What [`Vault::health`](crate::Vault::health) found.
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
    pub(crate) fn of(checked_at: Option<Timestamp>, components: Vec<Component>) -> Self {
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
    pub(crate) config: HealthConfig,
    /// The last `quick_check` that ran to the end; locked across the check,
    /// so that reports asked for at once share one run.
    pub(crate) integrity: tokio::sync::Mutex<Option<Integrity>>,
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
pub(crate) struct Integrity {
    pub(crate) at: Timestamp,
    pub(crate) lines: Vec<String>,
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

pub(crate) fn worse_than(value: f64, warning: f64, critical: f64) -> HealthStatus {
    if value > critical {
        HealthStatus::Critical
    } else if value > warning {
        HealthStatus::Warning
    } else {
        HealthStatus::Healthy
    }
}

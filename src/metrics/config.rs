//! How metrics are aggregated and kept.

use std::time::Duration;

use crate::{Error, Result};

/// An hour, in milliseconds: the longest interval, and downsampling's.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// How metrics are aggregated and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Length of one stored point (1 s – 1 h, default 60 s).
    pub interval: Duration,
    /// Points older than this are purged by
    /// [`Metrics::sweep`](crate::Metrics::sweep) (default 30 days).
    pub retention: Duration,
    /// Points older than this are merged into hourly points by
    /// [`Metrics::sweep`](crate::Metrics::sweep) (default 7 days).
    pub downsample_after: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 86_400),
            downsample_after: Duration::from_secs(7 * 86_400),
        }
    }
}

impl MetricsConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.interval) {
            return Err(Error::invalid(
                "metrics.interval",
                "not between 1 s and 1 h",
            ));
        }
        if self.interval.subsec_millis() != 0 {
            return Err(Error::invalid("metrics.interval", "not whole seconds"));
        }
        if self.downsample_after > self.retention {
            return Err(Error::invalid(
                "metrics.downsample_after",
                "longer than the retention",
            ));
        }
        Ok(())
    }

    /// The interval, in milliseconds.
    pub(super) fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis()).unwrap_or(HOUR_MS)
    }
}

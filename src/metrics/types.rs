//! What metrics report: kinds, summaries, error rates, reports, sweeps.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Error, Result, Timestamp};

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A count that only goes up (stored per interval: the increments).
    Counter,
    /// A value set from time to time (the last one counts).
    Gauge,
    /// A distribution of observations (durations in milliseconds), with percentiles.
    Timing,
}

impl MetricKind {
    /// The kind as stored.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Timing => "timing",
        }
    }

    /// A stored kind back.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "counter" => Ok(MetricKind::Counter),
            "gauge" => Ok(MetricKind::Gauge),
            "timing" => Ok(MetricKind::Timing),
            other => Err(Error::invalid(
                "metrics.kind",
                format!("unknown kind {other:?}"),
            )),
        }
    }
}

/// Percentiles and totals of a timing (or any metric) over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest (exact).
    pub min: Option<f64>,
    /// The largest (exact).
    pub max: Option<f64>,
    /// The median (timings only; within [`RELATIVE_ERROR`](super::RELATIVE_ERROR)).
    pub p50: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

/// One point of [`Metrics::series`](crate::Metrics::series): the merge of the stored points that
/// start in `[start, start + resolution)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of this bucket.
    pub start: Timestamp,
    /// The last value recorded in it (a gauge's value).
    pub last: f64,
    /// Totals and percentiles.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Requests and errors of one endpoint ([`Metrics::error_rates`](crate::Metrics::error_rates)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointErrors {
    /// The endpoint.
    pub endpoint: String,
    /// Requests.
    pub requests: u64,
    /// Responses with status 400–499.
    pub client_errors: u64,
    /// Responses with status 500 and up.
    pub server_errors: u64,
    /// `server_errors / requests`.
    pub error_rate: f64,
}

/// Authentication attempts ([`Metrics::auth`](crate::Metrics::auth)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuthCounts {
    /// Successful attempts.
    pub success: u64,
    /// Failed attempts.
    pub failure: u64,
}

/// Sizes of the vault's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileSizes {
    /// The database file.
    pub file_bytes: u64,
    /// Its `-wal` file.
    pub wal_bytes: u64,
}

/// One series in a [`MetricsReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it measures.
    pub kind: MetricKind,
    /// The last value recorded in the range.
    pub last: f64,
    /// Totals and percentiles over the range.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Everything [`Metrics::report`](crate::Metrics::report) knows, as
/// `statevault metrics --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsReport {
    /// Start of the range.
    pub from: Timestamp,
    /// End of the range.
    pub to: Timestamp,
    /// Every series with points in the range.
    pub series: Vec<SeriesSummary>,
    /// Requests and errors per endpoint.
    pub error_rates: Vec<EndpointErrors>,
    /// Authentication attempts.
    pub auth: AuthCounts,
    /// Sessions live now.
    pub active_sessions: u64,
    /// File sizes now; absent on PostgreSQL, which has no file of the
    /// vault's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FileSizes>,
}

/// What [`Metrics::sweep`](crate::Metrics::sweep) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSweep {
    /// Points older than the retention, deleted.
    pub purged: u64,
    /// Fine points merged into hourly points.
    pub downsampled: u64,
}

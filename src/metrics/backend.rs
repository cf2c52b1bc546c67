//! The metrics' storage contract: what the facet needs from a backend, in
//! points and totals. `sqlite.rs` implements it for the vault file; another
//! backend implements the same trait.

use std::collections::BTreeMap;

use super::points::{Point, StoredPoint};
use super::types::MetricKind;
use crate::{Result, Timestamp};

/// Where metric points are kept.
pub(crate) trait MetricsBackend {
    /// Writes points in one transaction, each merged with the stored point
    /// of its series and interval if there is one
    /// ([`merge_stored`](super::points::merge_stored)).
    async fn write_points(&self, points: &[Point]) -> Result<()>;

    /// Points (of `name`, or all) starting in `[from, to)`, oldest first.
    async fn points(
        &self,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<StoredPoint>>;

    /// A counter's total per label set in `[from, to)`.
    async fn counter_totals(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>>;

    /// Every series' totals over all stored points, and its last value, in
    /// name and label order.
    async fn totals(&self) -> Result<Vec<Total>>;

    /// Merges up to `limit` points finer than an hour that start before
    /// `cutoff` into hourly points
    /// ([`into_hourly`](super::points::StoredPoint::into_hourly)), in one
    /// transaction. Returns how many.
    async fn downsample(&self, cutoff: Timestamp, limit: i64) -> Result<u64>;

    /// Deletes up to `limit` points that start before `before`, in one
    /// transaction. Returns how many.
    async fn purge(&self, before: Timestamp, limit: i64) -> Result<u64>;
}

/// Totals of one series over every stored point.
pub(crate) struct Total {
    pub(crate) name: String,
    /// The labels as JSON.
    pub(crate) labels: String,
    pub(crate) kind: MetricKind,
    pub(crate) count: u64,
    pub(crate) sum: f64,
    /// The value recorded last.
    pub(crate) last: f64,
}

//! Metrics: counters, gauges and timings with labels, aggregated in memory
//! and written once per interval, with a mergeable quantile sketch in every
//! stored point so that percentiles over any range are exact merges.
//!
//! # How it works
//!
//! - Recording ([`Metrics::increment`], [`Metrics::gauge`],
//!   [`Metrics::timing`], [`Metrics::record_api_call`]) touches memory only:
//!   one of 32 shard locks, chosen by a hash of (name, labels), held only
//!   to update one aggregate and never across an `.await`. Recording never
//!   allocates once a series exists. The time is the vault clock's
//!   [`now_coarse`](crate::Clock::now_coarse) (a few milliseconds old with
//!   the system clock, and far cheaper to read): plenty for intervals of a
//!   second or more.
//! - Each series keeps the aggregate of its current interval (default 60 s,
//!   [`MetricsConfig::interval`]): count, sum, min, max, last value, and for
//!   timings a [DDSketch](https://arxiv.org/abs/1908.10693) with a relative
//!   accuracy of 1 % ([`RELATIVE_ERROR`]) and at most 2048 bins
//!   ([`MAX_BINS`]).
//! - [`Vault::flush`](crate::Vault::flush) (the vault's background task,
//!   every `flush_interval`) writes the intervals that have ended, in one
//!   transaction with multi-row upserts; [`Vault::close`](crate::Vault::close)
//!   writes the open interval too. A point written twice (a close and a
//!   restart within one interval) is merged with the stored one, never
//!   overwritten.
//! - Queries read the stored points: a range's percentiles are the merge of
//!   the sketches of the points that start in it.
//! - [`Metrics::sweep`] downsamples points older than 7 days to hourly
//!   points and purges points older than 30 days.
//!
//! # Layout
//!
//! - `mod.rs`: [`Metrics`], the handle: recording, queries, the report, the
//!   Prometheus exposition, the sweep; and [`Sources`], what the vault tells
//!   it about the other facets.
//! - `state.rs`: the series in memory and the flush; `points.rs`: an
//!   interval's aggregate, its sketch, and how points merge.
//! - `config.rs`: [`MetricsConfig`]; `types.rs`: what it reports;
//!   `prom.rs`: the Prometheus text format.
//! - `facade.rs` (feature `metrics`): [`MetricsRecorder`], the `metrics`
//!   crate's recorder, into the same series.
//! - `backend.rs`: the storage contract; `sqlite.rs`: every statement of
//!   the facet.

mod backend;
mod config;
#[cfg(feature = "metrics")]
mod facade;
mod points;
#[cfg(feature = "postgres")]
mod postgres;
mod prom;
mod sqlite;
mod state;
mod storage;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use backend::MetricsBackend;
use config::HOUR_MS;
pub use config::MetricsConfig;
#[cfg(feature = "metrics")]
pub use facade::MetricsRecorder;
use points::Agg;
pub use points::{MAX_BINS, RELATIVE_ERROR};
pub use prom::sanitize_name;
pub(crate) use state::MetricsState;
pub use types::{
    AuthCounts, EndpointErrors, FileSizes, MetricKind, MetricsReport, MetricsSweep, SeriesPoint,
    SeriesSummary, Summary,
};

use crate::core::Core;
use crate::{Error, Result, Timestamp};

/// Rows per retention transaction.
const SWEEP_BATCH: i64 = 500;

/// The name [`Metrics::record_api_call`] counts requests under.
pub const API_REQUESTS: &str = "api_requests";
/// The name [`Metrics::record_api_call`] times requests under (milliseconds).
pub const API_REQUEST_DURATION: &str = "api_request_duration";
/// The name [`Metrics::record_auth`] counts attempts under.
pub const AUTH_ATTEMPTS: &str = "auth_attempts";

/// The metrics facet of a vault: `vault.metrics()`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// use std::time::Duration;
/// use statevault::{FakeClock, Timestamp, Vault, VaultOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let clock = FakeClock::default();
/// let vault = Vault::open(VaultOptions::new(dir.path().join("v.db")).clock(clock.clone())).await?;
/// let start = vault.now();
/// for ms in 1..=100 {
///     vault.metrics().record_api_call("search", "GET", 200, Duration::from_millis(ms), Some("alice"));
/// }
/// vault.metrics().record_api_call("search", "GET", 500, Duration::from_millis(7), None);
/// clock.advance(Duration::from_secs(60)); // the interval ends
/// vault.flush().await?;                    // and is written
///
/// let end = vault.now();
/// let p = vault.metrics().percentiles("api_request_duration", &[("endpoint", "search")], start, end).await?;
/// assert_eq!(p.count, 101);
/// assert!((p.p99.unwrap() - 99.0).abs() <= 1.0);
/// let errors = vault.metrics().error_rates(start, end).await?;
/// assert_eq!(errors[0].server_errors, 1);
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct Metrics<'a> {
    core: &'a Core,
    state: &'a MetricsState,
    sources: &'a dyn Sources,
}

impl fmt::Debug for Metrics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

/// A boxed future, for the [`Sources`] trait object.
pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the metrics report says about the other facets, supplied from above
/// (the vault), so that metrics never calls another facet.
pub(crate) trait Sources: Sync {
    /// Sessions live now.
    fn active_sessions(&self) -> BoxFuture<'_, Result<u64>>;
    /// This process's cache counters per level, and the hit ratio.
    fn cache_counts(&self) -> BoxFuture<'_, Result<CacheCounts>>;
}

/// The cache's counters as the Prometheus exposition shows them.
pub(crate) struct CacheCounts {
    /// `("l1" | "l2", hits, misses, evictions, entries, bytes)`.
    pub(crate) levels: [(&'static str, u64, u64, u64, u64, u64); 2],
    /// Gets answered from either level over all gets.
    pub(crate) hit_ratio: f64,
}

impl<'a> Metrics<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a MetricsState, sources: &'a dyn Sources) -> Self {
        Metrics {
            core,
            state,
            sources,
        }
    }

    /// The stored points, through their backend.
    fn storage(&self) -> storage::Backend<'a> {
        state::backend(self.core)
    }

    /// Adds `by` to a counter. Negative or non-finite amounts are dropped,
    /// as is a record whose labels name a key twice.
    pub fn increment(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        self.state.record(
            self.core.now_coarse(),
            name,
            MetricKind::Counter,
            labels,
            by,
        );
    }

    /// Sets a gauge.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.state.record(
            self.core.now_coarse(),
            name,
            MetricKind::Gauge,
            labels,
            value,
        );
    }

    /// Records a duration, in milliseconds, in a timing.
    pub fn timing(&self, name: &str, labels: &[(&str, &str)], duration: Duration) {
        self.observe(name, labels, duration.as_secs_f64() * 1e3);
    }

    /// Records any value in a timing's distribution.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.state.record(
            self.core.now_coarse(),
            name,
            MetricKind::Timing,
            labels,
            value,
        );
    }

    /// Records an API call: counter [`API_REQUESTS`] with labels
    /// `endpoint`, `method`, `status`, and timing [`API_REQUEST_DURATION`]
    /// (milliseconds) with `endpoint`, `method`. The user is not a label:
    /// it would make a series per user, and metrics hold nothing personal;
    /// it only says whether the call was authenticated (label
    /// `authenticated` on the counter).
    pub fn record_api_call(
        &self,
        endpoint: &str,
        method: &str,
        status: u16,
        duration: Duration,
        user: Option<&str>,
    ) {
        let now = self.core.now_coarse();
        let mut digits = [0u8; 5];
        let status = status_text(status, &mut digits);
        let authenticated = if user.is_some() { "true" } else { "false" };
        self.state.record(
            now,
            API_REQUESTS,
            MetricKind::Counter,
            &[
                ("endpoint", endpoint),
                ("method", method),
                ("status", status),
                ("authenticated", authenticated),
            ],
            1.0,
        );
        self.state.record(
            now,
            API_REQUEST_DURATION,
            MetricKind::Timing,
            &[("endpoint", endpoint), ("method", method)],
            duration.as_secs_f64() * 1e3,
        );
    }

    /// Counts an authentication attempt ([`AUTH_ATTEMPTS`], label `outcome`).
    pub fn record_auth(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.increment(AUTH_ATTEMPTS, &[("outcome", outcome)], 1.0);
    }

    /// A recorder for the `metrics` crate's macros that records into this
    /// facet (see [`MetricsRecorder`]), for `metrics::with_local_recorder`
    /// or to install yourself. It holds the series in memory, not the vault.
    #[cfg(feature = "metrics")]
    pub fn recorder(&self) -> MetricsRecorder {
        MetricsRecorder::new(self.state.table().clone(), self.core.shared_clock().clone())
    }

    /// Installs [`recorder`](Metrics::recorder) as the process's global
    /// `metrics` recorder, so that every `counter!`, `gauge!` and
    /// `histogram!` in the process records into this vault. The `metrics`
    /// crate sets it once per process: a second call (for this vault or
    /// another, or after another library's recorder) is
    /// [`Error::RecorderAlreadyInstalled`].
    #[cfg(feature = "metrics")]
    pub fn install_recorder(&self) -> Result<()> {
        ::metrics::set_global_recorder(self.recorder()).map_err(|_| Error::RecorderAlreadyInstalled)
    }

    /// Writes every series' open interval now, as
    /// [`Vault::close`](crate::Vault::close) does (later records in the same
    /// interval are merged into the same point).
    pub async fn flush_all(&self) -> Result<()> {
        self.state.flush(self.core, true).await
    }

    /// The stored points of `name` whose labels include `labels`, from
    /// `from` (inclusive) to `to` (exclusive), merged per `resolution`
    /// (at least the interval). Buckets without points are left out.
    pub async fn series(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        from: Timestamp,
        to: Timestamp,
        resolution: Duration,
    ) -> Result<Vec<SeriesPoint>> {
        let res = i64::try_from(resolution.as_millis()).unwrap_or(i64::MAX);
        if res < 1000 {
            return Err(Error::invalid("resolution", "shorter than a second"));
        }
        let rows = self.storage().points(Some(name), from, to).await?;
        let mut buckets: BTreeMap<i64, Agg> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.has_labels(labels)) {
            let offset = (row.agg.start_ms - from.as_millis()).div_euclid(res) * res;
            let bucket = from.as_millis() + offset;
            merge_into(buckets.entry(bucket), &row.agg)?;
        }
        Ok(buckets
            .into_iter()
            .map(|(start, agg)| SeriesPoint {
                start: Timestamp::from_millis(start),
                last: agg.last,
                summary: Summary::of(&agg),
            })
            .collect())
    }

    /// Totals and p50/p95/p99 of `name` (series whose labels include
    /// `labels`) over the points that start in `[from, to)`: the merge of
    /// their sketches.
    pub async fn percentiles(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Summary> {
        let rows = self.storage().points(Some(name), from, to).await?;
        let mut total: Option<Agg> = None;
        for row in rows.iter().filter(|r| r.has_labels(labels)) {
            match &mut total {
                Some(t) => t.merge(&row.agg, true)?,
                None => total = Some(row.agg.clone()),
            }
        }
        Ok(total.map_or(
            Summary {
                count: 0,
                sum: 0.0,
                min: None,
                max: None,
                p50: None,
                p95: None,
                p99: None,
            },
            |t| Summary::of(&t),
        ))
    }

    /// Requests, 4xx and 5xx per endpoint in `[from, to)`, from
    /// [`record_api_call`](Metrics::record_api_call)'s counter.
    pub async fn error_rates(&self, from: Timestamp, to: Timestamp) -> Result<Vec<EndpointErrors>> {
        let rows = self
            .storage()
            .counter_totals(API_REQUESTS, from, to)
            .await?;
        let mut by: BTreeMap<String, EndpointErrors> = BTreeMap::new();
        for (labels, total) in rows {
            let endpoint = labels.get("endpoint").cloned().unwrap_or_default();
            let status: u16 = labels
                .get("status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let e = by.entry(endpoint.clone()).or_insert(EndpointErrors {
                endpoint,
                requests: 0,
                client_errors: 0,
                server_errors: 0,
                error_rate: 0.0,
            });
            let n = total as u64;
            e.requests += n;
            match status {
                400..=499 => e.client_errors += n,
                500.. => e.server_errors += n,
                _ => {}
            }
        }
        Ok(by
            .into_values()
            .map(|mut e| {
                e.error_rate = e.server_errors as f64 / (e.requests.max(1)) as f64;
                e
            })
            .collect())
    }

    /// Authentication attempts in `[from, to)`, from
    /// [`record_auth`](Metrics::record_auth)'s counter.
    pub async fn auth(&self, from: Timestamp, to: Timestamp) -> Result<AuthCounts> {
        let mut counts = AuthCounts::default();
        for (labels, total) in self
            .storage()
            .counter_totals(AUTH_ATTEMPTS, from, to)
            .await?
        {
            match labels.get("outcome").map(String::as_str) {
                Some("success") => counts.success += total as u64,
                Some("failure") => counts.failure += total as u64,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Sessions live now: not revoked, not expired, not idle past their
    /// timeout (as last written: last-seen times are written behind).
    /// Counted from an index of the unrevoked, unexpired sessions, on a
    /// reader connection's thread.
    pub async fn active_sessions(&self) -> Result<u64> {
        self.sources.active_sessions().await
    }

    /// The sizes of the database file and its WAL now; `None` on
    /// PostgreSQL, which has no file of the vault's.
    pub fn file_sizes(&self) -> Option<FileSizes> {
        self.core.store().ok().map(|store| file_sizes(store.path()))
    }

    /// Every series, error rates, auth counts, live sessions and file sizes
    /// over `[from, to)`.
    pub async fn report(&self, from: Timestamp, to: Timestamp) -> Result<MetricsReport> {
        let rows = self.storage().points(None, from, to).await?;
        let mut merged: BTreeMap<(String, String, &'static str), (MetricKind, Agg)> =
            BTreeMap::new();
        for row in rows {
            let key = (row.name.to_string(), row.labels.clone(), row.kind.as_str());
            match merged.get_mut(&key) {
                Some((_, agg)) => agg.merge(&row.agg, true)?,
                None => {
                    merged.insert(key, (row.kind, row.agg));
                }
            }
        }
        let series = merged
            .into_iter()
            .map(|((name, labels, _), (kind, agg))| {
                Ok(SeriesSummary {
                    name,
                    labels: serde_json::from_str(&labels)?,
                    kind,
                    last: agg.last,
                    summary: Summary::of(&agg),
                })
            })
            .collect::<Result<_>>()?;
        Ok(MetricsReport {
            from,
            to,
            series,
            error_rates: self.error_rates(from, to).await?,
            auth: self.auth(from, to).await?,
            active_sessions: self.active_sessions().await?,
            files: self.file_sizes(),
        })
    }

    /// The Prometheus text exposition (format 0.0.4) of what is stored:
    /// counters as `<name>_total` (all retained points), gauges (their last
    /// value), timings as summaries in seconds (`<name>_seconds`, quantiles
    /// 0.5/0.95/0.99 over the last `window`, `_sum`/`_count` over all
    /// retained points), and the vault's own gauges (file and WAL bytes,
    /// live sessions). What is still in memory is not included: call
    /// [`flush_all`](Metrics::flush_all) first to include it.
    pub async fn prometheus(&self, window: Duration) -> Result<String> {
        let now = self.core.now();
        let totals = self.storage().totals().await?;
        let recent = self
            .storage()
            .points(None, now.saturating_sub(window), Timestamp::MAX)
            .await?;
        let mut quantiles: HashMap<(String, String), Agg> = HashMap::new();
        for row in recent.into_iter().filter(|r| r.kind == MetricKind::Timing) {
            match quantiles.entry((row.name.to_string(), row.labels.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().merge(&row.agg, true)?
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(row.agg);
                }
            }
        }
        let mut out = prom::Exposition::default();
        for total in &totals {
            let labels: BTreeMap<String, String> = serde_json::from_str(&total.labels)?;
            match total.kind {
                MetricKind::Counter => out.counter(&total.name, &labels, total.sum),
                MetricKind::Gauge => out.gauge(&total.name, &labels, total.last),
                MetricKind::Timing => {
                    let agg = quantiles.get(&(total.name.clone(), total.labels.clone()));
                    let q = |p: f64| agg.and_then(|a| a.quantile(p)).map(|ms| ms / 1e3);
                    out.summary(
                        &total.name,
                        &labels,
                        &[(0.5, q(0.5)), (0.95, q(0.95)), (0.99, q(0.99))],
                        total.sum / 1e3,
                        total.count,
                    );
                }
            }
        }
        let none = BTreeMap::new();
        out.gauge(
            "statevault_active_sessions",
            &none,
            self.active_sessions().await? as f64,
        );
        if let Some(files) = self.file_sizes() {
            out.gauge("statevault_file_bytes", &none, files.file_bytes as f64);
            out.gauge("statevault_wal_bytes", &none, files.wal_bytes as f64);
        }
        // This process's cache counters, per level.
        let cache = self.sources.cache_counts().await?;
        for (level, hits, misses, evictions, entries, bytes) in cache.levels {
            let labels = BTreeMap::from([("level".to_owned(), level.to_owned())]);
            out.counter("statevault_cache_hits", &labels, hits as f64);
            out.counter("statevault_cache_misses", &labels, misses as f64);
            out.counter("statevault_cache_evictions", &labels, evictions as f64);
            out.gauge("statevault_cache_entries", &labels, entries as f64);
            out.gauge("statevault_cache_bytes", &labels, bytes as f64);
        }
        out.gauge("statevault_cache_hit_ratio", &none, cache.hit_ratio);
        Ok(out.finish())
    }

    /// Retention: merges points older than `downsample_after` into hourly
    /// points, then deletes points older than `retention`, at most 500 rows
    /// per transaction.
    #[tracing::instrument(name = "metrics.sweep", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn sweep(&self) -> Result<MetricsSweep> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let now = self.core.now();
                let config = &self.state.config;
                let mut counts = MetricsSweep::default();
                let cutoff = now
                    .saturating_sub(config.downsample_after)
                    .as_millis()
                    .div_euclid(HOUR_MS)
                    * HOUR_MS;
                loop {
                    let n = self
                        .storage()
                        .downsample(Timestamp::from_millis(cutoff), SWEEP_BATCH)
                        .await?;
                    counts.downsampled += n;
                    if n < SWEEP_BATCH as u64 {
                        break;
                    }
                }
                let purge_before = now.saturating_sub(config.retention);
                loop {
                    let n = self.storage().purge(purge_before, SWEEP_BATCH).await?;
                    counts.purged += n;
                    if n < SWEEP_BATCH as u64 {
                        break;
                    }
                }
                Ok(counts)
            }
            .await,
            crate::trace::ok,
        )
    }
}

fn merge_into(entry: std::collections::btree_map::Entry<'_, i64, Agg>, agg: &Agg) -> Result<()> {
    match entry {
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(agg, true),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(agg.clone());
            Ok(())
        }
    }
}

/// `status` in decimal, in `buf`, without allocating.
fn status_text(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The sizes of the database file at `path` and its WAL now.
pub(crate) fn file_sizes(path: &std::path::Path) -> FileSizes {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    FileSizes {
        file_bytes: size(path),
        wal_bytes: size(&crate::store::with_suffix(path, "-wal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_digits() {
        let mut buf = [0u8; 5];
        assert_eq!(status_text(200, &mut buf), "200");
        assert_eq!(status_text(0, &mut buf), "0");
        assert_eq!(status_text(65535, &mut buf), "65535");
    }
}

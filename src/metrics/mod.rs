//! Metrics: counters, gauges and timings with labels, aggregated in memory
//! and written once per interval, with a mergeable quantile sketch in every
//! stored point so that percentiles over any range are exact merges.
//!
//! # How it works
//!
//! - Recording ([`Metrics::increment`], [`Metrics::gauge`],
//!   [`Metrics::timing`], [`Metrics::record_api_call`]) touches memory only:
//!   one of 32 shard locks, chosen by a hash of (name, labels), held for a
//!   few hundred nanoseconds and never across an `.await`. Recording never
//!   allocates once a series exists. The time is the vault clock's
//!   [`now_coarse`](crate::Clock::now_coarse) (a few milliseconds old with
//!   the system clock, a few nanoseconds to read): plenty for intervals of a
//!   second or more.
//! - Each series keeps the aggregate of its current interval (default 60 s,
//!   [`MetricsConfig::interval`]): count, sum, min, max, last value, and for
//!   timings a [DDSketch](https://arxiv.org/abs/1908.10693) with a relative
//!   accuracy of 1 % ([`RELATIVE_ERROR`]) and at most 2048 bins
//!   ([`MAX_BINS`]).
//! - [`Vault::flush`] (the vault's background task, every `flush_interval`)
//!   writes the intervals that have ended, in one transaction with
//!   multi-row upserts; [`Vault::close`] writes the open interval too. A
//!   point written twice (a close and a restart within one interval) is
//!   merged with the stored one, never overwritten.
//! - Queries read the stored points: a range's percentiles are the merge of
//!   the sketches of the points that start in it.
//! - [`Metrics::sweep`] downsamples points older than 7 days to hourly
//!   points and purges points older than 30 days.

mod prom;
mod sql;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use sketches_ddsketch::{Config, DDSketch};

use crate::core::Core;
use crate::core::lock;
use crate::{Error, Result, Timestamp};

pub use prom::sanitize_name;

/// The sketch's relative accuracy: a reported quantile is within ±1 % of
/// the value of the sample at that rank.
pub const RELATIVE_ERROR: f64 = 0.01;
/// The most bins a sketch holds (8 bytes each); past it the lowest bins
/// collapse, so memory per series is bounded whatever is recorded. With 1 %
/// accuracy, 2048 bins cover values over 17 orders of magnitude.
pub const MAX_BINS: u32 = 2048;
/// Values at or below this count as zero in a sketch.
const MIN_VALUE: f64 = 1e-9;

const SHARDS: usize = 32;
const HOUR_MS: i64 = 3_600_000;
/// Rows per retention transaction.
const SWEEP_BATCH: i64 = 500;

/// The name [`Metrics::record_api_call`] counts requests under.
pub const API_REQUESTS: &str = "api_requests";
/// The name [`Metrics::record_api_call`] times requests under (milliseconds).
pub const API_REQUEST_DURATION: &str = "api_request_duration";
/// The name [`Metrics::record_auth`] counts attempts under.
pub const AUTH_ATTEMPTS: &str = "auth_attempts";

fn sketch_config() -> Config {
    Config::new(RELATIVE_ERROR, MAX_BINS, MIN_VALUE)
}

/// How metrics are aggregated and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Length of one stored point (1 s – 1 h, default 60 s).
    pub interval: Duration,
    /// Points older than this are purged by [`Metrics::sweep`] (default 30 days).
    pub retention: Duration,
    /// Points older than this are merged into hourly points by
    /// [`Metrics::sweep`] (default 7 days).
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

    fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis()).unwrap_or(HOUR_MS)
    }
}

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
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Timing => "timing",
        }
    }

    fn parse(text: &str) -> Result<Self> {
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

/// One interval's aggregate of a series.
#[derive(Clone)]
struct Agg {
    start_ms: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    sketch: Option<DDSketch>,
}

impl Agg {
    fn empty(kind: MetricKind) -> Self {
        Agg {
            start_ms: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            sketch: (kind == MetricKind::Timing).then(|| DDSketch::new(sketch_config())),
        }
    }

    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.last = value;
        if let Some(sketch) = &mut self.sketch {
            sketch.add(value);
        }
    }

    /// Merges `other`, which is later in time when `other_later`.
    fn merge(&mut self, other: &Agg, other_later: bool) -> Result<()> {
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 || other_later {
            self.last = other.last;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        match (&mut self.sketch, &other.sketch) {
            (Some(a), Some(b)) => a
                .merge(b)
                .map_err(|e| Error::invalid("metrics.sketch", e.to_string()))?,
            (None, Some(b)) => self.sketch = Some(b.clone()),
            _ => {}
        }
        Ok(())
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.as_ref()?.quantile(q).ok().flatten()
    }
}

/// A series in memory: its identity and the current interval's aggregate.
struct Series {
    name: std::sync::Arc<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
    labels_json: std::sync::Arc<str>,
    kind: MetricKind,
    agg: Agg,
}

impl Series {
    fn matches(&self, name: &str, kind: MetricKind, labels: &[(&str, &str)]) -> bool {
        if self.kind != kind || &*self.name != name || self.labels.len() != labels.len() {
            return false;
        }
        // Callers usually give labels in one order: try it first.
        let in_order = self
            .labels
            .iter()
            .zip(labels)
            .all(|((sk, sv), (k, v))| &**sk == *k && &**sv == *v);
        in_order
            || labels.iter().all(|(k, v)| {
                self.labels
                    .iter()
                    .any(|(sk, sv)| &**sk == *k && &**sv == *v)
            })
    }
}

/// A point taken from memory, to be written.
pub(crate) struct Point {
    name: std::sync::Arc<str>,
    labels: std::sync::Arc<str>,
    kind: MetricKind,
    interval_secs: i64,
    agg: Agg,
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One shard per cache-line pair, so tasks on neighbouring shards do not
/// contend for one line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Series by the hash of (name, kind, labels); equal hashes share a Vec.
    series: HashMap<u64, Vec<Series>, BuildHasherDefault<Prehashed>>,
    /// Ended intervals not yet written.
    closed: Vec<Point>,
}

/// The facet's state, one per vault.
pub(crate) struct MetricsState {
    config: MetricsConfig,
    /// Seeded per process: label values may come from requests.
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl MetricsState {
    pub(crate) fn new(config: MetricsConfig) -> Result<Self> {
        config.validate()?;
        Ok(MetricsState {
            config,
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        })
    }

    fn record(
        &self,
        now: Timestamp,
        name: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        if !value.is_finite() || (kind == MetricKind::Counter && value < 0.0) {
            tracing::debug!(
                name,
                value,
                "metric value dropped: not finite, or a negative count"
            );
            return;
        }
        let mut hash = self.hasher.hash_one((name, kind as u8));
        for pair in labels {
            hash = hash.wrapping_add(self.hasher.hash_one(pair));
        }
        let interval = self.config.interval_ms();
        let start_ms = now.as_millis().div_euclid(interval) * interval;
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut shard = lock(shard);
        let Shard { series, closed } = &mut *shard;
        let bucket = series.entry(hash).or_default();
        let index = match bucket.iter().position(|s| s.matches(name, kind, labels)) {
            Some(i) => i,
            None => {
                // Checked only for a new series: labels with a key twice
                // never match one, so they always come here.
                if has_duplicate_keys(labels) {
                    tracing::debug!(name, "metric dropped: a label name given twice");
                    return;
                }
                bucket.push(new_series(name, kind, labels));
                bucket.len() - 1
            }
        };
        let s = &mut bucket[index];
        if s.agg.count > 0 && s.agg.start_ms != start_ms {
            let ended = std::mem::replace(&mut s.agg, Agg::empty(kind));
            closed.push(Point {
                name: s.name.clone(),
                labels: s.labels_json.clone(),
                kind,
                interval_secs: interval / 1000,
                agg: ended,
            });
        }
        if s.agg.count == 0 {
            s.agg.start_ms = start_ms;
        }
        s.agg.add(value);
    }

    /// Takes the points of ended intervals (every point when `all`), and
    /// drops series that recorded nothing for a whole interval.
    fn take(&self, now: Timestamp, all: bool) -> Vec<Point> {
        let interval = self.config.interval_ms();
        let current = now.as_millis().div_euclid(interval) * interval;
        let mut taken = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let Shard { series, closed } = &mut *shard;
            taken.append(closed);
            series.retain(|_, bucket| {
                bucket.retain_mut(|s| {
                    if s.agg.count == 0 {
                        return false;
                    }
                    if all || s.agg.start_ms < current {
                        let ended = std::mem::replace(&mut s.agg, Agg::empty(s.kind));
                        taken.push(Point {
                            name: s.name.clone(),
                            labels: s.labels_json.clone(),
                            kind: s.kind,
                            interval_secs: interval / 1000,
                            agg: ended,
                        });
                    }
                    true
                });
                !bucket.is_empty()
            });
        }
        taken
    }

    /// Puts back points whose write failed; the next flush writes them.
    fn put_back(&self, points: Vec<Point>) {
        lock(&self.shards[0]).closed.extend(points);
    }

    /// Writes ended intervals (all intervals when `all`) in one transaction.
    pub(crate) async fn flush(&self, core: &Core, all: bool) -> Result<()> {
        let points = self.take(core.now_coarse(), all);
        if points.is_empty() {
            return Ok(());
        }
        let written = async {
            let mut tx = core.store().sqlx_transaction().await?;
            sql::write_points(&mut tx, &points).await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = written {
            self.put_back(points);
            return Err(e);
        }
        Ok(())
    }
}

fn has_duplicate_keys(labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .enumerate()
        .any(|(i, (k, _))| labels[..i].iter().any(|(other, _)| other == k))
}

fn new_series(name: &str, kind: MetricKind, labels: &[(&str, &str)]) -> Series {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let json = serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".to_owned());
    Series {
        name: name.into(),
        labels: sorted
            .iter()
            .map(|(k, v)| (Box::from(*k), Box::from(*v)))
            .collect(),
        labels_json: json.into(),
        kind,
        agg: Agg::empty(kind),
    }
}

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
    /// The median (timings only; within [`RELATIVE_ERROR`]).
    pub p50: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

impl Summary {
    fn of(agg: &Agg) -> Summary {
        let some = |v: f64| (agg.count > 0).then_some(v);
        Summary {
            count: agg.count,
            sum: agg.sum,
            min: some(agg.min),
            max: some(agg.max),
            p50: agg.quantile(0.50),
            p95: agg.quantile(0.95),
            p99: agg.quantile(0.99),
        }
    }
}

/// One point of [`Metrics::series`]: the merge of the stored points that
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

/// Requests and errors of one endpoint ([`Metrics::error_rates`]).
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

/// Authentication attempts ([`Metrics::auth`]).
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

/// Everything [`Metrics::report`] knows, as `statevault metrics --format json` prints it.
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
    /// File sizes now.
    pub files: FileSizes,
}

/// What [`Metrics::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSweep {
    /// Points older than the retention, deleted.
    pub purged: u64,
    /// Fine points merged into hourly points.
    pub downsampled: u64,
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

    /// Writes every series' open interval now, as [`Vault::close`] does
    /// (later records in the same interval are merged into the same point).
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
        let rows = sql::points(self.core, Some(name), from, to).await?;
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
        let rows = sql::points(self.core, Some(name), from, to).await?;
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
        let rows = sql::counter_totals(self.core, API_REQUESTS, from, to).await?;
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
        for (labels, total) in sql::counter_totals(self.core, AUTH_ATTEMPTS, from, to).await? {
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

    /// The sizes of the database file and its WAL now.
    pub fn file_sizes(&self) -> FileSizes {
        file_sizes(self.core.store().path())
    }

    /// Every series, error rates, auth counts, live sessions and file sizes
    /// over `[from, to)`.
    pub async fn report(&self, from: Timestamp, to: Timestamp) -> Result<MetricsReport> {
        let rows = sql::points(self.core, None, from, to).await?;
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
        let totals = sql::totals(self.core).await?;
        let recent =
            sql::points(self.core, None, now.saturating_sub(window), Timestamp::MAX).await?;
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
        let files = self.file_sizes();
        let none = BTreeMap::new();
        out.gauge("statevault_file_bytes", &none, files.file_bytes as f64);
        out.gauge("statevault_wal_bytes", &none, files.wal_bytes as f64);
        out.gauge(
            "statevault_active_sessions",
            &none,
            self.active_sessions().await? as f64,
        );
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
    pub async fn sweep(&self) -> Result<MetricsSweep> {
        let now = self.core.now();
        let config = &self.state.config;
        let mut counts = MetricsSweep::default();
        let cutoff = now
            .saturating_sub(config.downsample_after)
            .as_millis()
            .div_euclid(HOUR_MS)
            * HOUR_MS;
        loop {
            let n = sql::downsample_batch(self.core, Timestamp::from_millis(cutoff), SWEEP_BATCH)
                .await?;
            counts.downsampled += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        let purge_before = now.saturating_sub(config.retention);
        loop {
            let n = sql::purge_batch(self.core, purge_before, SWEEP_BATCH).await?;
            counts.purged += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        Ok(counts)
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

    #[test]
    fn sketch_round_trips_and_merges() {
        let mut a = Agg::empty(MetricKind::Timing);
        for v in 1..=1000 {
            a.add(f64::from(v));
        }
        let bytes = a.sketch.as_ref().unwrap().to_java_bytes();
        let back = DDSketch::from_java_bytes(&bytes).unwrap();
        let mut fresh = DDSketch::new(sketch_config());
        fresh.merge(&back).unwrap();
        assert_eq!(fresh.count(), 1000);
    }
}

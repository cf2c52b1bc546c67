//! The `metrics` crate's facade, recorded by the vault (feature `metrics`):
//! `counter!`, `gauge!` and `histogram!` calls anywhere in the process land
//! in this facet's series, are written per interval like
//! [`Metrics::increment`](crate::Metrics::increment)'s, and show in the same
//! Prometheus exposition.
//!
//! # How calls map to series
//!
//! - A `metrics` key (name and labels) is one series of this facet, under
//!   the same name and labels: a counter, a gauge, or a timing (the facet's
//!   distribution, with its DDSketch) for a histogram.
//! - Histogram values are taken to be **seconds**, the convention of the
//!   `metrics` crate and of Prometheus, and stored in milliseconds like
//!   every timing, so the exposition shows them as given, in
//!   `<name>_seconds`. A histogram described (`describe_histogram!`) in
//!   milliseconds, microseconds or nanoseconds is converted to that. A
//!   histogram described in another unit (bytes, a count) is stored so that
//!   the exposition shows its values unchanged, still in a family named
//!   `_seconds`: the facet knows no other distribution. Descriptions
//!   themselves are not kept.
//! - A gauge's `increment`/`decrement` apply to the value its handle holds
//!   (zero at first), and the result is recorded as the gauge's value.
//!   A counter's `absolute` records the difference from the total so far.
//!
//! # Cost
//!
//! The `metrics` macros look a handle up on every call. The recorder keeps
//! one handle per key, in shards found by the key's precomputed hash; each
//! handle holds its series' hash, name and labels, so a call does one
//! lookup there and then what [`Metrics::increment`](crate::Metrics::increment)
//! does, minus hashing the name and labels: a shard lock, a comparison, an
//! add. No call waits on the file.
//!
//! # Lifetime
//!
//! The recorder holds the facet's series in memory and the clock, never the
//! vault: it keeps no connection open and no background task alive. Once
//! the vault is closed or dropped, what the recorder is given is dropped.
//! The global recorder lasts as long as the process, so install it for the
//! vault that does too.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};

use super::state::SeriesTable;
use super::types::MetricKind;
use crate::clock::Clock;
use crate::core::lock;

const SHARDS: usize = 16;

/// A [`metrics::Recorder`] that records into a vault's metrics facet. Get it
/// from [`Metrics::recorder`](crate::Metrics::recorder), or install it as
/// the process's global recorder with
/// [`Metrics::install_recorder`](crate::Metrics::install_recorder).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let vault = statevault::Vault::open(statevault::VaultOptions::new(dir.path().join("v.db"))).await?;
/// let recorder = vault.metrics().recorder();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("jobs_done", "queue" => "mail").increment(1);
///     metrics::histogram!("job_duration_seconds").record(0.25);
/// });
/// vault.metrics().flush_all().await?;
/// let text = vault.metrics().prometheus(std::time::Duration::from_secs(60)).await?;
/// assert!(text.contains("jobs_done_total{queue=\"mail\"} 1"));
/// assert!(text.contains("job_duration_seconds{quantile=\"0.5\"} 0.25"));
/// # vault.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct MetricsRecorder {
    table: Arc<SeriesTable>,
    clock: Arc<dyn Clock>,
    counters: Handles<CounterHandle>,
    gauges: Handles<GaugeHandle>,
    histograms: Handles<HistogramHandle>,
    /// Milliseconds per unit of the histograms described with a unit.
    histogram_units: Mutex<HashMap<String, f64>>,
}

impl fmt::Debug for MetricsRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRecorder").finish_non_exhaustive()
    }
}

impl MetricsRecorder {
    pub(super) fn new(table: Arc<SeriesTable>, clock: Arc<dyn Clock>) -> Self {
        MetricsRecorder {
            table,
            clock,
            counters: Handles::default(),
            gauges: Handles::default(),
            histograms: Handles::default(),
            histogram_units: Mutex::new(HashMap::new()),
        }
    }

    /// The series a key names, resolved once for its handle.
    fn series(&self, key: &Key, kind: MetricKind) -> Series {
        let labels: Box<[(Box<str>, Box<str>)]> = key
            .labels()
            .map(|l| (Box::from(l.key()), Box::from(l.value())))
            .collect();
        Series {
            table: self.table.clone(),
            clock: self.clock.clone(),
            hash: self.table.hash(key.name(), kind, &labels),
            name: key.name().into(),
            kind,
            labels,
        }
    }

    fn ms_per_unit(&self, name: &str) -> f64 {
        lock(&self.histogram_units)
            .get(name)
            .copied()
            .unwrap_or(MS_PER_SECOND)
    }
}

impl metrics::Recorder for MetricsRecorder {
    /// Counter descriptions and units are not kept.
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    /// Gauge descriptions and units are not kept.
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    /// Sets the unit of the histogram's values (see the module docs), for
    /// its handles now and later.
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        let ms = unit.map_or(MS_PER_SECOND, ms_per);
        lock(&self.histogram_units).insert(key.as_str().to_owned(), ms);
        self.histograms.for_each(|k, h| {
            if k.name() == key.as_str() {
                h.ms_per_unit.store(ms.to_bits(), Ordering::Relaxed);
            }
        });
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counters.get(key, || CounterHandle {
            series: self.series(key, MetricKind::Counter),
            total: AtomicU64::new(0),
        }))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.gauges.get(key, || GaugeHandle {
            series: self.series(key, MetricKind::Gauge),
            value: Mutex::new(0.0),
        }))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.get(key, || HistogramHandle {
            series: self.series(key, MetricKind::Timing),
            ms_per_unit: AtomicU64::new(self.ms_per_unit(key.name()).to_bits()),
        }))
    }
}

const MS_PER_SECOND: f64 = 1e3;

/// Milliseconds per `unit`: a time unit converts, any other keeps its
/// values as they are in the exposition (which shows seconds).
fn ms_per(unit: Unit) -> f64 {
    match unit {
        Unit::Milliseconds => 1.0,
        Unit::Microseconds => 1e-3,
        Unit::Nanoseconds => 1e-6,
        _ => MS_PER_SECOND,
    }
}

/// One handle per key, in shards: the macros look one up on every call.
struct Handles<H> {
    /// Keyed by the key's precomputed hash, mixed with a per-process seed
    /// (label values may come from requests).
    shards: Box<[HandleShard<H>]>,
}

type HandleShard<H> = Mutex<HashMap<Key, Arc<H>, foldhash::fast::RandomState>>;

impl<H> Default for Handles<H> {
    fn default() -> Self {
        let seed = foldhash::fast::RandomState::default();
        Handles {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(seed.clone())))
                .collect(),
        }
    }
}

impl<H> Handles<H> {
    /// The handle of `key`, made by `make` the first time.
    fn get(&self, key: &Key, make: impl FnOnce() -> H) -> Arc<H> {
        let shard = &self.shards[(key.get_hash() as usize) % SHARDS];
        let mut handles = lock(shard);
        if let Some(handle) = handles.get(key) {
            return handle.clone();
        }
        let handle = Arc::new(make());
        handles.insert(key.clone(), handle.clone());
        handle
    }

    fn for_each(&self, mut f: impl FnMut(&Key, &H)) {
        for shard in self.shards.iter() {
            for (key, handle) in lock(shard).iter() {
                f(key, handle);
            }
        }
    }
}

/// A series resolved once: what a handle records into.
struct Series {
    table: Arc<SeriesTable>,
    clock: Arc<dyn Clock>,
    hash: u64,
    name: Box<str>,
    kind: MetricKind,
    labels: Box<[(Box<str>, Box<str>)]>,
}

impl Series {
    fn record(&self, value: f64) {
        self.table.record(
            self.clock.now_coarse(),
            self.hash,
            &self.name,
            self.kind,
            &self.labels,
            value,
        );
    }
}

struct CounterHandle {
    series: Series,
    /// Everything counted so far, for `absolute`.
    total: AtomicU64,
}

impl CounterFn for CounterHandle {
    fn increment(&self, value: u64) {
        self.total.fetch_add(value, Ordering::Relaxed);
        self.series.record(value as f64);
    }

    fn absolute(&self, value: u64) {
        let before = self.total.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.series.record((value - before) as f64);
        }
    }
}

struct GaugeHandle {
    series: Series,
    /// The gauge's value; recorded while held, so the last value recorded
    /// is the last one computed.
    value: Mutex<f64>,
}

impl GaugeHandle {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut value = lock(&self.value);
        let new = f(*value);
        // A value that is not finite is dropped, and the gauge keeps its own.
        if new.is_finite() {
            *value = new;
        }
        self.series.record(new);
    }
}

impl GaugeFn for GaugeHandle {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct HistogramHandle {
    series: Series,
    /// Milliseconds per unit of the values given (`f64` bits).
    ms_per_unit: AtomicU64,
}

impl HistogramFn for HistogramHandle {
    fn record(&self, value: f64) {
        let ms_per_unit = f64::from_bits(self.ms_per_unit.load(Ordering::Relaxed));
        self.series.record(value * ms_per_unit);
    }
}

//! The metrics' state in memory: series sharded by a hash of (name, kind,
//! labels), each holding its current interval's aggregate, and the ended
//! intervals waiting for the next flush.
//!
//! The series live in a [`SeriesTable`] behind an `Arc`, so that the
//! `metrics` facade's recorder can share them without holding the vault.
//! Once the vault closes (or its last handle drops) the table is marked
//! closed and drops what is recorded after: nothing would write it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::backend::MetricsBackend;
use super::config::MetricsConfig;
use super::points::{Agg, Point};
use super::storage::Backend;
use super::types::MetricKind;
use crate::core::{Core, lock};
use crate::{Result, Timestamp};

const SHARDS: usize = 32;

/// Where the points live: the one place that picks the backend.
pub(super) fn backend(core: &Core) -> Backend<'_> {
    Backend::of(core)
}

/// A series in memory: its identity and the current interval's aggregate.
struct Series {
    name: Arc<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
    labels_json: Arc<str>,
    kind: MetricKind,
    agg: Agg,
}

impl Series {
    fn matches(&self, name: &str, kind: MetricKind, labels: &[impl LabelPair]) -> bool {
        if self.kind != kind || &*self.name != name || self.labels.len() != labels.len() {
            return false;
        }
        // Callers usually give labels in one order: try it first.
        let in_order = self
            .labels
            .iter()
            .zip(labels)
            .all(|((sk, sv), pair)| pair.pair() == (&**sk, &**sv));
        in_order
            || labels.iter().all(|pair| {
                self.labels
                    .iter()
                    .any(|(sk, sv)| pair.pair() == (&**sk, &**sv))
            })
    }
}

/// A label as callers give it: borrowed (`("queue", "a")`) or owned (what
/// the facade's handles keep).
pub(super) trait LabelPair {
    fn pair(&self) -> (&str, &str);
}

impl<K: AsRef<str>, V: AsRef<str>> LabelPair for (K, V) {
    fn pair(&self) -> (&str, &str) {
        (self.0.as_ref(), self.1.as_ref())
    }
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
    pub(super) config: MetricsConfig,
    series: Arc<SeriesTable>,
}

impl Drop for MetricsState {
    fn drop(&mut self) {
        self.close();
    }
}

impl MetricsState {
    pub(crate) fn new(config: MetricsConfig) -> Result<Self> {
        config.validate()?;
        Ok(MetricsState {
            series: Arc::new(SeriesTable {
                interval_ms: config.interval_ms(),
                hasher: foldhash::fast::RandomState::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                stopped: AtomicBool::new(false),
            }),
            config,
        })
    }

    /// The series, shared with the facade's recorder.
    #[cfg(feature = "metrics")]
    pub(super) fn table(&self) -> &Arc<SeriesTable> {
        &self.series
    }

    /// Adds `value` to its series' current interval.
    pub(super) fn record(
        &self,
        now: Timestamp,
        name: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let hash = self.series.hash(name, kind, labels);
        self.series.record(now, hash, name, kind, labels, value);
    }

    /// Stops recording: the vault is closing, and what is recorded from now
    /// on would never be written.
    pub(crate) fn close(&self) {
        self.series.stopped.store(true, Ordering::Relaxed);
    }

    /// Writes ended intervals (all intervals when `all`) in one transaction.
    #[tracing::instrument(name = "metrics.flush", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub(crate) async fn flush(&self, core: &Core, all: bool) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let points = self.series.take(core.now_coarse(), all);
                if points.is_empty() {
                    return Ok(());
                }
                if let Err(e) = backend(core).write_points(&points).await {
                    self.series.put_back(points);
                    return Err(e);
                }
                Ok(())
            }
            .await,
            crate::trace::ok,
        )
    }
}

/// Every series in memory, in shards.
pub(super) struct SeriesTable {
    interval_ms: i64,
    /// Seeded per process: label values may come from requests.
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Set when the vault closes or is dropped; records are dropped then.
    stopped: AtomicBool,
}

impl SeriesTable {
    /// The hash a series is found by: labels in any order give the same.
    pub(super) fn hash(&self, name: &str, kind: MetricKind, labels: &[impl LabelPair]) -> u64 {
        let mut hash = self.hasher.hash_one((name, kind as u8));
        for pair in labels {
            hash = hash.wrapping_add(self.hasher.hash_one(pair.pair()));
        }
        hash
    }

    /// Adds `value` to its series' current interval (`hash` is
    /// [`hash`](Self::hash) of the rest), closing the series' previous
    /// interval if that has ended.
    pub(super) fn record(
        &self,
        now: Timestamp,
        hash: u64,
        name: &str,
        kind: MetricKind,
        labels: &[impl LabelPair],
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
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let interval = self.interval_ms;
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
        let interval = self.interval_ms;
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
}

/// Whether a label name is given twice.
fn has_duplicate_keys(labels: &[impl LabelPair]) -> bool {
    labels.iter().enumerate().any(|(i, pair)| {
        labels[..i]
            .iter()
            .any(|other| other.pair().0 == pair.pair().0)
    })
}

/// A new series, its labels sorted by name.
fn new_series(name: &str, kind: MetricKind, labels: &[impl LabelPair]) -> Series {
    let sorted: BTreeMap<&str, &str> = labels.iter().map(LabelPair::pair).collect();
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

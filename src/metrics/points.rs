//! A series' aggregate over one interval ([`Agg`], with its quantile
//! sketch), the points that carry it to and from storage, and how points
//! merge: a range's percentiles are the merge of its points' sketches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sketches_ddsketch::{Config, DDSketch};

use super::config::HOUR_MS;
use super::types::{MetricKind, Summary};
use crate::{Error, Result, Timestamp};

/// The sketch's relative accuracy: a reported quantile is within ±1 % of
/// the value of the sample at that rank.
pub const RELATIVE_ERROR: f64 = 0.01;
/// The most bins a sketch holds (8 bytes each); past it the lowest bins
/// collapse, so memory per series is bounded whatever is recorded. With 1 %
/// accuracy, 2048 bins cover values over 17 orders of magnitude.
pub const MAX_BINS: u32 = 2048;
/// Values at or below this count as zero in a sketch.
const MIN_VALUE: f64 = 1e-9;

/// How every sketch is made, so that any two merge.
pub(crate) fn sketch_config() -> Config {
    Config::new(RELATIVE_ERROR, MAX_BINS, MIN_VALUE)
}

/// One interval's aggregate of a series.
#[derive(Clone)]
pub(crate) struct Agg {
    pub(crate) start_ms: i64,
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) last: f64,
    pub(crate) sketch: Option<DDSketch>,
}

impl Agg {
    /// An interval with nothing recorded yet (with a sketch for timings).
    pub(crate) fn empty(kind: MetricKind) -> Self {
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

    /// Records one value.
    pub(crate) fn add(&mut self, value: f64) {
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
    pub(crate) fn merge(&mut self, other: &Agg, other_later: bool) -> Result<()> {
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
            (Some(a), Some(b)) => a.merge(b).map_err(|e| Error::BadData {
                what: "a metric's sketch".into(),
                detail: format!("it does not merge with this process's: {e}"),
            })?,
            (None, Some(b)) => self.sketch = Some(b.clone()),
            _ => {}
        }
        Ok(())
    }

    /// The `q` quantile of a timing (`None` for other kinds, or when empty).
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.as_ref()?.quantile(q).ok().flatten()
    }
}

impl Summary {
    /// The totals and percentiles of `agg`.
    pub(crate) fn of(agg: &Agg) -> Summary {
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

/// A point taken from memory (or downsampled), to be written.
pub(crate) struct Point {
    pub(crate) name: Arc<str>,
    /// The labels as JSON, keys sorted.
    pub(crate) labels: Arc<str>,
    pub(crate) kind: MetricKind,
    pub(crate) interval_secs: i64,
    pub(crate) agg: Agg,
}

/// A point as stored.
pub(crate) struct StoredPoint {
    pub(crate) name: Arc<str>,
    pub(crate) labels: String,
    pub(crate) kind: MetricKind,
    pub(crate) interval_secs: i64,
    pub(crate) agg: Agg,
}

/// The columns of `metrics` that [`StoredPoint::from_row`] reads, in its
/// order.
pub(crate) const COLUMNS: &str =
    "name, labels, kind, interval_start, interval_secs, count, sum, min, max, last, sketch";

impl StoredPoint {
    /// A point from a row selecting [`COLUMNS`], from either database.
    pub(crate) fn from_row<'r, R>(row: &'r R) -> Result<StoredPoint>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Timestamp: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let kind = MetricKind::parse(&row.try_get::<String, _>(2)?)?;
        let start: Timestamp = row.try_get(3)?;
        let sketch: Option<Vec<u8>> = row.try_get(10)?;
        let sketch = sketch
            .map(|bytes| {
                DDSketch::from_java_bytes(&bytes).map_err(|e| Error::BadData {
                    what: "a metric's sketch".into(),
                    detail: format!("it does not decode: {e:?}"),
                })
            })
            .transpose()?;
        let count: i64 = row.try_get(5)?;
        Ok(StoredPoint {
            name: row.try_get::<String, _>(0)?.into(),
            labels: row.try_get(1)?,
            kind,
            interval_secs: row.try_get(4)?,
            agg: Agg {
                start_ms: start.as_millis(),
                count: u64::try_from(count).unwrap_or(0),
                sum: row.try_get(6)?,
                min: row.try_get::<Option<f64>, _>(7)?.unwrap_or(f64::INFINITY),
                max: row
                    .try_get::<Option<f64>, _>(8)?
                    .unwrap_or(f64::NEG_INFINITY),
                last: row.try_get::<Option<f64>, _>(9)?.unwrap_or(0.0),
                sketch,
            },
        })
    }

    /// Whether its labels include every pair of `wanted`.
    pub(crate) fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        if wanted.is_empty() {
            return true;
        }
        let Ok(labels) = serde_json::from_str::<BTreeMap<String, String>>(&self.labels) else {
            return false;
        };
        wanted
            .iter()
            .all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
    }

    /// The point merged into the hourly point its interval falls in.
    pub(crate) fn into_hourly(self) -> Point {
        let mut agg = self.agg;
        agg.start_ms = agg.start_ms.div_euclid(HOUR_MS) * HOUR_MS;
        Point {
            name: self.name,
            labels: self.labels.into(),
            kind: self.kind,
            interval_secs: HOUR_MS / 1000,
            agg,
        }
    }
}

/// A point's identity: name, labels (JSON), interval start (ms), interval
/// length (s).
pub(crate) type PointKey = (Arc<str>, Arc<str>, i64, i64);

/// Points about to be written, one per series and interval.
pub(crate) type Merged = HashMap<PointKey, (MetricKind, Agg)>;

/// Merges points of the same series and interval (a close and a restart
/// within one interval give two), in order.
pub(crate) fn merge_by_series(points: &[Point]) -> Result<Merged> {
    let mut merged: Merged = HashMap::with_capacity(points.len());
    for p in points {
        let key = (
            p.name.clone(),
            p.labels.clone(),
            p.agg.start_ms,
            p.interval_secs,
        );
        match merged.get_mut(&key) {
            Some((_, agg)) => agg.merge(&p.agg, true)?,
            None => {
                merged.insert(key, (p.kind, p.agg.clone()));
            }
        }
    }
    Ok(merged)
}

/// Folds a stored point into the point about to be written over it, the
/// stored one first, so that a second write never loses the first. A point
/// recorded as another kind than stored is dropped.
pub(crate) fn merge_stored(merged: &mut Merged, stored: StoredPoint) -> Result<()> {
    let key: PointKey = (
        stored.name.clone(),
        stored.labels.as_str().into(),
        stored.agg.start_ms,
        stored.interval_secs,
    );
    if let Some((kind, agg)) = merged.get_mut(&key) {
        if *kind != stored.kind {
            tracing::warn!(name = %stored.name, "metric recorded as another kind than stored; point dropped");
            merged.remove(&key);
            return Ok(());
        }
        let mut base = stored.agg;
        base.merge(agg, true)?;
        *agg = base;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

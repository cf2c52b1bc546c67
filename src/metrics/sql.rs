//! Every statement of the metrics facet (SQLite). Interval starts are RFC
//! 3339 text from the vault's clock; sketches are DDSketch's binary form.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sketches_ddsketch::DDSketch;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{Agg, HOUR_MS, MetricKind, Point};
use crate::core::Core;
use crate::store::closed_or;
use crate::{Error, Result, Timestamp};

/// Rows per multi-row statement (11 variables each).
const ROWS_PER_STATEMENT: usize = 100;

/// A point as stored.
pub(crate) struct StoredPoint {
    pub(crate) name: Arc<str>,
    pub(crate) labels: String,
    pub(crate) kind: MetricKind,
    pub(crate) interval_secs: i64,
    pub(crate) agg: Agg,
}

impl StoredPoint {
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
}

/// Totals of one series over every stored point.
pub(crate) struct Total {
    pub(crate) name: String,
    pub(crate) labels: String,
    pub(crate) kind: MetricKind,
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) last: f64,
}

const COLUMNS: &str =
    "name, labels, kind, interval_start, interval_secs, count, sum, min, max, last, sketch";

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<StoredPoint> {
    let kind = MetricKind::parse(&row.try_get::<String, _>(2)?)?;
    let start: Timestamp = row.try_get(3)?;
    let sketch: Option<Vec<u8>> = row.try_get(10)?;
    let sketch = sketch
        .map(|bytes| {
            DDSketch::from_java_bytes(&bytes)
                .map_err(|e| Error::invalid("metrics.sketch", format!("cannot decode: {e:?}")))
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

type Key = (Arc<str>, Arc<str>, i64, i64);

/// Writes points, merging each with the stored point of the same series
/// and interval if there is one (a second write never loses the first).
pub(crate) async fn write_points(conn: &mut SqliteConnection, points: &[Point]) -> Result<()> {
    let mut merged: HashMap<Key, (MetricKind, Agg)> = HashMap::with_capacity(points.len());
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
    let mut slots: Vec<(i64, i64)> = merged.keys().map(|k| (k.2, k.3)).collect();
    slots.sort_unstable();
    slots.dedup();
    for (start_ms, secs) in slots {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM metrics WHERE interval_start = ?1 AND interval_secs = ?2"
        )))
        .bind(Timestamp::from_millis(start_ms))
        .bind(secs)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let stored = decode(row)?;
            let key: Key = (
                stored.name.clone(),
                stored.labels.as_str().into(),
                start_ms,
                secs,
            );
            if let Some((kind, agg)) = merged.get_mut(&key) {
                if *kind != stored.kind {
                    tracing::warn!(name = %stored.name, "metric recorded as another kind than stored; point dropped");
                    merged.remove(&key);
                    continue;
                }
                let mut base = stored.agg;
                base.merge(agg, true)?;
                *agg = base;
            }
        }
    }
    let rows: Vec<(Key, (MetricKind, Agg))> = merged.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO metrics ({COLUMNS}) "));
        qb.push_values(
            chunk,
            |mut b, ((name, labels, start_ms, secs), (kind, agg))| {
                let some = |v: f64| (agg.count > 0).then_some(v);
                b.push_bind(name.to_string())
                    .push_bind(labels.to_string())
                    .push_bind(kind.as_str())
                    .push_bind(Timestamp::from_millis(*start_ms))
                    .push_bind(*secs)
                    .push_bind(i64::try_from(agg.count).unwrap_or(i64::MAX))
                    .push_bind(agg.sum)
                    .push_bind(some(agg.min))
                    .push_bind(some(agg.max))
                    .push_bind(some(agg.last))
                    .push_bind(agg.sketch.as_ref().map(DDSketch::to_java_bytes));
            },
        );
        qb.push(
            " ON CONFLICT (name, labels, interval_start, interval_secs) DO UPDATE SET
                 kind = excluded.kind, count = excluded.count, sum = excluded.sum,
                 min = excluded.min, max = excluded.max, last = excluded.last,
                 sketch = excluded.sketch",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Points (of `name`, or all) starting in `[from, to)`, oldest first.
pub(crate) async fn points(
    core: &Core,
    name: Option<&str>,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<StoredPoint>> {
    let mut conn = core
        .store()
        .sqlx_reader()
        .acquire()
        .await
        .map_err(closed_or)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM metrics
         WHERE interval_start >= ?1 AND interval_start < ?2 AND (?3 IS NULL OR name = ?3)
         ORDER BY interval_start"
    )))
    .bind(from)
    .bind(to)
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(decode).collect()
}

/// A counter's total per label set in `[from, to)`.
pub(crate) async fn counter_totals(
    core: &Core,
    name: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
    let mut conn = core
        .store()
        .sqlx_reader()
        .acquire()
        .await
        .map_err(closed_or)?;
    let rows = sqlx::query(
        "SELECT labels, sum(sum) FROM metrics
         WHERE name = ?1 AND kind = 'counter' AND interval_start >= ?2 AND interval_start < ?3
         GROUP BY labels",
    )
    .bind(name)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                serde_json::from_str(&r.try_get::<String, _>(0)?)?,
                r.try_get(1)?,
            ))
        })
        .collect()
}

/// Every series' totals over all stored points, and its last value.
pub(crate) async fn totals(core: &Core) -> Result<Vec<Total>> {
    let mut conn = core
        .store()
        .sqlx_reader()
        .acquire()
        .await
        .map_err(closed_or)?;
    // SQLite: with max(), the bare column `last` comes from the latest row.
    let rows = sqlx::query(
        "SELECT name, labels, kind, sum(count), sum(sum), last, max(interval_start)
         FROM metrics GROUP BY name, labels, kind ORDER BY name, labels",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Total {
                name: r.try_get(0)?,
                labels: r.try_get(1)?,
                kind: MetricKind::parse(&r.try_get::<String, _>(2)?)?,
                count: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
                sum: r.try_get(4)?,
                last: r.try_get::<Option<f64>, _>(5)?.unwrap_or(0.0),
            })
        })
        .collect()
}

/// Merges up to `limit` points finer than an hour that start before
/// `cutoff` into hourly points, in one transaction. Returns how many.
pub(crate) async fn downsample_batch(core: &Core, cutoff: Timestamp, limit: i64) -> Result<u64> {
    let mut tx = core.store().sqlx_transaction().await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM metrics
         WHERE interval_start < ?1 AND interval_secs < 3600
         ORDER BY interval_start LIMIT ?2"
    )))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let fine: Vec<StoredPoint> = rows.iter().map(decode).collect::<Result<_>>()?;
    for chunk in fine.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "DELETE FROM metrics WHERE (name, labels, interval_start, interval_secs) IN (",
        );
        let mut sep = qb.separated(", ");
        for p in chunk {
            sep.push("(")
                .push_bind_unseparated(p.name.to_string())
                .push_unseparated(", ")
                .push_bind_unseparated(p.labels.clone())
                .push_unseparated(", ")
                .push_bind_unseparated(Timestamp::from_millis(p.agg.start_ms))
                .push_unseparated(", ")
                .push_bind_unseparated(p.interval_secs)
                .push_unseparated(")");
        }
        qb.push(")");
        qb.build().execute(&mut *tx).await?;
    }
    let hourly: Vec<Point> = fine
        .into_iter()
        .map(|p| {
            let mut agg = p.agg;
            agg.start_ms = agg.start_ms.div_euclid(HOUR_MS) * HOUR_MS;
            Point {
                name: p.name,
                labels: p.labels.into(),
                kind: p.kind,
                interval_secs: HOUR_MS / 1000,
                agg,
            }
        })
        .collect();
    write_points(&mut tx, &hourly).await?;
    tx.commit().await?;
    Ok(hourly.len() as u64)
}

/// Deletes up to `limit` points that start before `before`. Returns how many.
pub(crate) async fn purge_batch(core: &Core, before: Timestamp, limit: i64) -> Result<u64> {
    let mut tx = core.store().sqlx_transaction().await?;
    let done = sqlx::query(
        "DELETE FROM metrics WHERE (name, labels, interval_start, interval_secs) IN (
             SELECT name, labels, interval_start, interval_secs FROM metrics
             WHERE interval_start < ?1 LIMIT ?2)",
    )
    .bind(before)
    .bind(limit)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done)
}

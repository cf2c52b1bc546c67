//! The metrics' points in the vault file (`metrics`): every statement of
//! the facet, behind [`MetricsBackend`]. Interval starts are RFC 3339 text
//! from the vault's clock; sketches are DDSketch's binary form.

use std::collections::BTreeMap;

use sketches_ddsketch::DDSketch;
use sqlx::{QueryBuilder, Row, SqliteConnection};

use super::backend::{MetricsBackend, Total};
use super::points::{COLUMNS, Merged, Point, StoredPoint, merge_by_series, merge_stored};
use super::types::MetricKind;
use crate::store::Store;
use crate::{Result, Timestamp};

/// Rows per multi-row statement (11 variables each).
const ROWS_PER_STATEMENT: usize = 100;

/// The metrics in the vault file.
pub(crate) struct Sqlite<'a> {
    store: &'a Store,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Sqlite { store }
    }
}

impl MetricsBackend for Sqlite<'_> {
    async fn write_points(&self, points: &[Point]) -> Result<()> {
        let mut tx = self.store.sqlx_transaction().await?;
        write_points(&mut tx, points).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn points(
        &self,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<StoredPoint>> {
        let mut conn = self.store.sqlx_reader_conn().await?;
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
        rows.iter().map(StoredPoint::from_row).collect()
    }

    async fn counter_totals(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let mut conn = self.store.sqlx_reader_conn().await?;
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

    async fn totals(&self) -> Result<Vec<Total>> {
        let mut conn = self.store.sqlx_reader_conn().await?;
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

    async fn downsample(&self, cutoff: Timestamp, limit: i64) -> Result<u64> {
        let mut tx = self.store.sqlx_transaction().await?;
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
        let fine: Vec<StoredPoint> = rows
            .iter()
            .map(StoredPoint::from_row)
            .collect::<Result<_>>()?;
        delete_points(&mut tx, &fine).await?;
        let hourly: Vec<Point> = fine.into_iter().map(StoredPoint::into_hourly).collect();
        write_points(&mut tx, &hourly).await?;
        tx.commit().await?;
        Ok(hourly.len() as u64)
    }

    async fn purge(&self, before: Timestamp, limit: i64) -> Result<u64> {
        let mut tx = self.store.sqlx_transaction().await?;
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
}

/// Writes points, merging each with the stored point of the same series
/// and interval if there is one (a second write never loses the first).
async fn write_points(conn: &mut SqliteConnection, points: &[Point]) -> Result<()> {
    let mut merged = merge_by_series(points)?;
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
            merge_stored(&mut merged, StoredPoint::from_row(row)?)?;
        }
    }
    upsert(conn, merged).await
}

/// Inserts or replaces points, as multi-row statements.
async fn upsert(conn: &mut SqliteConnection, merged: Merged) -> Result<()> {
    let rows: Vec<_> = merged.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<sqlx::Sqlite> =
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
        crate::store::one_off(&mut qb).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes these points, as multi-row statements.
async fn delete_points(conn: &mut SqliteConnection, points: &[StoredPoint]) -> Result<()> {
    for chunk in points.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
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
        crate::store::one_off(&mut qb).execute(&mut *conn).await?;
    }
    Ok(())
}

//! The metrics' points on PostgreSQL (feature `postgres`): every statement
//! of the facet there, behind [`MetricsBackend`]. Each vault writes rows of
//! its own (`instance`, random per open); queries read every instance's
//! rows, and the facet merges them (sums, mins, maxes, the sketches), as it
//! merges two rows of one interval in the file.
//!
//! A write locks its rows first (inserting the missing ones empty, `ON
//! CONFLICT DO NOTHING`, then `SELECT … FOR UPDATE`), merges what it brings
//! into them and writes them back: two flushes of one vault at once never
//! lose a point.

use std::collections::BTreeMap;

use sketches_ddsketch::DDSketch;
use sqlx::Row as _;

use super::backend::{MetricsBackend, Total};
use super::points::{Agg, COLUMNS, Merged, Point, StoredPoint, merge_by_series, merge_stored};
use super::types::MetricKind;
use crate::postgres::Database;
use crate::{Result, Timestamp};

/// The metrics on a PostgreSQL database, as one vault writes them.
pub(crate) struct Postgres<'a> {
    db: &'a Database,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(db: &'a Database) -> Self {
        Postgres { db }
    }
}

impl MetricsBackend for Postgres<'_> {
    async fn write_points(&self, points: &[Point]) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        write_points(&mut tx, self.db.instance(), points).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn points(
        &self,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<StoredPoint>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM metrics
             WHERE interval_start >= $1 AND interval_start < $2
               AND ($3::text IS NULL OR name = $3)
             ORDER BY interval_start"
        )))
        .bind(from)
        .bind(to)
        .bind(name)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(StoredPoint::from_row).collect()
    }

    async fn counter_totals(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let rows = sqlx::query(
            "SELECT labels, sum(sum) FROM metrics
             WHERE name = $1 AND kind = 'counter' AND interval_start >= $2 AND interval_start < $3
             GROUP BY labels",
        )
        .bind(name)
        .bind(from)
        .bind(to)
        .fetch_all(self.db.pool())
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
        let rows = sqlx::query(
            "SELECT name, labels, kind, sum(count)::bigint, sum(sum),
                 (array_agg(last ORDER BY interval_start DESC))[1]
             FROM metrics GROUP BY name, labels, kind ORDER BY name, labels",
        )
        .fetch_all(self.db.pool())
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

    /// Takes a batch of fine rows of any instance (`SKIP LOCKED`: two
    /// instances sweeping at once take different rows), and writes them
    /// back as this vault's hourly rows.
    async fn downsample(&self, cutoff: Timestamp, limit: i64) -> Result<u64> {
        let mut tx = self.db.pool().begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM metrics WHERE ctid IN (
                 SELECT ctid FROM metrics
                 WHERE interval_start < $1 AND interval_secs < 3600
                 ORDER BY interval_start LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        )))
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let hourly: Vec<Point> = rows
            .iter()
            .map(|r| StoredPoint::from_row(r).map(StoredPoint::into_hourly))
            .collect::<Result<_>>()?;
        write_points(&mut tx, self.db.instance(), &hourly).await?;
        tx.commit().await?;
        Ok(hourly.len() as u64)
    }

    async fn purge(&self, before: Timestamp, limit: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM metrics WHERE ctid IN (
                 SELECT ctid FROM metrics WHERE interval_start < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before)
        .bind(limit)
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }
}

/// Writes `instance`'s points inside the caller's transaction, merged with
/// its stored rows of the same series and interval, which it locks first.
async fn write_points(tx: &mut sqlx::PgConnection, instance: &str, points: &[Point]) -> Result<()> {
    let mut merged = merge_by_series(points)?;
    let keys: Vec<_> = merged
        .iter()
        .map(|(k, (kind, _))| (k.clone(), *kind))
        .collect();
    let names: Vec<String> = keys.iter().map(|((n, ..), _)| n.to_string()).collect();
    let labels: Vec<String> = keys.iter().map(|((_, l, ..), _)| l.to_string()).collect();
    let starts: Vec<Timestamp> = keys
        .iter()
        .map(|((_, _, s, _), _)| Timestamp::from_millis(*s))
        .collect();
    let secs: Vec<i64> = keys.iter().map(|((.., secs), _)| *secs).collect();
    let kinds: Vec<&str> = keys.iter().map(|(_, kind)| kind.as_str()).collect();
    sqlx::query(
        "INSERT INTO metrics (name, labels, kind, interval_start, interval_secs, instance, count, sum)
         SELECT n, l, k, s, i, $6, 0, 0
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[])
             AS u(n, l, k, s, i)
         ON CONFLICT (name, labels, interval_start, interval_secs, instance) DO NOTHING",
    )
    .bind(&names)
    .bind(&labels)
    .bind(&kinds)
    .bind(&starts)
    .bind(&secs)
    .bind(instance)
    .execute(&mut *tx)
    .await?;
    let stored = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM metrics
         WHERE instance = $5 AND (name, labels, interval_start, interval_secs) IN
             (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]))
         FOR UPDATE"
    )))
    .bind(&names)
    .bind(&labels)
    .bind(&starts)
    .bind(&secs)
    .bind(instance)
    .fetch_all(&mut *tx)
    .await?;
    for row in &stored {
        let point = StoredPoint::from_row(row)?;
        if point.agg.count > 0 {
            merge_stored(&mut merged, point)?;
        }
    }
    update(tx, instance, merged).await
}

/// Writes merged points over their locked rows, in one statement.
async fn update(tx: &mut sqlx::PgConnection, instance: &str, merged: Merged) -> Result<()> {
    let rows: Vec<_> = merged.into_iter().collect();
    let some = |agg: &Agg, v: f64| (agg.count > 0).then_some(v);
    sqlx::query(
        "UPDATE metrics SET kind = u.k, count = u.c, sum = u.su, min = u.mi, max = u.ma,
             last = u.la, sketch = u.sk
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::text[],
             $6::bigint[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::bytea[])
             AS u(n, l, s, i, k, c, su, mi, ma, la, sk)
         WHERE metrics.instance = $12 AND metrics.name = u.n AND metrics.labels = u.l
           AND metrics.interval_start = u.s AND metrics.interval_secs = u.i",
    )
    .bind(
        rows.iter()
            .map(|((n, ..), _)| n.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|((_, l, ..), _)| l.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|((_, _, s, _), _)| Timestamp::from_millis(*s))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|((.., i), _)| *i).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, (k, _))| k.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, (_, a))| i64::try_from(a.count).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(_, (_, a))| a.sum).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, (_, a))| some(a, a.min))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, (_, a))| some(a, a.max))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, (_, a))| some(a, a.last))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, (_, a))| a.sketch.as_ref().map(DDSketch::to_java_bytes))
            .collect::<Vec<_>>(),
    )
    .bind(instance)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

//! Which storage the metrics facet runs on: [`Backend`] holds the file's
//! side (`sqlite.rs`) or the database's (`postgres.rs`), picked from the
//! core's storage, and passes each call of [`MetricsBackend`] on to it.

use std::collections::BTreeMap;

use super::backend::{MetricsBackend, Total};
use super::points::{Point, StoredPoint};
#[cfg(feature = "postgres")]
use super::postgres::Postgres;
use super::sqlite::Sqlite;
use crate::core::{Core, Storage, on_backend};
use crate::{Result, Timestamp};

/// The metrics of the vault's storage.
pub(crate) enum Backend<'a> {
    Sqlite(Sqlite<'a>),
    #[cfg(feature = "postgres")]
    Postgres(Postgres<'a>),
}

impl<'a> Backend<'a> {
    pub(crate) fn of(core: &'a Core) -> Self {
        match core.storage() {
            Storage::File(store) => Backend::Sqlite(Sqlite::new(store)),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => Backend::Postgres(Postgres::new(db)),
        }
    }
}

impl MetricsBackend for Backend<'_> {
    async fn write_points(&self, points: &[Point]) -> Result<()> {
        on_backend!(self, b => b.write_points(points).await)
    }

    async fn points(
        &self,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<StoredPoint>> {
        on_backend!(self, b => b.points(name, from, to).await)
    }

    async fn counter_totals(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        on_backend!(self, b => b.counter_totals(name, from, to).await)
    }

    async fn totals(&self) -> Result<Vec<Total>> {
        on_backend!(self, b => b.totals().await)
    }

    async fn downsample(&self, cutoff: Timestamp, limit: i64) -> Result<u64> {
        on_backend!(self, b => b.downsample(cutoff, limit).await)
    }

    async fn purge(&self, before: Timestamp, limit: i64) -> Result<u64> {
        on_backend!(self, b => b.purge(before, limit).await)
    }
}

//! Settings for a long run of short deletes on the writer (the retention
//! sweep), and putting them back after.
//!
//! A sweep deletes rows in time order, and each row also leaves the token
//! hash index at a random page: with the writer's small page cache (its
//! share of the budget, see [`super::page_cache`]) nearly every delete
//! would read and decrypt that page again, then encrypt and write it at
//! commit. For the sweep's duration the writer gets a page cache of its own
//! size ([`SWEEP_CACHE_KIB`], which only grows as pages are read), and the
//! WAL is folded in every [`SWEEP_CHECKPOINT_PAGES`] pages instead of every
//! 1,000: a page that several batches rewrite is copied into the file once,
//! and the checkpoint's fsyncs come less often. Each batch stays its own
//! short transaction, so other writers still get the lock between them.

use super::{Role, Store};
use crate::Result;

/// The writer's page cache during a sweep, in KiB: most of the token-hash
/// index of a million sessions. Four times that measured 15% faster on a
/// million rows, at four times the memory a sweep may take from a service.
const SWEEP_CACHE_KIB: u64 = 64 << 10;

/// WAL pages between automatic checkpoints during a sweep (64 MiB of 4 KiB
/// pages): the WAL stays bounded, and readers still find each page in it by
/// its hash index.
const SWEEP_CHECKPOINT_PAGES: u32 = 16_384;

/// SQLite's default, what every connection otherwise uses.
const DEFAULT_CHECKPOINT_PAGES: u32 = 1_000;

impl Store {
    /// Runs `sweep` with the writer set up for it (see the module docs),
    /// then puts the writer's settings back, whatever `sweep` returned.
    pub(crate) async fn sweeping<T>(&self, sweep: impl Future<Output = Result<T>>) -> Result<T> {
        self.writer_pragmas(SWEEP_CACHE_KIB, SWEEP_CHECKPOINT_PAGES)
            .await?;
        let result = sweep.await;
        let restored = self
            .writer_pragmas(
                self.settings().page_cache.kib(Role::Writer),
                DEFAULT_CHECKPOINT_PAGES,
            )
            .await;
        let value = result?;
        restored?;
        Ok(value)
    }

    /// Sets the writer connection's page cache and checkpoint interval.
    /// Lowering `cache_size` frees the pages above the new size.
    async fn writer_pragmas(&self, cache_kib: u64, checkpoint_pages: u32) -> Result<()> {
        let sql = format!(
            "PRAGMA cache_size = -{cache_kib}; PRAGMA wal_autocheckpoint = {checkpoint_pages};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.sqlx_writer())
            .await?;
        Ok(())
    }
}

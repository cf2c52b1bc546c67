//! Retention across the vault: each facet deletes what its retention rules
//! say, in small batches (bounded rows per transaction, so a writer in
//! another task or process never waits long), then the freed pages go back
//! to the file system (`incremental_vacuum`, the file was created with
//! `auto_vacuum=INCREMENTAL`) and a passive checkpoint folds the WAL in.
//!
//! The vault's background task runs this every `sweep_interval` (default
//! hourly); `statevault sweep` runs it now. On PostgreSQL each facet that
//! runs there sweeps with `FOR UPDATE SKIP LOCKED`, so instances sweeping
//! at once never wait on each other; there are no pages to give back.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Result, Vault};

/// Rows per transaction for facets that take a batch size.
const BATCH: usize = 500;

/// What [`Vault::sweep`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    /// Rows removed per table.
    pub removed: BTreeMap<String, u64>,
    /// Pages given back to the file system by `incremental_vacuum` (0 on
    /// PostgreSQL, whose space is the server's vacuum's).
    pub pages_freed: i64,
}

impl Vault {
    /// Applies every facet's retention now (see the module docs).
    #[tracing::instrument(name = "vault.sweep", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn sweep(&self) -> Result<SweepReport> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                self.flush().await?;
                let mut removed = BTreeMap::new();
                removed.insert("sessions".to_owned(), self.sessions().sweep(BATCH).await?);
                removed.insert("audit_events".to_owned(), self.audit().sweep(BATCH).await?);
                let limits = self.limits().sweep().await?;
                removed.insert("violations".to_owned(), limits.violations);
                removed.insert("token_buckets".to_owned(), limits.buckets);
                let metrics = self.metrics().sweep().await?;
                removed.insert("metrics".to_owned(), metrics.purged + metrics.downsampled);
                removed.insert("changes".to_owned(), self.core().trim_feed().await?);
                let cache = self.cache().sweep().await?;
                removed.insert("cache_entries".to_owned(), cache.expired + cache.evicted);
                // Free pages are the file's only.
                let mut pages_freed = 0;
                if let Ok(store) = self.store() {
                    pages_freed = store.give_back_space().await?;
                }
                Ok(SweepReport {
                    removed,
                    pages_freed,
                })
            }
            .await,
            crate::trace::ok,
        )
    }
}

//! The cache's state inside the vault: L1 and its write-behind buffer, the
//! counters, the loaders under way, and L2's running byte count; and the
//! flush that writes the buffer to L2.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::backend::{
    ALL, CacheBackend, CacheTx, NAMESPACE, REMOVED, Row, SET, TAG, USER, name_digest,
    unpack_digests,
};
use super::config::CacheConfig;
use super::l1::{Meta, Shards};
use super::storage::Backend;
use crate::Result;
use crate::core::Core;
use crate::core::feed::{Cursor, Facet, News};

/// L2's backend: the one place that picks where the cache's rows live.
pub(super) fn backend<'a>(core: &'a Core, state: &'a CacheState) -> Backend<'a> {
    Backend::of(core, &state.writer)
}

/// Rows per retention or eviction transaction.
pub(super) const SWEEP_BATCH: i64 = 500;

/// The cache's state inside the vault.
pub(crate) struct CacheState {
    pub(super) config: CacheConfig,
    pub(super) l1: Shards,
    pub(super) counters: Counters,
    /// Keys being loaded by `Cache::get_or_load`, one lock per key.
    pub(super) loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Stored bytes in L2 as last counted, plus what was written since
    /// (`-1`: not counted yet).
    pub(super) l2_bytes: AtomicI64,
    /// Where this handle stands in the change feed.
    pub(super) feed: Cursor,
    /// Makes this process's L2 write transactions take turns on PostgreSQL,
    /// as the file's one writer connection does (guarantee 1).
    pub(super) writer: tokio::sync::Mutex<()>,
}

/// This process's counters of L2 and of invalidations (L1 counts its own).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) l2_hits: AtomicU64,
    pub(super) l2_misses: AtomicU64,
    pub(super) l2_evictions: AtomicU64,
    pub(super) l2_expirations: AtomicU64,
    pub(super) corrupt: AtomicU64,
    pub(super) invalidations: AtomicU64,
}

/// Adds `n` to a counter.
pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl CacheState {
    pub(crate) fn new(config: CacheConfig) -> Self {
        let resolution = i64::try_from(config.access_resolution.as_millis()).unwrap_or(i64::MAX);
        CacheState {
            l1: Shards::new(
                config.l1_shards,
                config.l1_entries,
                config.l1_bytes,
                resolution,
            ),
            feed: Cursor::new(Facet::Cache, config.feed_check_interval),
            config,
            counters: Counters::default(),
            loading: Mutex::new(HashMap::new()),
            l2_bytes: AtomicI64::new(-1),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies what another handle published (see `backend.rs`). A key it
    /// wrote leaves L1 but not this handle's own set not yet written (the
    /// later flush wins in L2, as between two sets here); a deletion or an
    /// invalidation takes those too. Lost records, or a kind this build does
    /// not know, drop every entry L2 has (keeping sets not yet written).
    pub(super) fn apply(&self, core: &Core, news: News<'_>) {
        let News::Change(change) = news else {
            return self.l1.forget_all_clean();
        };
        let kind = change.kind.as_str();
        match kind {
            SET | REMOVED => match unpack_digests(&change.target) {
                Some(digests) => self
                    .l1
                    .forget_digests(&digests.into_iter().collect(), kind == REMOVED),
                None => self.l1.forget_all_clean(),
            },
            ALL => drop(self.l1.remove_where(|_| true)),
            TAG | USER | NAMESPACE => {
                let Some(target) = unpack_digests(&change.target).and_then(|d| d.first().copied())
                else {
                    return self.l1.forget_all_clean();
                };
                // Each distinct name is hashed once; one that cannot be
                // (no salt yet) is dropped, as if it matched.
                let mut seen = HashMap::new();
                let mut named = |name: &str| {
                    *seen.entry(name.to_owned()).or_insert_with(|| {
                        name_digest(core, kind, name).map_or(true, |d| d == target)
                    })
                };
                drop(self.l1.remove_where(|m: &Meta| match kind {
                    TAG => m.tags.iter().any(|t| named(t)),
                    USER => m.user.as_deref().is_some_and(&mut named),
                    _ => named(&m.namespace),
                }));
            }
            _ => self.l1.forget_all_clean(),
        }
    }

    /// Writes buffered sets and last-access times to L2 in one transaction,
    /// then keeps L2 under its byte cap. The writer is taken first, so that
    /// an invalidation that follows waits for this write (guarantee 1). On
    /// failure what was taken goes back into the buffer.
    pub(crate) async fn flush(&self, core: &Core) -> Result<()> {
        if !self.l1.dirty() {
            return Ok(());
        }
        let mut tx = backend(core, self).begin().await?;
        let batch = self.l1.begin_flush();
        if batch.is_empty() {
            self.l1.end_flush();
            return Ok(());
        }
        let level = self.config.compression_level;
        let raw_below = self.config.raw_below;
        let rows: Vec<Row> = batch
            .sets
            .into_iter()
            .map(|(k, p)| Row::encode(k, p, level, raw_below))
            .collect();
        let written = match tx.write(&rows, &batch.touches).await {
            Ok(n) => n,
            Err(e) => {
                self.l1.abort_flush(batch.touches);
                return Err(e);
            }
        };
        let capped = self.enforce_cap(&mut tx, written).await;
        if let Err(e) = capped.and(tx.commit().await) {
            self.l1.abort_flush(batch.touches);
            self.l2_bytes.store(-1, Ordering::Relaxed);
            return Err(e);
        }
        self.l1.end_flush();
        Ok(())
    }

    /// Evicts least-recently-used rows while L2 is over its cap. Counts
    /// exactly only when the running estimate says it may be over.
    pub(super) async fn enforce_cap(&self, tx: &mut impl CacheTx, written: i64) -> Result<u64> {
        let cap = i64::try_from(self.config.l2_bytes).unwrap_or(i64::MAX);
        let estimate = self.l2_bytes.load(Ordering::Relaxed);
        let mut total = if estimate < 0 || estimate + written > cap {
            tx.stored_bytes().await?
        } else {
            estimate + written
        };
        let mut evicted = 0;
        while total > cap {
            let rows = tx.evict_lru(total - cap, SWEEP_BATCH).await?;
            if rows.is_empty() {
                break;
            }
            evicted += rows.len() as u64;
            total -= rows.iter().sum::<i64>();
        }
        self.l2_bytes.store(total, Ordering::Relaxed);
        bump(&self.counters.l2_evictions, evicted);
        Ok(evicted)
    }
}

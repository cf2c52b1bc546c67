//! The cache as a whole: its stats, its sweep, and its part in what the vault
//! does across facets (a user's export and erase, a legacy import).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backend::{CacheBackend, CacheTx, Filter, Row};
use super::config::{check_tag, check_ttl};
use super::l1::{Item, Meta, Pending};
use super::state::{SWEEP_BATCH, bump};
use super::types::{CacheStats, L1Stats, L2Stats, NamespaceStats, SweepReport};
use super::{Cache, CacheKey, sqlite};
use crate::{Result, Timestamp};

impl Cache<'_> {
    /// The keys of `user`'s entries (for a user's export). Writes buffered
    /// sets first.
    pub async fn keys_of_user(&self, user: &str) -> Result<Vec<String>> {
        crate::ids::check_user(user)?;
        self.state.flush(self.core).await?;
        self.l2().keys_of_user(user).await
    }

    /// Within the whole-user erase transaction: drops `user`'s entries from
    /// memory (L1 and the write buffer) and deletes their rows. Call
    /// [`Cache::forget_user`] again once the transaction committed.
    pub(crate) async fn erase_user(
        &self,
        tx: &mut sqlx::SqliteConnection,
        user: &str,
    ) -> Result<u64> {
        let in_memory = self.forget_user(user);
        let in_file = sqlite::delete_where(self.core, tx, Filter::User(user)).await?;
        Ok(in_file.max(in_memory))
    }

    /// Drops `user`'s entries from memory; how many there were.
    pub(crate) fn forget_user(&self, user: &str) -> u64 {
        self.state()
            .l1
            .remove_where(&|m: &Meta| m.user.as_deref() == Some(user))
            .len() as u64
    }

    /// Within an import transaction
    /// ([`Vault::import_legacy`](crate::Vault::import_legacy)): stores an
    /// entry carried over from the seeds' old layout with its own creation
    /// and expiry times, straight into L2 (not L1, not the write buffer),
    /// unless a live entry has its key. Returns whether it was stored. Call
    /// [`Cache::enforce_cap`] once the import is done.
    pub(crate) async fn import_entry(
        &self,
        tx: &mut sqlx::SqliteConnection,
        key: &CacheKey,
        value: &[u8],
        created_at: Timestamp,
        expires_at: Timestamp,
        tags: &[String],
    ) -> Result<bool> {
        let state = self.state();
        let config = &state.config;
        config.check_value_size(value.len())?;
        let now = self.now();
        check_ttl(expires_at.duration_since(now), config.max_ttl)?;
        for tag in tags {
            check_tag(tag)?;
        }
        let pending = Pending {
            item: Item {
                value: Arc::from(value),
                expires_at: Some(expires_at.as_millis()),
                digest: self.digest(key)?,
                meta: Arc::new(Meta {
                    namespace: key.namespace().into(),
                    user: key.user().map(Into::into),
                    tags: tags.iter().map(|t| t.as_str().into()).collect(),
                }),
            },
            created_at: created_at.as_millis(),
        };
        let row = Row::encode(
            key.as_str().into(),
            pending,
            config.compression_level,
            config.raw_below,
        );
        let inserted = sqlite::insert_new(tx, &row, now).await?;
        // The running byte count misses this row: count again next time.
        state.l2_bytes.store(-1, Ordering::Relaxed);
        Ok(inserted)
    }

    /// Evicts least-recently-used rows until L2 is under its byte cap,
    /// counting its bytes afresh; how many went.
    pub(crate) async fn enforce_cap(&self) -> Result<u64> {
        let state = self.state();
        state.l2_bytes.store(-1, Ordering::Relaxed);
        let mut tx = self.l2().begin().await?;
        let evicted = state.enforce_cap(&mut tx, 0).await?;
        tx.commit().await?;
        Ok(evicted)
    }

    /// The largest value the cache accepts, in bytes.
    pub(crate) fn max_value_bytes(&self) -> usize {
        self.state().config.max_value_bytes
    }

    /// This process's counters, L1's contents and L2's (read from the file).
    pub async fn stats(&self) -> Result<CacheStats> {
        let state = self.state();
        let (entries, bytes, pending, c) = state.l1.totals();
        let (max_entries, max_bytes) = state.l1.bounds();
        let namespaces = self.namespaces().await?;
        let sum = |f: fn(&NamespaceStats) -> u64| namespaces.iter().map(f).sum::<u64>();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let l2_hits = load(&state.counters.l2_hits);
        let gets = c.hits + c.misses;
        Ok(CacheStats {
            hit_ratio: if gets == 0 {
                0.0
            } else {
                (c.hits + l2_hits) as f64 / gets as f64
            },
            l1: L1Stats {
                hits: c.hits,
                misses: c.misses,
                evictions: c.evictions,
                expirations: c.expirations,
                entries,
                bytes,
                max_entries: max_entries as u64,
                max_bytes: max_bytes as u64,
            },
            l2: L2Stats {
                hits: l2_hits,
                misses: load(&state.counters.l2_misses),
                evictions: load(&state.counters.l2_evictions),
                expirations: load(&state.counters.l2_expirations),
                corrupt: load(&state.counters.corrupt),
                entries: sum(|n| n.entries),
                bytes: sum(|n| n.stored_bytes),
                value_bytes: sum(|n| n.value_bytes),
                expired_entries: sum(|n| n.expired_entries),
                max_bytes: state.config.l2_bytes,
            },
            invalidations: load(&state.counters.invalidations),
            pending_writes: pending,
        })
    }

    /// What L2 holds, per namespace.
    pub async fn namespaces(&self) -> Result<Vec<NamespaceStats>> {
        self.l2().namespaces(self.now()).await
    }

    /// Retention: flushes, deletes expired rows in batches of 500 (one
    /// transaction each), enforces L2's byte cap, and drops expired entries
    /// from L1.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let state = self.state();
        self.state.flush(self.core).await?;
        let now = self.now();
        let mut report = SweepReport::default();
        loop {
            let mut tx = self.l2().begin().await?;
            let n = tx.delete_expired(now, SWEEP_BATCH).await?;
            tx.commit().await?;
            report.expired += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        bump(&state.counters.l2_expirations, report.expired);
        report.evicted = self.enforce_cap().await?;
        report.l1_expired = state.l1.purge_expired(now.as_millis());
        Ok(report)
    }
}

//! The two-level cache: an in-process LRU (L1) in front of zstd blobs in the
//! vault file (L2, `cache_entries` + `cache_tags`).
//!
//! Reads go L1 → pending writes → L2 → miss, and an L2 hit is promoted to L1.
//! Sets go to L1 and to a write-behind buffer that [`Vault::flush`] writes to
//! L2 in one transaction with multi-row statements. Invalidations (delete,
//! tag, user, namespace, clear) are synchronous: they remove the entries from
//! L1 and the buffer and delete them from L2 in a write transaction before
//! they return.
//!
//! Guarantees:
//! 1. After an invalidation returns, this process never returns a value it
//!    removed: the buffer cannot re-add it (a flush holds the one writer
//!    while it writes, so an invalidation waits for it and then deletes), and
//!    an L2 read that raced the invalidation cannot promote it (see `l1`'s
//!    invariant 3).
//! 2. A crash loses at most the sets and last-access times not yet flushed
//!    (one flush interval). It never brings back an invalidated value.
//! 3. L1 never holds more than its entry and byte bounds.
//! 4. Expiry is checked on every read against the vault's clock; sweeps only
//!    reclaim space. Memory (L1 and the buffer) is checked against the
//!    clock's coarse reading ([`Clock::now_coarse`](crate::Clock::now_coarse),
//!    up to a few milliseconds behind with the system clock), so an entry
//!    may be served from memory for that long past its expiry.
//! 5. L1 is per process. Another process sees this one's sets once they are
//!    flushed, and this process's L1 may serve a value another process has
//!    since replaced until it expires or is evicted here.

mod key;
mod l1;
mod l2;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use key::{CacheKey, MAX_KEY_BYTES};
use l1::{Item, Lookup, Meta, Pending, Shards};
use l2::{Filter, Found, Row};

use crate::core::Core;
use crate::{Error, Result, Timestamp};

/// How the cache is sized and how long entries live. Every setting has a
/// default; see [`CacheConfig::default`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    l1_entries: usize,
    l1_bytes: usize,
    l1_shards: usize,
    l2_bytes: u64,
    default_ttl: Duration,
    namespace_ttls: HashMap<String, Duration>,
    max_ttl: Duration,
    max_value_bytes: usize,
    compression_level: i32,
    raw_below: usize,
    access_resolution: Duration,
    max_pending_bytes: usize,
}

impl Default for CacheConfig {
    /// L1: 1000 entries, 100 MB, 16 shards. L2: 500 MB. TTLs: 1 h by
    /// default; `search` 5 min, `playlists` 15 min, `metadata` 1 h, `tracks`
    /// 6 h; at most 365 days. Values up to 64 MiB, zstd level 3, values
    /// under 64 bytes stored raw. Last access noted at most every 5 s per
    /// entry; at most 64 MiB of sets buffered before a set flushes.
    fn default() -> Self {
        let ttls = [
            ("search", 5 * 60),
            ("playlists", 15 * 60),
            ("metadata", 3600),
            ("tracks", 6 * 3600),
        ];
        CacheConfig {
            l1_entries: 1000,
            l1_bytes: 100_000_000,
            l1_shards: 16,
            l2_bytes: 500_000_000,
            default_ttl: Duration::from_secs(3600),
            namespace_ttls: ttls
                .into_iter()
                .map(|(ns, s)| (ns.to_owned(), Duration::from_secs(s)))
                .collect(),
            max_ttl: Duration::from_secs(365 * 86_400),
            max_value_bytes: 64 << 20,
            compression_level: 3,
            raw_below: 64,
            access_resolution: Duration::from_secs(5),
            max_pending_bytes: 64 << 20,
        }
    }
}

impl CacheConfig {
    /// L1's bound on entries (0 turns L1 off).
    pub fn l1_entries(mut self, n: usize) -> Self {
        self.l1_entries = n;
        self
    }

    /// L1's bound on bytes (values, keys and bookkeeping).
    pub fn l1_bytes(mut self, bytes: usize) -> Self {
        self.l1_bytes = bytes;
        self
    }

    /// How many independently locked shards L1 is split into (1–1024). Each
    /// holds `1/n` of the bounds.
    pub fn l1_shards(mut self, n: usize) -> Self {
        self.l1_shards = n;
        self
    }

    /// L2's cap on stored (compressed) bytes; least-recently-used rows go first.
    pub fn l2_bytes(mut self, bytes: u64) -> Self {
        self.l2_bytes = bytes;
        self
    }

    /// The TTL of namespaces without one of their own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The default TTL of one namespace.
    pub fn namespace_ttl(mut self, namespace: &str, ttl: Duration) -> Self {
        self.namespace_ttls.insert(namespace.to_owned(), ttl);
        self
    }

    /// The longest TTL accepted (default 365 days).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// The largest value accepted, in bytes (default 64 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// zstd level for L2 (1–19, default 3).
    pub fn compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }

    /// Values shorter than this are stored uncompressed (default 64).
    pub fn raw_below(mut self, bytes: usize) -> Self {
        self.raw_below = bytes;
        self
    }

    /// How often, at most, an entry's last access is noted for L2's LRU
    /// order (default 5 s): a hit from either level within this long of the
    /// entry's last noted access writes nothing, so a hot entry costs the
    /// file one small update per resolution, not one per read.
    pub fn access_resolution(mut self, d: Duration) -> Self {
        self.access_resolution = d;
        self
    }

    /// How many bytes of sets may wait for L2 before a set flushes them
    /// itself (default 64 MiB).
    pub fn max_pending_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let ttl_ok = |d: &Duration| !d.is_zero() && *d <= self.max_ttl;
        if !(1..=1024).contains(&self.l1_shards) {
            return Err(Error::invalid("cache l1_shards", "not in 1..=1024"));
        }
        if !(1..=19).contains(&self.compression_level) {
            return Err(Error::invalid("cache compression_level", "not in 1..=19"));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 1 << 30 {
            return Err(Error::invalid(
                "cache max_value_bytes",
                "not in 1 B..=1 GiB",
            ));
        }
        if self.max_ttl.is_zero() || self.max_ttl > Duration::from_secs(100 * 365 * 86_400) {
            return Err(Error::invalid("cache max_ttl", "zero or over 100 years"));
        }
        if !ttl_ok(&self.default_ttl) || !self.namespace_ttls.values().all(ttl_ok) {
            return Err(Error::invalid("cache ttl", "zero or longer than max_ttl"));
        }
        for ns in self.namespace_ttls.keys() {
            key::check_namespace(ns)?;
        }
        Ok(())
    }

    fn ttl_for(&self, namespace: &str) -> Duration {
        self.namespace_ttls
            .get(namespace)
            .copied()
            .unwrap_or(self.default_ttl)
    }
}

/// How long a value lives and what it is tagged with.
///
/// ```
/// use std::time::Duration;
/// use statevault::SetOptions;
///
/// let opts = SetOptions::new().ttl(Duration::from_secs(60)).tag("playlist:42");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    ttl: Option<Duration>,
    never_expires: bool,
    tags: Vec<String>,
}

impl SetOptions {
    /// The namespace's default TTL, no tags.
    pub fn new() -> Self {
        SetOptions::default()
    }

    /// Expire after `ttl` (more than zero, at most the configured maximum).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self.never_expires = false;
        self
    }

    /// Never expire (the entry still goes under eviction and invalidation).
    pub fn never_expires(mut self) -> Self {
        self.never_expires = true;
        self.ttl = None;
        self
    }

    /// Tag the entry, for [`Cache::invalidate_tag`].
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// Counters of this process, and what each level holds.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// L1 (memory, this process).
    pub l1: L1Stats,
    /// L2 (the file).
    pub l2: L2Stats,
    /// Gets answered from either level over all gets, in this process.
    pub hit_ratio: f64,
    /// Entries removed by delete, tag, user, namespace or clear, in this process.
    pub invalidations: u64,
    /// Sets not yet written to L2.
    pub pending_writes: u64,
}

/// L1's counters and contents.
#[derive(Debug, Clone, Serialize)]
pub struct L1Stats {
    /// Gets answered from memory.
    pub hits: u64,
    /// Gets that memory could not answer.
    pub misses: u64,
    /// Entries evicted to keep the bounds.
    pub evictions: u64,
    /// Entries found expired.
    pub expirations: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (values, keys, bookkeeping).
    pub bytes: u64,
    /// The entry bound.
    pub max_entries: u64,
    /// The byte bound.
    pub max_bytes: u64,
}

/// L2's counters (this process) and contents (the file).
#[derive(Debug, Clone, Serialize)]
pub struct L2Stats {
    /// L1 misses answered from the file.
    pub hits: u64,
    /// L1 misses the file could not answer either.
    pub misses: u64,
    /// Rows evicted to keep the byte cap.
    pub evictions: u64,
    /// Rows found expired on read, or purged by a sweep.
    pub expirations: u64,
    /// Rows found corrupt (and dropped).
    pub corrupt: u64,
    /// Rows in the file.
    pub entries: u64,
    /// Stored (compressed) bytes in the file.
    pub bytes: u64,
    /// Value bytes before compression.
    pub value_bytes: u64,
    /// Rows past their expiry, waiting for a sweep.
    pub expired_entries: u64,
    /// The byte cap.
    pub max_bytes: u64,
}

/// What L2 holds for one namespace.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: String,
    /// Rows.
    pub entries: u64,
    /// Value bytes before compression.
    pub value_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Rows past their expiry.
    pub expired_entries: u64,
}

/// What a [`Cache::sweep`] removed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SweepReport {
    /// Expired rows deleted from L2.
    pub expired: u64,
    /// Rows evicted from L2 to keep the byte cap.
    pub evicted: u64,
    /// Expired entries dropped from L1.
    pub l1_expired: u64,
}

/// The cache's state inside the vault.
pub(crate) struct CacheState {
    config: CacheConfig,
    l1: Shards,
    counters: Counters,
    /// Keys being loaded by [`Cache::get_or_load`], one lock per key.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Stored bytes in L2 as last counted, plus what was written since
    /// (`-1`: not counted yet).
    l2_bytes: AtomicI64,
}

#[derive(Default)]
struct Counters {
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_evictions: AtomicU64,
    l2_expirations: AtomicU64,
    corrupt: AtomicU64,
    invalidations: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

const SWEEP_BATCH: i64 = 500;

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
            config,
            counters: Counters::default(),
            loading: Mutex::new(HashMap::new()),
            l2_bytes: AtomicI64::new(-1),
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
        let mut tx = core.store().sqlx_transaction().await?;
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
        let written = match l2::write(&mut tx, &rows, &batch.touches).await {
            Ok(n) => n,
            Err(e) => {
                self.l1.abort_flush(batch.touches);
                return Err(e.into());
            }
        };
        let capped = self.enforce_cap(&mut tx, written).await;
        if let Err(e) = capped.and(tx.commit().await.map_err(Error::from)) {
            self.l1.abort_flush(batch.touches);
            self.l2_bytes.store(-1, Ordering::Relaxed);
            return Err(e);
        }
        self.l1.end_flush();
        Ok(())
    }

    /// Evicts least-recently-used rows while L2 is over its cap. Counts
    /// exactly only when the running estimate says it may be over.
    async fn enforce_cap(&self, conn: &mut sqlx::SqliteConnection, written: i64) -> Result<u64> {
        let cap = i64::try_from(self.config.l2_bytes).unwrap_or(i64::MAX);
        let estimate = self.l2_bytes.load(Ordering::Relaxed);
        let mut total = if estimate < 0 || estimate + written > cap {
            l2::stored_bytes(conn).await?
        } else {
            estimate + written
        };
        let mut evicted = 0;
        while total > cap {
            let rows = l2::evict_lru(conn, total - cap, SWEEP_BATCH).await?;
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

/// The two-level cache of a vault: L1 in memory, L2 in the file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// use std::time::Duration;
/// use statevault::{CacheKey, SetOptions, Vault, VaultOptions};
///
/// # let dir = tempfile::tempdir().unwrap();
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// let cache = vault.cache();
/// let key = CacheKey::derive("search", "tracks", &("blue", 10), Some("u1"))?;
/// cache.set_json(&key, &vec!["Blue Monday"], &SetOptions::new().tag("user:u1")).await?;
/// let hit: Option<Vec<String>> = cache.get_json(&key).await?;
/// assert_eq!(hit.unwrap(), ["Blue Monday"]);
///
/// // Loads once, however many tasks miss at the same moment.
/// let album: String = cache
///     .get_or_load(&CacheKey::new("metadata", "album:7")?, &SetOptions::new(), || async {
///         Ok::<_, statevault::Error>("Power, Corruption & Lies".to_owned())
///     })
///     .await?;
/// assert_eq!(album, "Power, Corruption & Lies");
///
/// assert_eq!(cache.invalidate_tag("user:u1").await?, 1);
/// assert!(cache.get(&key).await?.is_none());
/// vault.close().await?; // flushes the buffered sets
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct Cache<'a> {
    core: &'a Core,
    state: &'a CacheState,
}

impl std::fmt::Debug for Cache<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl<'a> Cache<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a CacheState) -> Self {
        Cache { core, state }
    }

    fn state(&self) -> &'a CacheState {
        self.state
    }

    fn now(&self) -> Timestamp {
        self.core.now()
    }

    /// The value under `key`, if there is a live one: L1, then L2 (promoted
    /// to L1 on a hit). A corrupt row in L2 is dropped and reported as
    /// [`Error::CacheCorrupt`].
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Arc<[u8]>>> {
        // Memory is checked against the coarse clock (see guarantee 4); L2
        // and every write read the full clock.
        let now = self.core.clock().now_coarse();
        match self.state().l1.lookup(key.hashed(), now.as_millis()) {
            Lookup::Hit(value) => Ok(Some(value)),
            Lookup::Expired => Ok(None),
            // boxed so that the L1 hit path stays a small future
            Lookup::Miss(version) => Box::pin(self.get_l2(key, self.now(), version)).await,
        }
    }

    async fn get_l2(
        &self,
        key: &CacheKey,
        now: Timestamp,
        version: u64,
    ) -> Result<Option<Arc<[u8]>>> {
        let state = self.state();
        let max = state.config.max_value_bytes;
        let store = self.core.store();
        let found = match store.read_here(|conn| l2::read(conn, key.as_str(), now, max))? {
            Some(Found::Large) => {
                l2::read_large(store.sqlx_reader(), key.as_str(), now, max).await?
            }
            found => found,
        };
        match found {
            // (`read_large` never answers `Large`)
            None | Some(Found::Large) => {
                bump(&state.counters.l2_misses, 1);
                Ok(None)
            }
            Some(Found::Expired) => {
                bump(&state.counters.l2_expirations, 1);
                bump(&state.counters.l2_misses, 1);
                Ok(None)
            }
            Some(Found::Live {
                value: Err(detail), ..
            }) => {
                bump(&state.counters.corrupt, 1);
                let mut tx = self.core.store().sqlx_transaction().await?;
                l2::delete_keys(&mut tx, &[key.as_str()]).await?;
                tx.commit().await?;
                state.l1.remove([key.hashed()]);
                Err(Error::CacheCorrupt {
                    key: key.as_str().to_owned(),
                    detail,
                })
            }
            Some(Found::Live {
                value: Ok(value),
                expires_at,
                last_access,
                meta,
            }) => {
                bump(&state.counters.l2_hits, 1);
                let item = Item {
                    value: value.clone(),
                    expires_at,
                    meta: Arc::new(meta),
                };
                state
                    .l1
                    .promote(key.hashed(), item, version, now.as_millis(), last_access);
                Ok(Some(value))
            }
        }
    }

    /// The value under `key`, decoded from JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether a live value is under `key` (does not count as a get).
    pub async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let now = self.now();
        if let Some(live) = self.state().l1.peek(key.hashed(), now.as_millis()) {
            return Ok(live);
        }
        self.core
            .store()
            .read_here(|conn| l2::exists(conn, key.as_str(), now))
    }

    /// Stores `value` under `key` with the namespace's default TTL.
    pub async fn set(&self, key: &CacheKey, value: &[u8]) -> Result<()> {
        self.set_with(key, value, &SetOptions::new()).await
    }

    /// Stores `value` under `key`. It is in L1 (when it fits) and readable at
    /// once; it reaches L2 at the next [`Vault::flush`]. Values larger than
    /// the configured maximum are [`Error::CacheValueTooLarge`]; a zero or
    /// too long TTL is [`Error::InvalidInput`].
    pub async fn set_with(&self, key: &CacheKey, value: &[u8], options: &SetOptions) -> Result<()> {
        let pending = self.stage(key, value, options)?;
        self.flush_if_full(pending).await
    }

    /// Flushes when a shard's buffer holds more than its share of
    /// `max_pending_bytes`, so the buffer stays bounded between flushes.
    async fn flush_if_full(&self, shard_pending: usize) -> Result<()> {
        let config = &self.state().config;
        if shard_pending > config.max_pending_bytes / config.l1_shards {
            self.state.flush(self.core).await?;
        }
        Ok(())
    }

    fn stage(&self, key: &CacheKey, value: &[u8], options: &SetOptions) -> Result<usize> {
        let state = self.state();
        let config = &state.config;
        if value.len() > config.max_value_bytes {
            return Err(Error::CacheValueTooLarge {
                size: value.len() as u64,
                max: config.max_value_bytes as u64,
            });
        }
        let now = self.now();
        let expires_at = self.expiry(key, options, now)?;
        for tag in &options.tags {
            check_tag(tag)?;
        }
        let item = Item {
            value: Arc::from(value),
            expires_at,
            meta: Arc::new(Meta {
                namespace: key.namespace().into(),
                user: key.user().map(Into::into),
                tags: options.tags.iter().map(|t| t.as_str().into()).collect(),
            }),
        };
        Ok(state.l1.set(key.hashed(), item, now.as_millis()))
    }

    fn expiry(&self, key: &CacheKey, options: &SetOptions, now: Timestamp) -> Result<Option<i64>> {
        if options.never_expires {
            return Ok(None);
        }
        let config = &self.state().config;
        let ttl = options
            .ttl
            .unwrap_or_else(|| config.ttl_for(key.namespace()));
        check_ttl(ttl, config.max_ttl)?;
        Ok(Some(now.saturating_add(ttl).as_millis()))
    }

    /// Stores `value` as JSON.
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
        options: &SetOptions,
    ) -> Result<()> {
        self.set_with(key, &serde_json::to_vec(value)?, options)
            .await
    }

    /// Removes `key` from both levels; whether it was there.
    pub async fn delete(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.delete_many(std::slice::from_ref(key)).await? > 0)
    }

    /// [`get`](Cache::get) for several keys, in order.
    pub async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Arc<[u8]>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// [`set_with`](Cache::set_with) for several entries, all with `options`.
    /// Checks every entry before storing any.
    pub async fn set_many(
        &self,
        entries: &[(CacheKey, Vec<u8>)],
        options: &SetOptions,
    ) -> Result<()> {
        let max = self.state().config.max_value_bytes;
        if let Some((_, v)) = entries.iter().find(|(_, v)| v.len() > max) {
            return Err(Error::CacheValueTooLarge {
                size: v.len() as u64,
                max: max as u64,
            });
        }
        let mut pending = 0;
        for (key, value) in entries {
            pending = pending.max(self.stage(key, value, options)?);
        }
        self.flush_if_full(pending).await
    }

    /// Removes these keys from both levels, in one transaction; how many of
    /// them were there.
    pub async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let state = self.state();
        let texts: Vec<&str> = keys.iter().map(CacheKey::as_str).collect();
        let mut tx = self.core.store().sqlx_transaction().await?;
        let in_memory = state.l1.remove(keys.iter().map(CacheKey::hashed));
        let in_file = l2::delete_keys(&mut tx, &texts).await?;
        tx.commit().await?;
        state.l1.remove(keys.iter().map(CacheKey::hashed));
        let n = in_memory.max(in_file);
        bump(&state.counters.invalidations, n);
        Ok(n)
    }

    /// Adds `delta` to the integer under `key` (missing or expired counts as
    /// 0) and returns the new value. Atomic in L2: the read and the write
    /// happen in one write transaction, so concurrent increments from any
    /// process add up. A new counter gets the namespace's default TTL; an
    /// existing one keeps its expiry (and loses its tags). A corrupt row is
    /// dropped and reported as [`Error::CacheCorrupt`], as by [`get`](Cache::get).
    pub async fn incr(&self, key: &CacheKey, delta: i64) -> Result<i64> {
        let state = self.state();
        let now = self.now();
        let mut tx = self.core.store().sqlx_transaction().await?;
        let buffered = state.l1.take_pending(key.hashed());
        let result = self
            .incr_in(&mut tx, key, delta, now, buffered.clone())
            .await;
        let result = match result {
            Ok(v) => tx.commit().await.map(|()| v).map_err(Error::from),
            Err(e @ Error::CacheCorrupt { .. }) => {
                // Dropped, as `get` drops it: the error says so.
                bump(&state.counters.corrupt, 1);
                let dropped = async move {
                    l2::delete_keys(&mut tx, &[key.as_str()]).await?;
                    tx.commit().await
                }
                .await;
                state.l1.remove([key.hashed()]);
                Err(dropped.err().map_or(e, Error::from))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((value, item)) => {
                state.l1.put(key.hashed(), item, now.as_millis());
                Ok(value)
            }
            Err(e) => {
                if let Some(p) = buffered {
                    state.l1.restore_pending(key.hashed(), p);
                }
                Err(e)
            }
        }
    }

    async fn incr_in(
        &self,
        tx: &mut sqlx::SqliteConnection,
        key: &CacheKey,
        delta: i64,
        now: Timestamp,
        buffered: Option<Pending>,
    ) -> Result<(i64, Item)> {
        let config = &self.state().config;
        if let Some(p) = buffered {
            let row = Row::encode(
                key.as_str().into(),
                p,
                config.compression_level,
                config.raw_below,
            );
            l2::write(tx, std::slice::from_ref(&row), &[]).await?;
        }
        let row = l2::read_for_update(tx, key.as_str()).await?;
        let (current, expires_at, tags) = match row {
            Some(r) if r.expires_at.is_none_or(|at| at > now) => {
                let bytes = l2::decode(&r.codec, &r.value, r.size, config.max_value_bytes)
                    .map_err(|detail| Error::CacheCorrupt {
                        key: key.as_str().to_owned(),
                        detail,
                    })?;
                let n = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| {
                        Error::invalid("counter", format!("{key} does not hold an integer"))
                    })?;
                (n, r.expires_at.map(Timestamp::as_millis), r.tags)
            }
            _ => (
                0,
                self.expiry(key, &SetOptions::new(), now)?,
                Box::default(),
            ),
        };
        let value = current
            .checked_add(delta)
            .ok_or_else(|| Error::invalid("counter", format!("{key} would overflow")))?;
        let item = Item {
            value: value.to_string().into_bytes().into(),
            expires_at,
            meta: Arc::new(Meta {
                namespace: key.namespace().into(),
                user: key.user().map(Into::into),
                tags,
            }),
        };
        let pending = Pending {
            item: item.clone(),
            created_at: now.as_millis(),
        };
        let row = Row::encode(
            key.as_str().into(),
            pending,
            config.compression_level,
            usize::MAX,
        );
        l2::write(tx, std::slice::from_ref(&row), &[]).await?;
        Ok((value, item))
    }

    /// Subtracts `delta`; see [`incr`](Cache::incr).
    pub async fn decr(&self, key: &CacheKey, delta: i64) -> Result<i64> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| Error::invalid("counter", "delta out of range"))?;
        self.incr(key, delta).await
    }

    /// Gives a live entry a new TTL from now (`None`: its namespace's
    /// default); whether there was one.
    pub async fn touch(&self, key: &CacheKey, ttl: Option<Duration>) -> Result<bool> {
        let now = self.now();
        let options = match ttl {
            Some(ttl) => SetOptions::new().ttl(ttl),
            None => SetOptions::new(),
        };
        let expires_at = self.expiry(key, &options, now)?;
        self.set_expiry(key, expires_at, now).await
    }

    /// Makes a live entry expire `after` from now (zero: at once); whether
    /// there was one.
    pub async fn expire(&self, key: &CacheKey, after: Duration) -> Result<bool> {
        let now = self.now();
        if !after.is_zero() {
            check_ttl(after, self.state().config.max_ttl)?;
        }
        self.set_expiry(key, Some(now.saturating_add(after).as_millis()), now)
            .await
    }

    async fn set_expiry(
        &self,
        key: &CacheKey,
        expires_at: Option<i64>,
        now: Timestamp,
    ) -> Result<bool> {
        let state = self.state();
        if !self.exists(key).await? {
            return Ok(false);
        }
        let mut tx = self.core.store().sqlx_transaction().await?;
        let in_memory = state.l1.set_expiry(key.hashed(), expires_at);
        let at = expires_at.map(Timestamp::from_millis);
        let in_file = l2::set_expiry(&mut tx, key.as_str(), at, now).await?;
        tx.commit().await?;
        state.l1.set_expiry(key.hashed(), expires_at);
        Ok(in_memory || in_file)
    }

    /// Removes every entry tagged `tag` from both levels; how many.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        check_tag(tag)?;
        self.invalidate(Filter::Tag(tag), |m| m.tags.iter().any(|t| &**t == tag))
            .await
    }

    /// Removes every entry of `user` from both levels; how many.
    pub async fn clear_user(&self, user: &str) -> Result<u64> {
        crate::ids::check_user(user)?;
        self.invalidate(Filter::User(user), |m| m.user.as_deref() == Some(user))
            .await
    }

    /// The keys of `user`'s entries (for a user's export). Writes buffered
    /// sets first.
    pub async fn keys_of_user(&self, user: &str) -> Result<Vec<String>> {
        crate::ids::check_user(user)?;
        self.state.flush(self.core).await?;
        let mut conn = self
            .core
            .store()
            .sqlx_reader()
            .acquire()
            .await
            .map_err(crate::store::closed_or)?;
        Ok(l2::keys_of_user(&mut conn, user).await?)
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
        let in_file = l2::delete_where(tx, Filter::User(user)).await?;
        Ok(in_file.max(in_memory))
    }

    /// Within an import transaction ([`Vault::import_legacy`]): stores an
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
        if value.len() > config.max_value_bytes {
            return Err(Error::CacheValueTooLarge {
                size: value.len() as u64,
                max: config.max_value_bytes as u64,
            });
        }
        let now = self.now();
        check_ttl(expires_at.duration_since(now), config.max_ttl)?;
        for tag in tags {
            check_tag(tag)?;
        }
        let pending = Pending {
            item: Item {
                value: Arc::from(value),
                expires_at: Some(expires_at.as_millis()),
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
        let inserted = l2::insert_new(tx, &row, now).await?;
        // The running byte count misses this row: count again next time.
        state.l2_bytes.store(-1, Ordering::Relaxed);
        Ok(inserted)
    }

    /// Evicts least-recently-used rows until L2 is under its byte cap,
    /// counting its bytes afresh; how many went.
    pub(crate) async fn enforce_cap(&self) -> Result<u64> {
        let state = self.state();
        state.l2_bytes.store(-1, Ordering::Relaxed);
        let mut tx = self.core.store().sqlx_transaction().await?;
        let evicted = state.enforce_cap(&mut tx, 0).await?;
        tx.commit().await?;
        Ok(evicted)
    }

    /// The largest value the cache accepts, in bytes.
    pub(crate) fn max_value_bytes(&self) -> usize {
        self.state().config.max_value_bytes
    }

    /// Drops `user`'s entries from memory; how many there were.
    pub(crate) fn forget_user(&self, user: &str) -> u64 {
        self.state()
            .l1
            .remove_where(&|m: &Meta| m.user.as_deref() == Some(user))
            .len() as u64
    }

    /// Removes every entry of `namespace` from both levels; how many.
    pub async fn clear_namespace(&self, namespace: &str) -> Result<u64> {
        self.invalidate(Filter::Namespace(namespace), |m| &*m.namespace == namespace)
            .await
    }

    /// Removes every entry from both levels; how many.
    pub async fn clear(&self) -> Result<u64> {
        self.invalidate(Filter::All, |_| true).await
    }

    /// Memory first (under the writer, so no flush is half-way), then the
    /// file, then memory again for anything an L2 read promoted meanwhile.
    async fn invalidate(&self, filter: Filter<'_>, matches: impl Fn(&Meta) -> bool) -> Result<u64> {
        let state = self.state();
        let mut tx = self.core.store().sqlx_transaction().await?;
        let in_memory = state.l1.remove_where(&matches);
        let in_file = l2::delete_where(&mut tx, filter).await?;
        tx.commit().await?;
        state.l1.remove_where(&matches);
        let n = in_file.max(in_memory.len() as u64);
        bump(&state.counters.invalidations, n);
        Ok(n)
    }

    /// The value under `key`, or the loader's value, stored with `options`.
    /// However many tasks miss the same key at the same moment, the loader
    /// runs once and the others get its value. A loader that fails stores
    /// nothing; the next waiting task then tries its own loader.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &CacheKey,
        options: &SetOptions,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.get_json(key).await? {
            return Ok(v);
        }
        let state = self.state();
        let gate = {
            let mut loading = state.loading.lock().unwrap_or_else(PoisonError::into_inner);
            loading.entry(key.as_str().to_owned()).or_default().clone()
        };
        let result = async {
            let _turn = gate.lock().await;
            if let Some(v) = self.get_json(key).await? {
                return Ok(v);
            }
            let value = loader().await?;
            self.set_json(key, &value, options).await?;
            Ok(value)
        }
        .await;
        let mut loading = state.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if loading
            .get(key.as_str())
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(g) == 2)
        {
            loading.remove(key.as_str());
        }
        result
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
        let rows = l2::namespaces(self.core.store().sqlx_reader(), self.now())
            .await
            .map_err(crate::store::closed_or)?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(
                |(namespace, entries, value, stored, expired)| NamespaceStats {
                    namespace,
                    entries: n(entries),
                    value_bytes: n(value),
                    stored_bytes: n(stored),
                    expired_entries: n(expired),
                },
            )
            .collect())
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
            let mut tx = self.core.store().sqlx_transaction().await?;
            let n = l2::delete_expired(&mut tx, now, SWEEP_BATCH).await?;
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

fn check_ttl(ttl: Duration, max: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid("cache ttl", "zero"));
    }
    if ttl > max {
        return Err(Error::invalid(
            "cache ttl",
            format!("{ttl:?} is longer than the maximum {max:?}"),
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > 256 || tag.chars().any(char::is_control) {
        return Err(Error::invalid(
            "cache tag",
            "1–256 bytes, no control characters",
        ));
    }
    Ok(())
}

//! The two-level cache: an in-process LRU (L1) in front of zstd blobs in the
//! vault's storage (L2, `cache_entries` + `cache_tags`: in the file, or in
//! UNLOGGED tables on PostgreSQL, each value sealed).
//!
//! Reads go L1 → pending writes → L2 → miss, and an L2 hit is promoted to L1.
//! Sets go to L1 and to a write-behind buffer that [`Vault::flush`](crate::Vault::flush) writes to
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
//! 5. Every handle on the same state (another process, the CLI, another
//!    instance on PostgreSQL) sees this one's sets once they are flushed,
//!    and its invalidations once they return: before a get or `exists`
//!    answers, it applies the change feed's records of other handles (see
//!    `state.rs` and `core/feed.rs`), at most once per
//!    `feed_check_interval` when that is set. On PostgreSQL a record
//!    reaches another instance with its notification, one round trip after
//!    the commit.
//!
//! # Layout
//!
//! - `mod.rs`: [`Cache`], the handle, and the get, set and invalidation paths;
//!   `counter.rs` its counters, `upkeep.rs` its stats, sweep and part in
//!   the vault's cross-facet work.
//! - `config.rs`: [`CacheConfig`] and [`SetOptions`]; `types.rs`: what it reports.
//! - `state.rs`: the state the vault holds, and the flush; `l1.rs`: memory
//!   (L1 and the write buffer); `key.rs`: [`CacheKey`].
//! - `backend.rs`: the storage contract; `storage.rs`: which backend;
//!   `sqlite.rs`: L2 in the vault file, every statement of the cache but the
//!   inserts and a flush's multi-row writes, which are in `sqlite_batch.rs`;
//!   `postgres.rs`: L2 on PostgreSQL; `codec.rs`: how values are stored.

mod backend;
mod codec;
mod config;
mod counter;
mod key;
mod l1;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
pub(crate) use sqlite::keys_of_user as export_user_in_file;
mod sqlite_batch;
mod state;
mod storage;
mod types;
mod upkeep;

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use backend::{CacheBackend, CacheTx, Filter, Found};
pub use config::{CacheConfig, SetOptions};
use config::{check_tag, check_ttl};
pub use key::{CacheKey, MAX_KEY_BYTES};
use l1::{Item, Lookup, Meta};
#[cfg(feature = "postgres")]
pub(crate) use postgres::{
    SEALED, check_sealed, erase_user as erase_user_pg, keys_of_user as export_user_pg,
};
pub(crate) use state::CacheState;
use state::bump;
pub use types::{CacheStats, L1Stats, L2Stats, NamespaceStats, SweepReport};

use crate::core::Core;
use crate::{Error, Result, Timestamp};

/// The two-level cache of a vault: L1 in memory, L2 in the vault's storage.
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

    /// L2, through its backend.
    fn l2(&self) -> storage::Backend<'a> {
        state::backend(self.core, self.state)
    }

    /// The value under `key`, if there is a live one: L1, then L2 (promoted
    /// to L1 on a hit). A corrupt row in L2 is dropped and reported as
    /// [`Error::CacheCorrupt`].
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Arc<[u8]>>> {
        if tracing::enabled!(tracing::Level::TRACE) {
            let span =
                tracing::trace_span!("cache.get", outcome = tracing::field::Empty, key = %key);
            return Box::pin(crate::trace::traced(span, self.lookup(key), |v| {
                hit_or_miss(v.is_some())
            }))
            .await;
        }
        self.lookup(key).await
    }

    /// [`get`](Cache::get), without its span.
    async fn lookup(&self, key: &CacheKey) -> Result<Option<Arc<[u8]>>> {
        // Memory is checked against the coarse clock (see guarantee 4); L2
        // and every write read the full clock.
        let now = self.core.clock().now_coarse();
        self.catch_up(now)?;
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
        match self.l2().read(key.as_str(), now, max).await? {
            None => {
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
                let mut tx = self.l2().begin().await?;
                tx.delete_keys(&[key.as_str()]).await?;
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
                    digest: self.digest(key)?,
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

    /// The key's digest, as change-feed records name it.
    fn digest(&self, key: &CacheKey) -> Result<u64> {
        backend::key_digest(self.core, key.as_str())
    }

    /// Drops from memory what other handles replaced or invalidated since
    /// this one last looked (see `state.rs`).
    #[inline]
    fn catch_up(&self, now: Timestamp) -> Result<()> {
        let (core, state) = (self.core, self.state());
        core.catch_up(&state.feed, now, |news| state.apply(core, news))
    }

    /// Whether a live value is under `key` (does not count as a get).
    pub async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let exists = async {
            let now = self.now();
            self.catch_up(now)?;
            if let Some(live) = self.state().l1.peek(key.hashed(), now.as_millis()) {
                return Ok(live);
            }
            self.l2().exists(key.as_str(), now).await
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            let span =
                tracing::trace_span!("cache.exists", outcome = tracing::field::Empty, key = %key);
            return Box::pin(crate::trace::traced(span, exists, |v| hit_or_miss(*v))).await;
        }
        exists.await
    }

    /// Stores `value` under `key` with the namespace's default TTL.
    pub async fn set(&self, key: &CacheKey, value: &[u8]) -> Result<()> {
        self.set_with(key, value, &SetOptions::new()).await
    }

    /// Stores `value` under `key`. It is in L1 (when it fits) and readable at
    /// once; it reaches L2 at the next [`Vault::flush`](crate::Vault::flush). Values larger than
    /// the configured maximum are [`Error::CacheValueTooLarge`]; a zero or
    /// too long TTL is [`Error::InvalidInput`].
    #[tracing::instrument(name = "cache.set", level = "debug", skip_all, fields(outcome = tracing::field::Empty, key = %key))]
    pub async fn set_with(&self, key: &CacheKey, value: &[u8], options: &SetOptions) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let pending = self.stage(key, value, options)?;
                self.flush_if_full(pending).await
            }
            .await,
            crate::trace::ok,
        )
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
        config.check_value_size(value.len())?;
        let now = self.now();
        let expires_at = self.expiry(key, options, now)?;
        for tag in &options.tags {
            check_tag(tag)?;
        }
        let item = Item {
            value: Arc::from(value),
            expires_at,
            digest: self.digest(key)?,
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
    #[tracing::instrument(name = "cache.delete", level = "debug", skip_all, fields(outcome = tracing::field::Empty, key = %key))]
    pub async fn delete(&self, key: &CacheKey) -> Result<bool> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async { Ok(self.delete_many(std::slice::from_ref(key)).await? > 0) }.await,
            |v| if *v { "deleted" } else { "absent" },
        )
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
    #[tracing::instrument(name = "cache.delete_many", level = "debug", skip_all, fields(outcome = tracing::field::Empty, keys = keys.len()))]
    pub async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let state = self.state();
                let texts: Vec<&str> = keys.iter().map(CacheKey::as_str).collect();
                let mut tx = self.l2().begin().await?;
                let in_memory = state.l1.remove(keys.iter().map(CacheKey::hashed));
                let in_file = tx.delete_keys(&texts).await?;
                tx.commit().await?;
                state.l1.remove(keys.iter().map(CacheKey::hashed));
                let n = in_memory.max(in_file);
                bump(&state.counters.invalidations, n);
                Ok(n)
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Gives a live entry a new TTL from now (`None`: its namespace's
    /// default); whether there was one.
    #[tracing::instrument(name = "cache.touch", level = "debug", skip_all, fields(outcome = tracing::field::Empty, key = %key))]
    pub async fn touch(&self, key: &CacheKey, ttl: Option<Duration>) -> Result<bool> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let now = self.now();
                let options = match ttl {
                    Some(ttl) => SetOptions::new().ttl(ttl),
                    None => SetOptions::new(),
                };
                let expires_at = self.expiry(key, &options, now)?;
                self.set_expiry(key, expires_at, now).await
            }
            .await,
            |v| if *v { "hit" } else { "miss" },
        )
    }

    /// Makes a live entry expire `after` from now (zero: at once); whether
    /// there was one.
    #[tracing::instrument(name = "cache.expire", level = "debug", skip_all, fields(outcome = tracing::field::Empty, key = %key))]
    pub async fn expire(&self, key: &CacheKey, after: Duration) -> Result<bool> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let now = self.now();
                if !after.is_zero() {
                    check_ttl(after, self.state().config.max_ttl)?;
                }
                self.set_expiry(key, Some(now.saturating_add(after).as_millis()), now)
                    .await
            }
            .await,
            |v| if *v { "hit" } else { "miss" },
        )
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
        let mut tx = self.l2().begin().await?;
        let in_memory = state.l1.set_expiry(key.hashed(), expires_at);
        let at = expires_at.map(Timestamp::from_millis);
        let in_file = tx.set_expiry(key.as_str(), at, now).await?;
        tx.commit().await?;
        state.l1.set_expiry(key.hashed(), expires_at);
        Ok(in_memory || in_file)
    }

    /// Removes every entry tagged `tag` from both levels; how many.
    #[tracing::instrument(name = "cache.invalidate_tag", level = "debug", skip_all, fields(outcome = tracing::field::Empty, tag = tag))]
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_tag(tag)?;
                self.invalidate(Filter::Tag(tag), |m| m.tags.iter().any(|t| &**t == tag))
                    .await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Removes every entry of `user` from both levels; how many.
    #[tracing::instrument(name = "cache.clear_user", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user))]
    pub async fn clear_user(&self, user: &str) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                crate::ids::check_user(user)?;
                self.invalidate(Filter::User(user), |m| m.user.as_deref() == Some(user))
                    .await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Removes every entry of `namespace` from both levels; how many.
    #[tracing::instrument(name = "cache.clear_namespace", level = "debug", skip_all, fields(outcome = tracing::field::Empty, namespace = namespace))]
    pub async fn clear_namespace(&self, namespace: &str) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                self.invalidate(Filter::Namespace(namespace), |m| &*m.namespace == namespace)
                    .await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Removes every entry from both levels; how many.
    #[tracing::instrument(name = "cache.clear", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn clear(&self) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async { self.invalidate(Filter::All, |_| true).await }.await,
            crate::trace::ok,
        )
    }

    /// Memory first (under the writer, so no flush is half-way), then the
    /// file, then memory again for anything an L2 read promoted meanwhile.
    async fn invalidate(&self, filter: Filter<'_>, matches: impl Fn(&Meta) -> bool) -> Result<u64> {
        let state = self.state();
        let mut tx = self.l2().begin().await?;
        let in_memory = state.l1.remove_where(&matches);
        let in_file = tx.delete_where(filter).await?;
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
}

/// A read's outcome in its span.
fn hit_or_miss(found: bool) -> &'static str {
    if found { "hit" } else { "miss" }
}

//! L1: the in-process level, and the write-behind buffer that feeds L2.
//!
//! The keys are spread over `N` shards by the hash each key carries
//! ([`Hashed`], computed once when the key is made); each shard is one
//! `std::sync::Mutex` over an [`lru::LruCache`] plus that shard's pending
//! writes. No lock is held across an `.await` (every method here is
//! synchronous), so many tokio tasks contend only when they touch the same
//! shard.
//!
//! Invariants (each kept by the code named):
//! 1. A shard never holds more than its share of entries and bytes:
//!    `max_entries / N` and `max_bytes / N`, so the whole of L1 never exceeds
//!    the configured bounds ([`Shard::bound`]). A value bigger than a shard's
//!    byte share is never put in L1 (it is served from the pending buffer
//!    and L2), and the older L1 copy of its key is removed ([`Shards::set`]).
//! 2. A set that L2 does not have yet is in `pending` (or, while a flush
//!    writes it, in `flushing`) until L2 has committed it, whatever L1
//!    evicts. A key found there is answered from there and never from L2,
//!    which may hold an older value ([`Shards::lookup`]).
//! 3. Every change to a shard bumps its `version`. A value read from L2 is
//!    promoted into L1 only if the shard's version is the one seen before
//!    the L2 read ([`Shards::promote`]): a set or an invalidation that ran
//!    in between wins, so no stale value is ever promoted.
//!
//! `flush.rs` holds the buffer's side of a flush: what it takes out of the
//! shards, and what it puts back when the flush commits or fails.

mod flush;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use super::key::{ByHash, Hashed};

/// A shard's maps beside its LRU, keyed the same way: by the hash each key
/// carries, so no lookup hashes the text again.
type Map<V> = HashMap<Hashed, V, ByHash>;

/// Who an entry belongs to: what namespace, user and tag invalidations match.
#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub(crate) namespace: Box<str>,
    pub(crate) user: Option<Box<str>>,
    pub(crate) tags: Box<[Box<str>]>,
}

/// A cached value as both levels hand it around.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) value: Arc<[u8]>,
    /// Milliseconds since the epoch; `None`: never expires.
    pub(crate) expires_at: Option<i64>,
    pub(crate) meta: Arc<Meta>,
    /// The key's digest, as change-feed records name it
    /// ([`key_digest`](super::backend::key_digest)).
    pub(crate) digest: u64,
}

impl Item {
    pub(crate) fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    /// What the item costs L1: value, key, metadata and bookkeeping.
    fn cost(&self, key: &str) -> usize {
        const OVERHEAD: usize = 128;
        let tags: usize = self.meta.tags.iter().map(|t| t.len() + 16).sum();
        self.value.len()
            + key.len()
            + self.meta.namespace.len()
            + self.meta.user.as_ref().map_or(0, |u| u.len())
            + tags
            + OVERHEAD
    }
}

/// A set waiting for L2.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) item: Item,
    pub(crate) created_at: i64,
}

struct Entry {
    item: Item,
    bytes: usize,
    /// When this entry's last access was last noted for L2.
    access_noted: i64,
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A live value held in memory (L1 or the pending buffer).
    Hit(Arc<[u8]>),
    /// Memory knows the key's newest value and it has expired: do not ask L2.
    Expired,
    /// Memory does not know; ask L2. Carries the shard version to promote with.
    Miss(u64),
}

/// Per-shard counters, kept under the shard's lock (no atomics on the hit path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) expirations: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
    }
}

struct Shard {
    lru: LruCache<Hashed, Entry, ByHash>,
    bytes: usize,
    pending: Map<Pending>,
    pending_bytes: usize,
    /// Taken by the flush in progress; cleared when it commits.
    flushing: Map<Pending>,
    /// Last-access times L2 has not been told yet.
    touched: Map<i64>,
    version: u64,
    counters: Counters,
}

/// The shards, and the bounds each one keeps.
pub(crate) struct Shards {
    shards: Box<[Mutex<Shard>]>,
    max_entries: usize,
    max_bytes: usize,
    access_resolution_ms: i64,
}

impl Shards {
    /// `shards` shards sharing `max_entries` and `max_bytes` between them.
    pub(crate) fn new(
        shards: usize,
        max_entries: usize,
        max_bytes: usize,
        access_resolution_ms: i64,
    ) -> Self {
        let n = shards.max(1);
        Shards {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded_with_hasher(ByHash::default()),
                        bytes: 0,
                        pending: Map::default(),
                        pending_bytes: 0,
                        flushing: Map::default(),
                        touched: Map::default(),
                        version: 0,
                        counters: Counters::default(),
                    })
                })
                .collect(),
            max_entries: max_entries / n,
            max_bytes: max_bytes / n,
            access_resolution_ms,
        }
    }

    /// The key's shard, picked by bits 24–55 of its stored hash: hashbrown
    /// uses the low bits for the bucket and the top 7 for its tags, so the
    /// keys of one shard still spread over both.
    #[inline]
    fn shard(&self, key: &Hashed) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.index(key.hash())])
    }

    #[inline]
    fn index(&self, hash: u64) -> usize {
        ((((hash >> 24) & 0xffff_ffff) * self.shards.len() as u64) >> 32) as usize
    }

    fn each(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock)
    }

    /// L1, then the pending buffer (invariant 2).
    ///
    /// A hit moves the entry to the front of the LRU at most once per access
    /// resolution, when its access is also noted for L2: recency is kept to
    /// that resolution (5 s by default), and a hot entry's hits skip
    /// relinking the list.
    #[inline]
    pub(crate) fn lookup(&self, key: &Hashed, now: i64) -> Lookup {
        let mut guard = self.shard(key);
        // The hot path: a live entry whose access was noted recently.
        if let Some(entry) = guard.lru.peek_mut(key)
            && entry.item.live(now)
            && now - entry.access_noted < self.access_resolution_ms
        {
            let value = entry.item.value.clone();
            guard.counters.hits += 1;
            return Lookup::Hit(value);
        }
        self.lookup_rest(&mut guard, key, now)
    }

    /// The rest of [`lookup`](Self::lookup), under the same lock: a hit due
    /// for noting, an expired entry, the pending buffer, a miss.
    #[cold]
    #[inline(never)]
    fn lookup_rest(&self, shard: &mut Shard, key: &Hashed, now: i64) -> Lookup {
        if let Some(entry) = shard.lru.peek_mut(key) {
            if entry.item.live(now) {
                let value = entry.item.value.clone();
                if now - entry.access_noted >= self.access_resolution_ms {
                    entry.access_noted = now;
                    shard.lru.promote(key);
                    shard.touched.insert(key.clone(), now);
                }
                shard.counters.hits += 1;
                return Lookup::Hit(value);
            }
            if let Some(e) = shard.lru.pop(key) {
                shard.bytes -= e.bytes;
            }
            shard.counters.expirations += 1;
        }
        let buffered = shard.pending.get(key).or_else(|| shard.flushing.get(key));
        if let Some(p) = buffered {
            if p.item.live(now) {
                let value = p.item.value.clone();
                shard.counters.hits += 1;
                return Lookup::Hit(value);
            }
            shard.counters.misses += 1;
            return Lookup::Expired;
        }
        shard.counters.misses += 1;
        Lookup::Miss(shard.version)
    }

    /// Whether memory knows the key (live, expired, or not at all), without
    /// counting a hit or a miss.
    pub(crate) fn peek(&self, key: &Hashed, now: i64) -> Option<bool> {
        let shard = self.shard(key);
        if let Some(p) = shard.pending.get(key).or_else(|| shard.flushing.get(key)) {
            return Some(p.item.live(now));
        }
        shard
            .lru
            .peek(key)
            .filter(|e| e.item.live(now))
            .map(|_| true)
    }

    /// A set: into L1 (when it fits) and into the pending buffer.
    /// Returns the pending bytes of the shard afterwards.
    pub(crate) fn set(&self, key: &Hashed, item: Item, now: i64) -> usize {
        let bytes = item.cost(key.as_str());
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        shard.version += 1;
        if let Some(old) = shard.lru.pop(key) {
            shard.bytes -= old.bytes;
        }
        if bytes <= self.max_bytes && self.max_entries > 0 {
            shard.lru.put(
                key.clone(),
                Entry {
                    item: item.clone(),
                    bytes,
                    access_noted: now,
                },
            );
            shard.bytes += bytes;
            self.bound(shard);
        }
        shard.touched.remove(key);
        let value_len = item.value.len();
        if let Some(old) = shard.pending.insert(
            key.clone(),
            Pending {
                item,
                created_at: now,
            },
        ) {
            shard.pending_bytes -= old.item.value.len();
        }
        shard.pending_bytes += value_len;
        shard.pending_bytes
    }

    /// Puts a value L2 has just committed into L1 (not into the buffer).
    pub(crate) fn put(&self, key: &Hashed, item: Item, now: i64) {
        let version = {
            let mut shard = self.shard(key);
            remove_one(&mut shard, key);
            shard.version
        };
        // The write has just set the row's last access.
        self.promote(key, item, version, now, now);
    }

    /// Puts back a set taken out of the buffer whose write failed, unless a
    /// newer set replaced it.
    pub(crate) fn restore_pending(&self, key: &Hashed, pending: Pending) {
        let mut shard = self.shard(key);
        if !shard.pending.contains_key(key) {
            shard.pending_bytes += pending.item.value.len();
            shard.pending.insert(key.clone(), pending);
        }
    }

    /// Promotes a value read from L2 unless the shard changed since `version`
    /// (invariant 3). The access is noted for L2 when the row's own
    /// `last_access` (milliseconds) is a resolution or more behind `now`;
    /// otherwise L1 carries the row's time on, as if it had noted it itself.
    pub(crate) fn promote(
        &self,
        key: &Hashed,
        item: Item,
        version: u64,
        now: i64,
        last_access: i64,
    ) {
        let bytes = item.cost(key.as_str());
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if shard.version != version {
            return;
        }
        let access_noted = if now - last_access >= self.access_resolution_ms {
            shard.touched.insert(key.clone(), now);
            now
        } else {
            last_access.min(now)
        };
        if bytes <= self.max_bytes && self.max_entries > 0 {
            let old = shard.lru.put(
                key.clone(),
                Entry {
                    item,
                    bytes,
                    access_noted,
                },
            );
            shard.bytes += bytes;
            shard.bytes -= old.map_or(0, |e| e.bytes);
            self.bound(shard);
        }
    }

    /// Evicts least-recently-used entries until the shard is within its bounds
    /// (invariant 1).
    fn bound(&self, shard: &mut Shard) {
        while shard.lru.len() > self.max_entries || shard.bytes > self.max_bytes {
            match shard.lru.pop_lru() {
                Some((_, e)) => {
                    shard.bytes -= e.bytes;
                    shard.counters.evictions += 1;
                }
                None => break,
            }
        }
    }

    /// Removes these keys from L1 and from the pending buffer; how many were there.
    pub(crate) fn remove<'k>(&self, keys: impl IntoIterator<Item = &'k Hashed>) -> u64 {
        let mut n = 0;
        for key in keys {
            let mut shard = self.shard(key);
            n += u64::from(remove_one(&mut shard, key));
        }
        n
    }

    /// Removes every entry whose metadata matches, from L1 and the pending
    /// buffer; bumps every shard's version. Returns the keys removed.
    pub(crate) fn remove_where(&self, mut matches: impl FnMut(&Meta) -> bool) -> Vec<Arc<str>> {
        let mut removed = Vec::new();
        for mut shard in self.each() {
            shard.version += 1;
            let mut keys: Vec<Hashed> = shard
                .lru
                .iter()
                .filter(|(_, e)| matches(&e.item.meta))
                .map(|(k, _)| k.clone())
                .collect();
            keys.extend(
                shard
                    .pending
                    .iter()
                    .chain(shard.flushing.iter())
                    .filter(|(_, p)| matches(&p.item.meta))
                    .map(|(k, _)| k.clone()),
            );
            keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            keys.dedup();
            for key in &keys {
                remove_one(&mut shard, key);
            }
            removed.extend(keys.into_iter().map(|k| k.text().clone()));
        }
        removed
    }

    /// Drops the L1 entries whose keys have these digests; with `pending`,
    /// also this handle's sets of them that L2 does not have yet (else
    /// those stay, invariant 2). Bumps every shard's version (invariant 3).
    pub(crate) fn forget_digests(&self, digests: &HashSet<u64>, pending: bool) {
        for mut guard in self.each() {
            let shard = &mut *guard;
            shard.version += 1;
            let named = |item: &Item| digests.contains(&item.digest);
            let mut keys: Vec<Hashed> = shard
                .lru
                .iter()
                .filter(|(_, e)| named(&e.item))
                .map(|(k, _)| k.clone())
                .collect();
            if !pending {
                for key in keys {
                    if let Some(e) = shard.lru.pop(&key) {
                        shard.bytes -= e.bytes;
                    }
                }
                continue;
            }
            keys.extend(
                shard
                    .pending
                    .iter()
                    .chain(shard.flushing.iter())
                    .filter(|(_, p)| named(&p.item))
                    .map(|(k, _)| k.clone()),
            );
            for key in &keys {
                remove_one(shard, key);
            }
        }
    }

    /// Empties L1, keeping the sets L2 does not have yet; bumps every
    /// shard's version.
    pub(crate) fn forget_all_clean(&self) {
        for mut shard in self.each() {
            shard.version += 1;
            shard.lru.clear();
            shard.bytes = 0;
        }
    }

    /// Sets a new expiry on the key wherever memory holds it.
    pub(crate) fn set_expiry(&self, key: &Hashed, expires_at: Option<i64>) -> bool {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        shard.version += 1;
        let mut found = false;
        if let Some(e) = shard.lru.peek_mut(key) {
            e.item.expires_at = expires_at;
            found = true;
        }
        for p in [shard.pending.get_mut(key), shard.flushing.get_mut(key)]
            .into_iter()
            .flatten()
        {
            p.item.expires_at = expires_at;
            found = true;
        }
        found
    }

    /// The pending set of `key`, taken out of the buffer (to be written now).
    pub(crate) fn take_pending(&self, key: &Hashed) -> Option<Pending> {
        let mut shard = self.shard(key);
        let p = shard.pending.remove(key)?;
        shard.pending_bytes -= p.item.value.len();
        Some(p)
    }

    /// Drops expired entries from L1; how many.
    pub(crate) fn purge_expired(&self, now: i64) -> u64 {
        let mut n = 0;
        for mut guard in self.each() {
            let shard = &mut *guard;
            let dead: Vec<Hashed> = shard
                .lru
                .iter()
                .filter(|(_, e)| !e.item.live(now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in dead {
                if let Some(e) = shard.lru.pop(&k) {
                    shard.bytes -= e.bytes;
                    shard.counters.expirations += 1;
                    n += 1;
                }
            }
        }
        n
    }

    /// Entries and bytes held in L1, pending writes, and the counters.
    pub(crate) fn totals(&self) -> (u64, u64, u64, Counters) {
        let (mut entries, mut bytes, mut pending) = (0, 0, 0);
        let mut counters = Counters::default();
        for shard in self.each() {
            entries += shard.lru.len() as u64;
            bytes += shard.bytes as u64;
            pending += (shard.pending.len() + shard.flushing.len()) as u64;
            counters += shard.counters;
        }
        (entries, bytes, pending, counters)
    }

    /// The bounds L1 keeps in total: (entries, bytes).
    pub(crate) fn bounds(&self) -> (usize, usize) {
        (
            self.max_entries * self.shards.len(),
            self.max_bytes * self.shards.len(),
        )
    }
}

fn remove_one(shard: &mut Shard, key: &Hashed) -> bool {
    shard.version += 1;
    let mut found = false;
    if let Some(e) = shard.lru.pop(key) {
        shard.bytes -= e.bytes;
        found = true;
    }
    if let Some(p) = shard.pending.remove(key) {
        shard.pending_bytes -= p.item.value.len();
        found = true;
    }
    found |= shard.flushing.remove(key).is_some();
    shard.touched.remove(key);
    found
}

#[inline]
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_the_shards() {
        let shards = Shards::new(16, 1000, 1 << 20, 1000);
        let mut counts = [0usize; 16];
        for i in 0..1600 {
            for text in [
                format!("search:tracks:{:016x}:user{}", i * 7919, i % 13),
                format!("tracks:{i}"),
            ] {
                counts[shards.index(Hashed::new(text.into()).hash())] += 1;
            }
        }
        assert!(
            counts.iter().all(|&c| (100..=320).contains(&c)),
            "{counts:?}"
        );
    }
}

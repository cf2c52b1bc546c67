//! How the cache is sized and how long entries live ([`CacheConfig`]), what
//! one set asks for ([`SetOptions`]), and the checks on both.

use std::collections::HashMap;
use std::time::Duration;

use super::key;
use crate::{Error, Result};

/// How the cache is sized and how long entries live. Every setting has a
/// default; see [`CacheConfig::default`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub(super) l1_entries: usize,
    pub(super) l1_bytes: usize,
    pub(super) l1_shards: usize,
    pub(super) l2_bytes: u64,
    default_ttl: Duration,
    namespace_ttls: HashMap<String, Duration>,
    pub(super) max_ttl: Duration,
    pub(super) max_value_bytes: usize,
    pub(super) compression_level: i32,
    pub(super) raw_below: usize,
    pub(super) access_resolution: Duration,
    pub(super) max_pending_bytes: usize,
    pub(super) feed_check_interval: Duration,
}

impl Default for CacheConfig {
    /// L1: 1000 entries, 100 MB, 16 shards. L2: 500 MB. TTLs: 1 h by
    /// default; `search` 5 min, `playlists` 15 min, `metadata` 1 h, `tracks`
    /// 6 h; at most 365 days. Values up to 64 MiB, zstd level 3, values
    /// under 64 bytes stored raw. Last access noted at most every 5 s per
    /// entry; at most 64 MiB of sets buffered before a set flushes. Other
    /// handles' changes looked for on every get.
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
            feed_check_interval: Duration::ZERO,
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

    /// How often a get asks the change feed whether another handle on the
    /// file (process, worker, the CLI) replaced or invalidated entries
    /// (default zero: on every get, so L1 never serves a value another
    /// handle's flushed set or invalidation replaced). A longer interval
    /// saves that check on most gets and lets L1 serve such a value for up
    /// to that long (at most a minute).
    pub fn feed_check_interval(mut self, every: Duration) -> Self {
        self.feed_check_interval = every;
        self
    }

    /// A value of `len` bytes fits, or [`Error::CacheValueTooLarge`].
    pub(super) fn check_value_size(&self, len: usize) -> Result<()> {
        if len > self.max_value_bytes {
            return Err(Error::CacheValueTooLarge {
                size: len as u64,
                max: self.max_value_bytes as u64,
            });
        }
        Ok(())
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
        if self.feed_check_interval > Duration::from_secs(60) {
            return Err(Error::invalid(
                "cache feed_check_interval",
                "longer than a minute",
            ));
        }
        if !ttl_ok(&self.default_ttl) || !self.namespace_ttls.values().all(ttl_ok) {
            return Err(Error::invalid("cache ttl", "zero or longer than max_ttl"));
        }
        for ns in self.namespace_ttls.keys() {
            key::check_namespace(ns)?;
        }
        Ok(())
    }

    /// The TTL of `namespace`'s entries when a set names none.
    pub(super) fn ttl_for(&self, namespace: &str) -> Duration {
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
    pub(super) ttl: Option<Duration>,
    pub(super) never_expires: bool,
    pub(super) tags: Vec<String>,
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

    /// Tag the entry, for [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// A TTL is more than zero and at most `max`.
pub(super) fn check_ttl(ttl: Duration, max: Duration) -> Result<()> {
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

/// A tag is 1–256 bytes without control characters.
pub(super) fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > 256 || tag.chars().any(char::is_control) {
        return Err(Error::invalid(
            "cache tag",
            "1–256 bytes, no control characters",
        ));
    }
    Ok(())
}

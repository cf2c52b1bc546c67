//! The cache's storage contract: what L2 needs from a backend, in the
//! cache's own terms. `sqlite.rs` implements it for the vault file,
//! `postgres.rs` for a PostgreSQL database, and `storage.rs` picks one.
//!
//! Each write of a [`CacheTx`] also publishes, in its transaction, the
//! change-feed records that let another handle drop what it replaced from
//! its L1 ([`CacheState::apply`](super::state::CacheState) reads them):
//! [`SET`] for keys written or given a new expiry, [`REMOVED`] for keys
//! deleted (each record names up to [`KEYS_PER_RECORD`] keys, packed by
//! [`pack_digests`]: a flush of a thousand sets adds one row, not a
//! thousand), and one record per invalidation ([`Filter::record`]). Records
//! name keys, tags, users and namespaces by their keyed digest
//! ([`Core::digest`]), never by their text, so a deleted entry or an erased
//! user leaves no copy in the feed. Expiry and eviction publish nothing:
//! every handle checks expiry itself, and an evicted value is not stale.

use std::borrow::Borrow;
use std::sync::Arc;

use super::codec::{self, Codec};
use super::l1::{Meta, Pending};
use super::types::NamespaceStats;
use crate::core::Core;
use crate::{Result, Timestamp};

/// Feed record: these keys' values or expiries changed (another handle
/// drops its L1 copies, keeping sets of its own not yet written).
pub(crate) const SET: &str = "set";
/// Feed record: these keys were deleted (another handle drops them from
/// memory).
pub(crate) const REMOVED: &str = "removed";
/// The most keys one [`SET`] or [`REMOVED`] record names.
pub(crate) const KEYS_PER_RECORD: usize = 1000;

/// The digest of a cache key (see [`Core::digest`]).
pub(crate) fn key_digest(core: &Core, key: &str) -> Result<u64> {
    core.digest("feed: cache key", key)
}

/// The digest of the tag, user or namespace a [`TAG`], [`USER`] or
/// [`NAMESPACE`] record names.
pub(crate) fn name_digest(core: &Core, kind: &str, name: &str) -> Result<u64> {
    core.digest(&format!("feed: cache {kind}"), name)
}

/// Key digests as one record's target: eight bytes each, big-endian.
pub(crate) fn pack_digests(digests: &[u64]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.to_be_bytes()).collect()
}

/// The digests [`pack_digests`] packed; `None` if `target` is not such a
/// list.
pub(crate) fn unpack_digests(target: &[u8]) -> Option<Vec<u64>> {
    let chunks = target.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// Feed records of the invalidations, naming the tag, user or namespace.
pub(crate) const TAG: &str = "tag";
pub(crate) const USER: &str = "user";
pub(crate) const NAMESPACE: &str = "namespace";
pub(crate) const ALL: &str = "all";

/// L2's reads, and the write transactions that change it.
pub(crate) trait CacheBackend {
    /// A write transaction, holding the backend's write lock until it
    /// commits or is dropped (rolled back).
    type Tx: CacheTx;

    /// Begins a write transaction. It waits for any other writer of this
    /// process, so memory changed after it began cannot be overwritten by a
    /// flush still under way (the module's guarantee 1).
    async fn begin(&self) -> Result<Self::Tx>;

    /// The point read: one lookup, the value decoded unless the row has
    /// expired. The file reads a small value on the caller's thread.
    async fn read(&self, key: &str, now: Timestamp, max: usize) -> Result<Option<Found>>;

    /// Whether a live row exists, without reading its value.
    async fn exists(&self, key: &str, now: Timestamp) -> Result<bool>;

    /// The keys of `user`'s rows, in order (for a user's export).
    async fn keys_of_user(&self, user: &str) -> Result<Vec<String>>;

    /// What L2 holds per namespace, in namespace order.
    async fn namespaces(&self, now: Timestamp) -> Result<Vec<NamespaceStats>>;
}

/// What the cache does inside one write transaction.
pub(crate) trait CacheTx: Send {
    /// Writes sets (replacing rows and their tags) and last-access times
    /// (only forward). Returns the stored bytes written.
    async fn write(&mut self, rows: &[Row], touches: &[(Arc<str>, i64)]) -> Result<i64>;

    /// Deletes these keys; how many rows went.
    async fn delete_keys(&mut self, keys: &[&str]) -> Result<u64>;

    /// Deletes every row the filter matches; how many.
    async fn delete_where(&mut self, filter: Filter<'_>) -> Result<u64>;

    /// A row as this transaction sees it (for counters), expired or not.
    async fn read_for_update(&mut self, key: &str) -> Result<Option<CounterRow>>;

    /// Sets a new expiry on a live row and notes the access; whether there
    /// was one.
    async fn set_expiry(
        &mut self,
        key: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool>;

    /// Deletes up to `limit` expired rows; how many.
    async fn delete_expired(&mut self, now: Timestamp, limit: i64) -> Result<u64>;

    /// The stored (compressed) bytes of every row, counted afresh.
    async fn stored_bytes(&mut self) -> Result<i64>;

    /// Deletes the least-recently-used rows that together free at least
    /// `excess` stored bytes, at most `limit` of them; their stored bytes.
    async fn evict_lru(&mut self, excess: i64, limit: i64) -> Result<Vec<i64>>;

    /// Makes the transaction's changes durable and visible.
    async fn commit(self) -> Result<()>;
}

/// What a point read found.
pub(crate) enum Found {
    Live {
        value: std::result::Result<Arc<[u8]>, String>,
        expires_at: Option<i64>,
        /// The row's last access, in milliseconds since the epoch.
        last_access: i64,
        meta: Meta,
    },
    Expired,
}

/// Which rows an invalidation deletes.
pub(crate) enum Filter<'a> {
    Tag(&'a str),
    User(&'a str),
    Namespace(&'a str),
    All,
}

impl Filter<'_> {
    /// The change-feed record of this invalidation: its kind, and the
    /// digest of the name it matches (empty for [`ALL`]).
    pub(crate) fn record(&self, core: &Core) -> Result<(&'static str, Vec<u8>)> {
        let named = |kind, name| Ok((kind, name_digest(core, kind, name)?.to_be_bytes().to_vec()));
        match self {
            Filter::Tag(tag) => named(TAG, tag),
            Filter::User(user) => named(USER, user),
            Filter::Namespace(ns) => named(NAMESPACE, ns),
            Filter::All => Ok((ALL, Vec::new())),
        }
    }
}

/// A set, encoded for L2.
pub(crate) struct Row {
    pub(crate) key: Arc<str>,
    pub(crate) pending: Pending,
    pub(crate) codec: Codec,
    pub(crate) stored: Vec<u8>,
}

impl Row {
    pub(crate) fn encode(key: Arc<str>, pending: Pending, level: i32, raw_below: usize) -> Row {
        let (codec, stored) = codec::encode(&pending.item.value, level, raw_below);
        Row {
            key,
            pending,
            codec,
            stored,
        }
    }
}

/// The most bytes of values one statement binds.
const BYTES_PER_STATEMENT: usize = 16 << 20;

/// Splits rows into statements of at most `max_rows` rows and about 16 MiB
/// of values.
pub(crate) fn statements<R: Borrow<Row>>(rows: &[R], max_rows: usize) -> Vec<&[R]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().map(Borrow::borrow).enumerate() {
        if i > start && (i - start >= max_rows || bytes + r.stored.len() > BYTES_PER_STATEMENT) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += r.stored.len();
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// A counter's row as the write transaction sees it, its value still encoded.
pub(crate) struct CounterRow {
    pub(crate) codec: String,
    pub(crate) value: Vec<u8>,
    pub(crate) size: i64,
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) tags: Box<[Box<str>]>,
}

#[cfg(test)]
mod tests {
    use super::{pack_digests, unpack_digests};

    #[test]
    fn packed_digests_unpack_to_themselves_and_garbage_to_none() {
        let digests = [0, 1, u64::MAX, 0x0102_0304_0506_0708];
        assert_eq!(unpack_digests(&pack_digests(&digests)).unwrap(), digests);
        assert_eq!(unpack_digests(&[]).unwrap(), Vec::<u64>::new());
        assert!(unpack_digests(&[0; 9]).is_none(), "not whole digests");
    }
}

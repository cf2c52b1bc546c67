//! What the cache reports: counters, contents and sweeps.

use serde::Serialize;

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

/// What a [`Cache::sweep`](crate::Cache::sweep) removed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SweepReport {
    /// Expired rows deleted from L2.
    pub expired: u64,
    /// Rows evicted from L2 to keep the byte cap.
    pub evicted: u64,
    /// Expired entries dropped from L1.
    pub l1_expired: u64,
}

//! The storage contract of the limits facet: what the facet asks of the
//! storage, in its own terms (rows of buckets and violations, no driver
//! types): [`sqlite`](super::sqlite) and `postgres.rs` implement it, and
//! [`Backend`](super::storage::Backend) picks one.
//!
//! Every method is `async`; the file answers the reads a check makes on
//! the caller's thread. Each write method is one transaction.

use std::sync::Arc;

use super::bucket::{Bucket, WindowSpec};
use super::types::ViolationRecord;
use crate::core::Core;
use crate::{Result, Timestamp};

/// The change-feed record a backend publishes with a subject's deletion (a
/// reset or an erasure), naming it by [`subject_digest`].
pub(crate) const SUBJECT: &str = "subject";

/// How a [`SUBJECT`] record names its subject: a keyed digest, never the
/// text (an erased user leaves no copy in the feed).
pub(crate) fn subject_digest(core: &Core, subject: &str) -> Result<u64> {
    core.digest("feed: limits subject", subject)
}

/// One bucket row to write.
#[derive(Debug, Clone)]
pub(crate) struct BucketRow {
    pub(crate) subject: String,
    pub(crate) limit: Arc<str>,
    pub(crate) period_secs: i64,
    pub(crate) bucket: Bucket,
}

/// One violation to record.
#[derive(Debug, Clone)]
pub(crate) struct ViolationRow {
    pub(crate) subject: String,
    pub(crate) limit: Arc<str>,
    pub(crate) occurred_at: Timestamp,
    pub(crate) cost: f64,
    pub(crate) penalty_until: Timestamp,
    pub(crate) client_info: String,
}

/// A bucket as stored: (window_secs, bucket).
pub(crate) type StoredBucket = (i64, Bucket);
/// A violation as the penalty needs it: (occurred_at, penalty_until).
pub(crate) type StoredViolation = (Timestamp, Option<Timestamp>);

/// What the file holds about one (subject, limit).
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// Its buckets, one per window that was ever written.
    pub(crate) buckets: Vec<StoredBucket>,
    /// Its violations since the time asked for.
    pub(crate) violations: Vec<StoredViolation>,
}

/// An allowed shared-mode check: `(window_secs, tokens)` per window, and the
/// violations in the last hour.
pub(crate) type SharedAllowed = (Vec<(i64, f64)>, usize);

/// What a shared-mode check found.
pub(crate) enum Shared<T> {
    /// The cost was taken from every window.
    Allowed(SharedAllowed),
    /// Refused; what the caller's `refused` step made of it.
    Refused(T),
}

/// One shared-mode check: `cost` of limit `limit` (its `windows`) for
/// `subject` at `now`; violations after `since` count.
pub(crate) struct SharedCheck<'a> {
    pub(crate) subject: &'a str,
    pub(crate) limit: &'a str,
    pub(crate) windows: &'a [WindowSpec],
    pub(crate) now: Timestamp,
    pub(crate) since: Timestamp,
    pub(crate) cost: f64,
}

/// What one write-behind transaction writes.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    /// Bucket states, replacing the stored ones.
    pub(crate) buckets: Vec<BucketRow>,
    /// Violations to insert.
    pub(crate) violations: Vec<ViolationRow>,
}

/// The storage operations of the limits facet.
pub(crate) trait LimitsBackend {
    /// The stored buckets of (`subject`, `limit`) and its violations after
    /// `since` (the file answers on the caller's thread).
    async fn load(&self, subject: &str, limit: &str, since: Timestamp) -> Result<Stored>;

    /// Every violation of `subject`, oldest first (the file answers on the
    /// caller's thread).
    async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>>;

    /// How many violations of any subject occurred after `since`.
    async fn count_violations_since(&self, since: Timestamp) -> Result<u64>;

    /// Takes the writer, then lets `fill` say what to write into `writes`,
    /// and writes it in one transaction. `fill` runs while no other write
    /// can, so what it reads from memory is not older than anything written
    /// before. On an error `writes` holds what was not written.
    async fn write(&self, writes: &mut Writes, fill: impl FnOnce(&mut Writes)) -> Result<()>;

    /// [`write`](LimitsBackend::write) for a strict check's few rows, on the
    /// caller's thread, committed with the writes that arrive with it.
    async fn write_now(
        &self,
        writes: &mut Writes,
        fill: impl FnOnce(&mut Writes) + Send,
    ) -> Result<()>;

    /// Shared mode, in one write transaction on the caller's thread: refills
    /// every window and takes the cost if it fits every window and no
    /// penalty runs. Otherwise it calls `refused` with the stored state (as
    /// [`load`](Self::load) reads it) and records the violation `refused`
    /// returns, if any, in the same transaction.
    async fn shared_check<T>(
        &self,
        check: &SharedCheck<'_>,
        refused: impl FnOnce(Stored) -> Result<(T, Option<ViolationRow>)>,
    ) -> Result<Shared<T>>;

    /// Deletes every bucket and violation of `subject`: (buckets,
    /// violations). `holding` runs once the writer is held, before the
    /// delete.
    async fn delete_subject(&self, subject: &str, holding: impl FnOnce()) -> Result<(u64, u64)>;

    /// Deletes up to `batch` violations that occurred before `before`.
    async fn sweep_violations(&self, before: Timestamp, batch: i64) -> Result<u64>;

    /// Deletes up to `batch` buckets unused since `before`.
    async fn sweep_buckets(&self, before: Timestamp, batch: i64) -> Result<u64>;
}

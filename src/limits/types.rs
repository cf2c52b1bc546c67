//! The facet's value types: what a check decides, what a status or an
//! export shows, what a reset or a sweep removed, and what a legacy import
//! brings in.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::Timestamp;

/// Who made a request, for the violation record. IP and user agent are
/// stored only as keyed hashes ([`Vault::keyed_hash`](crate::Vault::keyed_hash)).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    /// The client's IP address.
    pub ip: Option<&'a str>,
    /// The client's user agent.
    pub user_agent: Option<&'a str>,
}

impl<'a> ClientInfo<'a> {
    /// Nothing known about the client.
    pub fn none() -> Self {
        ClientInfo::default()
    }

    /// With the client's IP address.
    pub fn ip(mut self, ip: &'a str) -> Self {
        self.ip = Some(ip);
        self
    }

    /// With the client's user agent.
    pub fn user_agent(mut self, user_agent: &'a str) -> Self {
        self.user_agent = Some(user_agent);
        self
    }
}

/// A running penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// When it ends.
    pub until: Timestamp,
    /// How long it was set for (base × 2^(n−1), capped).
    pub duration: Duration,
}

/// What [`Limits::check`](super::Limits::check) decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether the request may go ahead (its cost has been taken).
    pub allowed: bool,
    /// The limit's name.
    pub limit: Arc<str>,
    /// Whole tokens left in the tightest window.
    pub remaining: u64,
    /// How long to wait before trying again (zero when allowed).
    pub retry_after: Duration,
    /// When every window is full again and no penalty runs.
    pub reset_at: Timestamp,
    /// Violations of this limit by this subject in the last hour.
    pub recent_violations: u32,
    /// The penalty running, if any.
    pub penalty: Option<Penalty>,
}

/// One window's state in [`LimitStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct WindowStatus {
    /// The window's length in seconds.
    pub period_secs: i64,
    /// Its capacity (tokens + burst).
    pub capacity: f64,
    /// Tokens available now.
    pub tokens: f64,
    /// When it is full again (RFC 3339).
    pub full_at: String,
}

/// A subject's state under one limit ([`Limits::status`](super::Limits::status)).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LimitStatus {
    /// The limit's name.
    pub limit: String,
    /// Whether it is checked in shared mode.
    pub shared: bool,
    /// Whether it is strict (written before `check` returns).
    pub strict: bool,
    /// Each window, in configured order.
    pub windows: Vec<WindowStatus>,
    /// Violations in the last hour.
    pub recent_violations: u32,
    /// When the running penalty ends (RFC 3339), if one runs.
    pub penalty_until: Option<String>,
}

/// A recorded violation, as a subject's export shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ViolationRecord {
    /// The limit it broke.
    pub limit: String,
    /// When.
    pub occurred_at: Timestamp,
    /// The cost asked for.
    pub cost: f64,
    /// The penalty it started, if any.
    pub penalty_until: Option<Timestamp>,
}

/// What [`Limits::reset`](super::Limits::reset) deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResetCounts {
    /// Bucket rows.
    pub buckets: u64,
    /// Violation rows.
    pub violations: u64,
}

/// What [`Limits::sweep`](super::Limits::sweep) purged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepCounts {
    /// Violations older than the retention.
    pub violations: u64,
    /// Buckets idle longer than the retention.
    pub buckets: u64,
    /// In-memory buckets dropped because they were full and flushed.
    pub evicted: u64,
}

/// A bucket from the seeds' old layout ([`Vault::import_legacy`](crate::Vault::import_legacy)): the
/// state of a limit's single window, `tokens` at `last_refill`.
pub(crate) struct ImportedBucket {
    pub(crate) limit: String,
    pub(crate) tokens: f64,
    pub(crate) last_refill: Timestamp,
}

/// A violation from the seeds' old layout.
pub(crate) struct ImportedViolation {
    pub(crate) limit: String,
    pub(crate) occurred_at: Timestamp,
    pub(crate) cost: f64,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
}

/// What [`Limits::import_subject`](super::Limits::import_subject) wrote.
pub(crate) struct SubjectImport {
    /// Bucket rows inserted.
    pub(crate) buckets: u64,
    /// Buckets the vault already had, kept as they were.
    pub(crate) kept: u64,
    /// Violations inserted.
    pub(crate) violations: u64,
}

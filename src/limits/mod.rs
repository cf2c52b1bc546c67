//! Rate limits: named token-bucket limits with several windows, violations,
//! escalating penalties, kept in the vault so that a restart hands out no
//! fresh tokens.
//!
//! # Two modes
//!
//! - **In memory** (default): each process keeps its buckets in a sharded
//!   map and writes them behind ([`LimitsState::flush`], one transaction per
//!   flush). On first use of a (subject, limit) the persisted rows are
//!   loaded, so spent tokens survive a restart. Limits marked *strict*
//!   (`auth_attempts` by default) are written before `check` returns. Two
//!   processes on one file each enforce the limit on their own (together up
//!   to N × the budget), and the last one to flush a bucket wins.
//! - **Shared**: each check is one atomic `INSERT … ON CONFLICT DO UPDATE …
//!   RETURNING` on the writer, alone in its transaction (SQLite takes the
//!   write lock before a write statement reads, as `BEGIN IMMEDIATE` would),
//!   so every process (and every [`Vault`](crate::Vault) handle) on the file shares one
//!   budget exactly. A refusal runs it again inside `BEGIN IMMEDIATE` and
//!   records the violation in the same transaction. On PostgreSQL the check
//!   is one `UPDATE` in autocommit that locks the subject's buckets
//!   (`FOR UPDATE`) and takes from every window or none, so every instance
//!   shares one budget exactly; a refusal records its violation after it.
//!
//! # Guarantees
//!
//! 1. A decision is a pure function of (bucket state, now) (`bucket.rs`,
//!    `verdict.rs`);
//!    time comes only from the vault's clock.
//! 2. A request that can never fit (cost above a window's capacity) is an
//!    [`Error::NeverFits`], not a refusal.
//! 3. The n-th violation of a limit within an hour sets a penalty of
//!    base × 2^(n−1) (base: the limit's shortest window), at most 64 × base
//!    and at most one hour; while it runs every check of that limit is
//!    refused (those refusals are not new violations).
//! 4. No lock is held across an `.await`.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Limits`] handle: checks, reset, sweep, violations,
//!   erase and legacy import;
//! - `status.rs`: a subject's status under every limit, and its part of a
//!   user's export;
//! - `config.rs`: [`LimitsConfig`] and its compiled form;
//! - `types.rs`: the values checks and reports return;
//! - `bucket.rs`, `verdict.rs`: the token-bucket math and what a check
//!   decides;
//! - `state.rs`: the in-memory buckets and write-behind;
//! - `backend.rs`: the storage contract; `sqlite.rs`, `postgres.rs`: every
//!   statement of each backend; `storage.rs`: the enum that picks one.

mod backend;
mod bucket;
#[cfg(feature = "postgres")]
mod coalesce;
mod config;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{SEALED, check_sealed, delete_subject as erase_subject_pg};
mod sqlite;
mod state;
mod status;
mod storage;
mod types;
mod verdict;

pub use config::{Limit, LimitsConfig, Window};
pub(crate) use state::LimitsState;
pub use types::{
    ClientInfo, Decision, LimitStatus, Penalty, ResetCounts, SweepCounts, ViolationRecord,
    WindowStatus,
};
pub(crate) use types::{ImportedBucket, ImportedViolation, SubjectImport};

use backend::{BucketRow, LimitsBackend, Shared, SharedCheck, ViolationRow};
use bucket::{Bucket, EPSILON};
use config::{Compiled, CompiledLimit};

use state::Entry;
use storage::{Backend, Kept};
use verdict::Verdict;

use crate::core::Core;
use crate::{Error, Result, Timestamp};

/// Rows deleted per transaction by [`Limits::sweep`].
const SWEEP_BATCH: i64 = 500;

/// The rate-limit facet of a vault: `vault.limits()`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// use statevault::{ClientInfo, Vault, VaultOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let vault = Vault::open(VaultOptions::new(dir.path().join("v.db"))).await?;
/// let client = ClientInfo::none().ip("203.0.113.7");
/// for _ in 0..5 {
///     assert!(vault.limits().check("alice", "auth_attempts", 1, &client).await?.allowed);
/// }
/// let refused = vault.limits().check("alice", "auth_attempts", 1, &client).await?;
/// assert!(!refused.allowed);
/// assert_eq!(refused.recent_violations, 1);
/// assert!(refused.retry_after.as_secs() > 0);
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    core: &'a Core,
    state: &'a LimitsState,
}

impl<'a> Limits<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a LimitsState) -> Self {
        Limits { core, state }
    }

    /// The windows of `limit`, as configured: what a service advertises
    /// to its clients (the `RateLimit-Policy` header). Errors:
    /// [`Error::UnknownLimit`].
    pub fn windows(&self, limit: &str) -> Result<&'a [Window]> {
        let config = &self.state.config;
        Ok(&config.limits[config.find(limit)?].configured)
    }
}

impl Limits<'_> {
    /// Checks (and, when allowed, takes) `cost` tokens of `limit` for
    /// `subject` at the vault clock's now. A refusal is a [`Decision`] with
    /// `allowed: false`, recorded as a violation with `client`'s IP and user
    /// agent as keyed hashes; it sets an escalating penalty.
    ///
    /// Errors: [`Error::UnknownLimit`], [`Error::NeverFits`] (cost above a
    /// window's capacity), [`Error::InvalidInput`] (`cost` 0, empty
    /// subject), and storage errors (a strict or shared limit writes before
    /// returning).
    pub async fn check(
        &self,
        subject: &str,
        limit: &str,
        cost: u32,
        client: &ClientInfo<'_>,
    ) -> Result<Decision> {
        if tracing::enabled!(tracing::Level::TRACE) {
            let span = tracing::trace_span!(
                "limits.check",
                outcome = tracing::field::Empty,
                limit = limit,
                cost = cost
            );
            let check = self.check_untraced(subject, limit, cost, client);
            return Box::pin(crate::trace::traced(span, check, |d| {
                if d.allowed { "allowed" } else { "refused" }
            }))
            .await;
        }
        self.check_untraced(subject, limit, cost, client).await
    }

    /// [`check`](Limits::check), without its span.
    async fn check_untraced(
        &self,
        subject: &str,
        limit: &str,
        cost: u32,
        client: &ClientInfo<'_>,
    ) -> Result<Decision> {
        let state = self.state;
        let idx = state.config.find(limit)?;
        let spec = &state.config.limits[idx];
        if cost == 0 {
            return Err(Error::invalid("cost", "must be at least 1"));
        }
        crate::ids::check_subject(subject)?;
        let cost_f = f64::from(cost);
        if cost_f > spec.capacity + EPSILON {
            return Err(Error::NeverFits {
                limit: spec.name.to_string(),
                cost,
                capacity: spec.capacity,
            });
        }
        let now = self.core.now();
        if spec.shared {
            return self.check_shared(spec, subject, now, cost_f, client).await;
        }
        self.catch_up(now)?;
        let verdict = state.decide(self.core, idx, subject, now, cost_f).await?;
        let violation = match &verdict {
            Verdict::Violation { penalty, .. } => {
                Some(self.violation_row(spec, subject, now, cost_f, penalty.until, client)?)
            }
            _ => None,
        };
        if spec.strict && !matches!(verdict, Verdict::Penalised { .. }) {
            state
                .write_strict(self.core, idx, subject, violation)
                .await?;
        } else if let Some(v) = violation {
            state.push_pending(v);
        }
        Ok(verdict::decision(spec, verdict, now))
    }

    fn violation_row(
        &self,
        spec: &CompiledLimit,
        subject: &str,
        now: Timestamp,
        cost: f64,
        penalty_until: Timestamp,
        client: &ClientInfo<'_>,
    ) -> Result<ViolationRow> {
        Ok(ViolationRow {
            subject: subject.to_owned(),
            limit: spec.name.clone(),
            occurred_at: now,
            cost,
            penalty_until,
            client_info: self.client_info(client)?,
        })
    }

    /// The `client_info` column: IP and user agent as keyed hashes.
    fn client_info(&self, client: &ClientInfo<'_>) -> Result<String> {
        let mut info = serde_json::Map::new();
        for (name, value) in [("ip", client.ip), ("user_agent", client.user_agent)] {
            if let Some(value) = value {
                let hash = self.core.keyed_hash(name, value.as_bytes())?;
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                info.insert(name.to_owned(), hex.into());
            }
        }
        Ok(serde_json::Value::Object(info).to_string())
    }

    /// Within an import transaction ([`Vault::import_legacy`](crate::Vault::import_legacy)): a subject's
    /// state from the seeds' old layout. Each legacy bucket is one limit's
    /// single window, so it becomes the state of the limit's shortest
    /// window (tokens clamped to its capacity); its other windows are left
    /// as they are. Buckets the vault already has are kept. Violations are
    /// inserted with the penalty this facet would have set for them
    /// (counted among the imported ones). Unknown limits are
    /// [`Error::UnknownLimit`]; negative or non-finite tokens or costs are
    /// [`Error::InvalidInput`].
    ///
    /// This process's memory is not updated: import before a service
    /// checks the subject's limits.
    pub(crate) async fn import_subject(
        &self,
        tx: &mut sqlx::SqliteConnection,
        subject: &str,
        buckets: &[ImportedBucket],
        violations: &[ImportedViolation],
    ) -> Result<SubjectImport> {
        crate::ids::check_subject(subject)?;
        let rows = imported_buckets(&self.state.config, subject, buckets)?;
        let inserted = sqlite::insert_buckets_if_absent(tx, &rows).await?;
        let violations = self.imported_violations(subject, violations)?;
        sqlite::insert_violations(tx, &violations).await?;
        Ok(SubjectImport {
            buckets: inserted,
            kept: rows.len() as u64 - inserted,
            violations: violations.len() as u64,
        })
    }

    /// Legacy violations as rows, oldest first, each with the penalty it
    /// would have set.
    fn imported_violations(
        &self,
        subject: &str,
        violations: &[ImportedViolation],
    ) -> Result<Vec<ViolationRow>> {
        let config = &self.state.config;
        let mut sorted: Vec<&ImportedViolation> = violations.iter().collect();
        sorted.sort_by_key(|v| v.occurred_at);
        let mut out = Vec::with_capacity(sorted.len());
        for (i, v) in sorted.iter().enumerate() {
            let spec = &config.limits[config.find(&v.limit)?];
            if !v.cost.is_finite() || v.cost <= 0.0 {
                return Err(Error::invalid(
                    "cost",
                    format!("{} is not a number > 0", v.cost),
                ));
            }
            let since = bucket::memory_start(v.occurred_at);
            let n = 1 + sorted[..i]
                .iter()
                .filter(|o| o.limit == v.limit && o.occurred_at > since)
                .count();
            let client = ClientInfo {
                ip: v.ip.as_deref(),
                user_agent: v.user_agent.as_deref(),
            };
            out.push(ViolationRow {
                subject: subject.to_owned(),
                limit: spec.name.clone(),
                occurred_at: v.occurred_at,
                cost: v.cost,
                penalty_until: verdict::penalty(spec, n, v.occurred_at).until,
                client_info: self.client_info(&client)?,
            });
        }
        Ok(out)
    }

    async fn check_shared(
        &self,
        spec: &CompiledLimit,
        subject: &str,
        now: Timestamp,
        cost: f64,
        client: &ClientInfo<'_>,
    ) -> Result<Decision> {
        let check = SharedCheck {
            subject,
            limit: &spec.name,
            windows: &spec.windows,
            now,
            since: bucket::memory_start(now),
            cost,
        };
        let found = self
            .backend()
            .shared_check(&check, |stored| {
                let verdict = Entry::from_stored(spec, stored, now).refusal(spec, now, cost);
                let violation = match &verdict {
                    Verdict::Violation { penalty, .. } => {
                        Some(self.violation_row(spec, subject, now, cost, penalty.until, client)?)
                    }
                    _ => None,
                };
                Ok((verdict, violation))
            })
            .await?;
        Ok(match found {
            Shared::Allowed(allowed) => verdict::shared_allowed(spec, allowed, now),
            Shared::Refused(verdict) => verdict::decision(spec, verdict, now),
        })
    }

    /// Deletes everything about `subject` (admin): its buckets under every
    /// limit, its violations and penalties, in the file and in this
    /// process's memory. Every other handle on the file forgets the subject
    /// on its next check (the change feed).
    #[tracing::instrument(name = "limits.reset", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn reset(&self, subject: &str) -> Result<ResetCounts> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                crate::ids::check_subject(subject)?;
                // No flush can run while the delete holds the writer, so nothing of
                // the subject's can be written back between forgetting it and the
                // commit.
                let (buckets, violations) = self
                    .backend()
                    .delete_subject(subject, || self.state.forget(subject))
                    .await?;
                self.state.forget(subject);
                Ok(ResetCounts {
                    buckets,
                    violations,
                })
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Every violation of `subject` in the file, oldest first (for export).
    /// Writes this process's buffered violations first.
    pub async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>> {
        crate::ids::check_subject(subject)?;
        self.state.flush(self.core).await?;
        self.backend().violations_of(subject).await
    }

    /// Within the whole-user erase transaction: deletes the subject's buckets
    /// and violations, and forgets what this process holds of them. Call
    /// [`Limits::forget`] again once the transaction committed.
    pub(crate) async fn erase_subject(
        &self,
        tx: &mut sqlx::SqliteConnection,
        subject: &str,
    ) -> Result<(u64, u64)> {
        self.state.forget(subject);
        sqlite::delete_subject(self.core, tx, subject).await
    }

    /// Drops from memory what other handles reset or erased since this one
    /// last looked.
    fn catch_up(&self, now: Timestamp) -> Result<()> {
        let (core, state) = (self.core, self.state);
        core.catch_up(&state.feed, now, |news| state.apply(core, news))
    }

    /// Drops what this process holds in memory about `subject`.
    pub(crate) fn forget(&self, subject: &str) {
        self.state.forget(subject);
    }

    /// Retention: deletes violations older than the configured retention
    /// (7 days by default) and buckets unused for longer than theirs (30
    /// days), at most 500 rows per transaction; drops from memory the
    /// entries that are flushed, full and without recent violations.
    #[tracing::instrument(name = "limits.sweep", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn sweep(&self) -> Result<SweepCounts> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let config = &self.state.config;
                let backend = self.backend();
                let now = self.core.now();
                let mut counts = SweepCounts::default();
                let before =
                    Timestamp::from_millis(now.as_millis() - config.violation_retention_ms);
                loop {
                    let n = backend.sweep_violations(before, SWEEP_BATCH).await?;
                    counts.violations += n;
                    if n < SWEEP_BATCH as u64 {
                        break;
                    }
                }
                let before =
                    Timestamp::from_millis(now.as_millis() - config.idle_bucket_retention_ms);
                loop {
                    let n = backend.sweep_buckets(before, SWEEP_BATCH).await?;
                    counts.buckets += n;
                    if n < SWEEP_BATCH as u64 {
                        break;
                    }
                }
                counts.evicted = self.state.evict_idle(now);
                Ok(counts)
            }
            .await,
            crate::trace::ok,
        )
    }

    /// The storage's side of the facet.
    fn backend(&self) -> Backend<'_> {
        self.state.backend(self.core)
    }
}

/// Legacy buckets as rows of each limit's shortest window.
fn imported_buckets(
    config: &Compiled,
    subject: &str,
    buckets: &[ImportedBucket],
) -> Result<Vec<BucketRow>> {
    let mut rows = Vec::with_capacity(buckets.len());
    for b in buckets {
        let spec = &config.limits[config.find(&b.limit)?];
        if !b.tokens.is_finite() || b.tokens < 0.0 {
            return Err(Error::invalid(
                "tokens",
                format!("{} is not a number ≥ 0", b.tokens),
            ));
        }
        let Some(window) = spec.windows.iter().min_by_key(|w| w.period_secs) else {
            continue;
        };
        rows.push(BucketRow {
            subject: subject.to_owned(),
            limit: spec.name.clone(),
            period_secs: window.period_secs,
            bucket: Bucket {
                tokens: b.tokens.min(window.capacity),
                last_refill: b.last_refill,
            },
        });
    }
    Ok(rows)
}

/// What [`Limits::status`] shows of one limit.
fn limit_status(limit: &CompiledLimit, entry: &Entry, now: Timestamp) -> LimitStatus {
    let windows = limit
        .windows
        .iter()
        .zip(&entry.buckets)
        .map(|(w, b)| {
            let full = bucket::summary(std::slice::from_ref(w), &[*b], now);
            let full_at = match full {
                bucket::Outcome::Allowed { full_at, .. } | bucket::Outcome::NotUntil(full_at) => {
                    full_at
                }
            };
            WindowStatus {
                period_secs: w.period_secs,
                capacity: w.capacity,
                tokens: w.refill(*b, now),
                full_at: full_at.to_rfc3339(),
            }
        })
        .collect();
    LimitStatus {
        limit: limit.name.to_string(),
        shared: limit.shared,
        strict: limit.strict,
        windows,
        recent_violations: u32::try_from(entry.recent.len()).unwrap_or(u32::MAX),
        penalty_until: entry
            .penalty
            .filter(|p| p.until > now)
            .map(|p| p.until.to_rfc3339()),
    }
}

/// Violations of every subject recorded after `since` (written ones; those
/// of non-strict limits still buffered are not counted), for the health
/// report.
pub(crate) async fn violations_since(core: &Core, since: Timestamp) -> Result<u64> {
    Backend::of(core, &Kept::default())
        .count_violations_since(since)
        .await
}

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
//!   so every process (and every [`Vault`] handle) on the file shares one
//!   budget exactly. A refusal runs it again inside `BEGIN IMMEDIATE` and
//!   records the violation in the same transaction.
//!
//! # Guarantees
//!
//! 1. A decision is a pure function of (bucket state, now) (`bucket.rs`);
//!    time comes only from the vault's clock.
//! 2. A request that can never fit (cost above a window's capacity) is an
//!    [`Error::NeverFits`], not a refusal.
//! 3. The n-th violation of a limit within an hour sets a penalty of
//!    base × 2^(n−1) (base: the limit's shortest window), at most 64 × base
//!    and at most one hour; while it runs every check of that limit is
//!    refused (those refusals are not new violations).
//! 4. No lock is held across an `.await`.

mod bucket;
mod config;
mod sql;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

pub use config::{Limit, LimitsConfig, Window};

use bucket::{Bucket, EPSILON, Outcome, PENALTY_MEMORY_MS};
use config::{Compiled, CompiledLimit};
use sql::{BucketRow, StoredBucket, StoredViolation, ViolationRow};

use crate::core::Core;
use crate::{Error, Result, Timestamp};

/// Shards of the in-memory map: enough that tasks on different subjects
/// rarely meet on one lock.
const SHARDS: usize = 32;
/// Rows deleted per transaction by [`Limits::sweep`].
const SWEEP_BATCH: i64 = 500;

/// Who made a request, for the violation record. IP and user agent are
/// stored only as keyed hashes ([`Vault::keyed_hash`]).
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

/// What [`Limits::check`] decided.
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

/// A subject's state under one limit ([`Limits::status`]).
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

/// What [`Limits::reset`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResetCounts {
    /// Bucket rows.
    pub buckets: u64,
    /// Violation rows.
    pub violations: u64,
}

/// What [`Limits::sweep`] purged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepCounts {
    /// Violations older than the retention.
    pub violations: u64,
    /// Buckets idle longer than the retention.
    pub buckets: u64,
    /// In-memory buckets dropped because they were full and flushed.
    pub evicted: u64,
}

/// A bucket from the seeds' old layout ([`Vault::import_legacy`]): the
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

/// What [`Limits::import_subject`] wrote.
pub(crate) struct SubjectImport {
    /// Bucket rows inserted.
    pub(crate) buckets: u64,
    /// Buckets the vault already had, kept as they were.
    pub(crate) kept: u64,
    /// Violations inserted.
    pub(crate) violations: u64,
}

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

/// The facet's state, one per vault.
pub(crate) struct LimitsState {
    config: Compiled,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Violations of non-strict limits not yet written.
    pending: Mutex<Vec<ViolationRow>>,
}

#[derive(Default)]
struct Shard {
    subjects: HashMap<String, Vec<Option<Entry>>>,
    /// (subject, limit index) of entries whose `dirty` is set.
    dirty: Vec<(String, usize)>,
}

/// One (subject, limit) in memory.
#[derive(Debug, Clone)]
struct Entry {
    /// One per window, in configured order.
    buckets: Vec<Bucket>,
    /// Violations in the last hour (pruned as it goes).
    recent: Vec<Timestamp>,
    penalty: Option<Penalty>,
    /// Changed since last written.
    dirty: bool,
}

/// What the in-memory decision says.
enum Verdict {
    Allowed {
        remaining: u64,
        full_at: Timestamp,
        recent: usize,
    },
    Penalised {
        penalty: Penalty,
        full_at: Timestamp,
        recent: usize,
    },
    Violation {
        penalty: Penalty,
        not_until: Timestamp,
        full_at: Timestamp,
        recent: usize,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for LimitsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsState")
            .field("limits", &self.config.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LimitsState {
    pub(crate) fn new(config: &LimitsConfig) -> Result<Self> {
        Ok(LimitsState {
            config: config.compile()?,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pending: Mutex::default(),
        })
    }

    fn shard(&self, subject: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(subject) as usize;
        &self.shards[h % SHARDS]
    }

    /// Writes dirty buckets and pending violations in one transaction. On
    /// failure nothing taken is lost: entries are marked dirty again and the
    /// violations are put back.
    pub(crate) async fn flush(&self, core: &Core) -> Result<()> {
        let idle =
            self.shards.iter().all(|s| lock(s).dirty.is_empty()) && lock(&self.pending).is_empty();
        if idle {
            return Ok(());
        }
        let mut tx = core.store().sqlx_transaction().await?;
        let mut keys = Vec::new();
        let mut rows = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let Shard { subjects, dirty } = &mut *shard;
            for (subject, idx) in dirty.drain(..) {
                if let Some(entry) = subjects
                    .get_mut(&subject)
                    .and_then(|limits| limits[idx].as_mut())
                    .filter(|e| e.dirty)
                {
                    entry.dirty = false;
                    rows.extend(self.rows(&subject, idx, entry));
                    keys.push((subject, idx));
                }
            }
        }
        let violations = std::mem::take(&mut *lock(&self.pending));
        let written = async {
            sql::upsert_buckets(&mut tx, &rows).await?;
            sql::insert_violations(&mut tx, &violations).await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if written.is_err() {
            for (subject, idx) in keys {
                self.mark_dirty(&subject, idx);
            }
            let mut pending = lock(&self.pending);
            let newer = std::mem::replace(&mut *pending, violations);
            pending.extend(newer);
        }
        written
    }

    fn rows(&self, subject: &str, idx: usize, entry: &Entry) -> Vec<BucketRow> {
        let limit = &self.config.limits[idx];
        limit
            .windows
            .iter()
            .zip(&entry.buckets)
            .map(|(w, b)| BucketRow {
                subject: subject.to_owned(),
                limit: limit.name.clone(),
                period_secs: w.period_secs,
                bucket: *b,
            })
            .collect()
    }

    fn mark_dirty(&self, subject: &str, idx: usize) {
        let mut shard = lock(self.shard(subject));
        let Shard { subjects, dirty } = &mut *shard;
        if let Some(entry) = subjects
            .get_mut(subject)
            .and_then(|limits| limits[idx].as_mut())
            .filter(|e| !e.dirty)
        {
            entry.dirty = true;
            dirty.push((subject.to_owned(), idx));
        }
    }

    /// The entry's rows as they are now (for strict writes).
    fn snapshot(&self, subject: &str, idx: usize) -> Vec<BucketRow> {
        let shard = lock(self.shard(subject));
        shard
            .subjects
            .get(subject)
            .and_then(|limits| limits[idx].as_ref())
            .map(|e| self.rows(subject, idx, e))
            .unwrap_or_default()
    }

    /// Builds an entry from the persisted rows.
    fn entry_from(
        limit: &CompiledLimit,
        stored: Vec<StoredBucket>,
        violations: Vec<StoredViolation>,
        now: Timestamp,
    ) -> Entry {
        let mut buckets: Vec<Bucket> = limit.windows.iter().map(|w| w.full(now)).collect();
        for (period, b) in stored {
            if let Some(i) = limit.window(period) {
                buckets[i] = Bucket {
                    tokens: b.tokens.clamp(0.0, limit.windows[i].capacity),
                    last_refill: b.last_refill,
                };
            }
        }
        let mut recent: Vec<Timestamp> = violations.iter().map(|v| v.0).collect();
        recent.sort();
        let penalty = violations
            .iter()
            .filter_map(|&(at, until)| until.map(|u| (at, u)))
            .max_by_key(|&(_, u)| u)
            .map(|(at, until)| Penalty {
                until,
                duration: until.duration_since(at),
            });
        Entry {
            buckets,
            recent,
            penalty,
            dirty: false,
        }
    }

    /// The in-memory decision (no `.await`: the shard lock is held through it).
    fn decide(
        &self,
        core: &Core,
        idx: usize,
        subject: &str,
        now: Timestamp,
        cost: f64,
    ) -> Result<Verdict> {
        let limit = &self.config.limits[idx];
        let shard_lock = self.shard(subject);
        let mut shard = lock(shard_lock);
        let loaded = shard
            .subjects
            .get(subject)
            .is_some_and(|limits| limits[idx].is_some());
        if !loaded {
            drop(shard);
            let since = Timestamp::from_millis(now.as_millis() - PENALTY_MEMORY_MS);
            let (stored, violations) = core.store().read_here(|c| {
                Ok((
                    sql::buckets(c, subject, &limit.name)?,
                    sql::violations(c, subject, &limit.name, since)?,
                ))
            })?;
            let fresh = Self::entry_from(limit, stored, violations, now);
            shard = lock(shard_lock);
            let n = self.config.limits.len();
            let slot = &mut shard
                .subjects
                .entry(subject.to_owned())
                .or_insert_with(|| vec![None; n])[idx];
            if slot.is_none() {
                *slot = Some(fresh);
            }
        }
        let Shard { subjects, dirty } = &mut *shard;
        let Some(entry) = subjects
            .get_mut(subject)
            .and_then(|limits| limits[idx].as_mut())
        else {
            return Err(Error::invalid("subject", "vanished while loading"));
        };
        let horizon = now.as_millis() - PENALTY_MEMORY_MS;
        entry.recent.retain(|t| t.as_millis() > horizon);
        let recent = entry.recent.len();
        let full_at = |e: &Entry| match bucket::summary(&limit.windows, &e.buckets, now) {
            Outcome::Allowed { full_at, .. } => full_at,
            Outcome::NotUntil(at) => at,
        };
        if let Some(penalty) = entry.penalty.filter(|p| p.until > now) {
            return Ok(Verdict::Penalised {
                penalty,
                full_at: full_at(entry),
                recent,
            });
        }
        match bucket::decide(&limit.windows, &mut entry.buckets, now, cost) {
            Outcome::Allowed { remaining, full_at } => {
                if !entry.dirty && !limit.strict {
                    entry.dirty = true;
                    dirty.push((subject.to_owned(), idx));
                }
                Ok(Verdict::Allowed {
                    remaining,
                    full_at,
                    recent,
                })
            }
            Outcome::NotUntil(not_until) => {
                entry.recent.push(now);
                let duration_ms = bucket::penalty_ms(limit.base_penalty_ms, entry.recent.len());
                let penalty = Penalty {
                    until: Timestamp::from_millis(now.as_millis().saturating_add(duration_ms)),
                    duration: Duration::from_millis(duration_ms.unsigned_abs()),
                };
                entry.penalty = Some(penalty);
                Ok(Verdict::Violation {
                    penalty,
                    not_until,
                    full_at: full_at(entry),
                    recent: entry.recent.len(),
                })
            }
        }
    }

    /// Forgets a subject in memory (buckets and pending violations).
    fn forget(&self, subject: &str) {
        lock(self.shard(subject)).subjects.remove(subject);
        lock(&self.pending).retain(|v| v.subject != subject);
    }
}

impl<'a> Limits<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a LimitsState) -> Self {
        Limits { core, state }
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
        let verdict = state.decide(self.core, idx, subject, now, cost_f)?;
        let violation = match &verdict {
            Verdict::Violation { penalty, .. } => {
                Some(self.violation_row(spec, subject, now, cost_f, penalty.until, client)?)
            }
            _ => None,
        };
        if spec.strict && !matches!(verdict, Verdict::Penalised { .. }) {
            self.write_strict(idx, subject, violation).await?;
        } else if let Some(v) = violation {
            lock(&state.pending).push(v);
        }
        Ok(decision(spec, verdict, now))
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

    /// Within an import transaction ([`Vault::import_legacy`]): a subject's
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
        let config = &self.state.config;
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
        let inserted = sql::insert_buckets_if_absent(tx, &rows).await?;
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
            let horizon = v.occurred_at.as_millis() - PENALTY_MEMORY_MS;
            let n = 1 + sorted[..i]
                .iter()
                .filter(|o| o.limit == v.limit && o.occurred_at.as_millis() > horizon)
                .count();
            let penalty = bucket::penalty_ms(spec.base_penalty_ms, n);
            let client = ClientInfo {
                ip: v.ip.as_deref(),
                user_agent: v.user_agent.as_deref(),
            };
            out.push(ViolationRow {
                subject: subject.to_owned(),
                limit: spec.name.clone(),
                occurred_at: v.occurred_at,
                cost: v.cost,
                penalty_until: Timestamp::from_millis(
                    v.occurred_at.as_millis().saturating_add(penalty),
                ),
                client_info: self.client_info(&client)?,
            });
        }
        sql::insert_violations(tx, &out).await?;
        Ok(SubjectImport {
            buckets: inserted,
            kept: rows.len() as u64 - inserted,
            violations: out.len() as u64,
        })
    }

    /// Writes a strict limit's entry (as it is once the writer is ours, so
    /// later states never lose to earlier ones) and its violation.
    async fn write_strict(
        &self,
        idx: usize,
        subject: &str,
        violation: Option<ViolationRow>,
    ) -> Result<()> {
        let state = self.state;
        let result = async {
            let mut tx = self.core.store().sqlx_transaction().await?;
            let rows = state.snapshot(subject, idx);
            sql::upsert_buckets(&mut tx, &rows).await?;
            if let Some(v) = &violation {
                sql::insert_violations(&mut tx, std::slice::from_ref(v)).await?;
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if result.is_err() {
            state.mark_dirty(subject, idx);
            lock(&state.pending).extend(violation);
        }
        result
    }

    async fn check_shared(
        &self,
        spec: &CompiledLimit,
        subject: &str,
        now: Timestamp,
        cost: f64,
        client: &ClientInfo<'_>,
    ) -> Result<Decision> {
        // One transaction on the hot writer, on this thread (no sqlx thread
        // hops): the check statement, and on a refusal the state it saw and
        // the violation, so that the decision and the record see one state.
        self.core
            .store()
            .write_here(|conn| {
                if let Some(allowed) = sql::shared_check(conn, spec, subject, now, cost)? {
                    return Ok(shared_allowed(spec, allowed, now));
                }
                let since = Timestamp::from_millis(now.as_millis() - PENALTY_MEMORY_MS);
                let stored = sql::buckets(conn, subject, &spec.name)?;
                let violations = sql::violations(conn, subject, &spec.name, since)?;
                let entry = LimitsState::entry_from(spec, stored, violations, now);
                let full_at = match bucket::summary(&spec.windows, &entry.buckets, now) {
                    Outcome::Allowed { full_at, .. } => full_at,
                    Outcome::NotUntil(at) => at,
                };
                let recent = entry.recent.len();
                let verdict = match entry.penalty.filter(|p| p.until > now) {
                    Some(penalty) => Verdict::Penalised {
                        penalty,
                        full_at,
                        recent,
                    },
                    None => {
                        let not_until = bucket::not_until(&spec.windows, &entry.buckets, now, cost)
                            .unwrap_or(now);
                        let duration_ms = bucket::penalty_ms(spec.base_penalty_ms, recent + 1);
                        let penalty = Penalty {
                            until: Timestamp::from_millis(
                                now.as_millis().saturating_add(duration_ms),
                            ),
                            duration: Duration::from_millis(duration_ms.unsigned_abs()),
                        };
                        let row =
                            self.violation_row(spec, subject, now, cost, penalty.until, client)?;
                        sql::insert_violation(conn, &row)?;
                        Verdict::Violation {
                            penalty,
                            not_until,
                            full_at,
                            recent: recent + 1,
                        }
                    }
                };
                Ok(decision(spec, verdict, now))
            })
            .await
    }

    /// The subject's state under every configured limit, at the vault
    /// clock's now: tokens per window, recent violations, running penalty.
    /// Reads this process's memory where it has the subject, else the file.
    pub async fn status(&self, subject: &str) -> Result<Vec<LimitStatus>> {
        crate::ids::check_subject(subject)?;
        let state = self.state;
        let now = self.core.now();
        let since = Timestamp::from_millis(now.as_millis() - PENALTY_MEMORY_MS);
        let mut out = Vec::with_capacity(state.config.limits.len());
        for (idx, limit) in state.config.limits.iter().enumerate() {
            let in_memory = if limit.shared {
                None
            } else {
                lock(state.shard(subject))
                    .subjects
                    .get(subject)
                    .and_then(|limits| limits[idx].clone())
            };
            let mut entry = match in_memory {
                Some(entry) => entry,
                None => {
                    let (stored, violations) = self.core.store().read_here(|c| {
                        Ok((
                            sql::buckets(c, subject, &limit.name)?,
                            sql::violations(c, subject, &limit.name, since)?,
                        ))
                    })?;
                    LimitsState::entry_from(limit, stored, violations, now)
                }
            };
            entry.recent.retain(|t| *t > since);
            let windows = limit
                .windows
                .iter()
                .zip(&entry.buckets)
                .map(|(w, b)| {
                    let tokens = w.refill(*b, now);
                    let full = bucket::summary(std::slice::from_ref(w), &[*b], now);
                    let full_at = match full {
                        Outcome::Allowed { full_at, .. } | Outcome::NotUntil(full_at) => full_at,
                    };
                    WindowStatus {
                        period_secs: w.period_secs,
                        capacity: w.capacity,
                        tokens,
                        full_at: full_at.to_rfc3339(),
                    }
                })
                .collect();
            out.push(LimitStatus {
                limit: limit.name.to_string(),
                shared: limit.shared,
                strict: limit.strict,
                windows,
                recent_violations: u32::try_from(entry.recent.len()).unwrap_or(u32::MAX),
                penalty_until: entry
                    .penalty
                    .filter(|p| p.until > now)
                    .map(|p| p.until.to_rfc3339()),
            });
        }
        Ok(out)
    }

    /// Deletes everything about `subject` (admin): its buckets under every
    /// limit, its violations and penalties, in the file and in this
    /// process's memory. Other processes in in-memory mode keep what they
    /// hold in memory until they restart.
    pub async fn reset(&self, subject: &str) -> Result<ResetCounts> {
        crate::ids::check_subject(subject)?;
        let mut tx = self.core.store().sqlx_transaction().await?;
        // No flush can run while this transaction holds the writer, so
        // nothing of the subject's can be written back between here and the commit.
        self.state.forget(subject);
        let (buckets, violations) = sql::delete_subject(&mut tx, subject).await?;
        tx.commit().await?;
        self.state.forget(subject);
        Ok(ResetCounts {
            buckets,
            violations,
        })
    }

    /// Every violation of `subject` in the file, oldest first (for export).
    /// Writes this process's buffered violations first.
    pub async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>> {
        crate::ids::check_subject(subject)?;
        self.state.flush(self.core).await?;
        self.core
            .store()
            .read_here(|conn| sql::all_violations(conn, subject))
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
        sql::delete_subject(tx, subject).await
    }

    /// Drops what this process holds in memory about `subject`.
    pub(crate) fn forget(&self, subject: &str) {
        self.state.forget(subject);
    }

    /// Retention: deletes violations older than the configured retention
    /// (7 days by default) and buckets unused for longer than theirs (30
    /// days), at most 500 rows per transaction; drops from memory the
    /// entries that are flushed, full and without recent violations.
    pub async fn sweep(&self) -> Result<SweepCounts> {
        let config = &self.state.config;
        let now = self.core.now();
        let mut counts = SweepCounts::default();
        let before = Timestamp::from_millis(now.as_millis() - config.violation_retention_ms);
        loop {
            let mut tx = self.core.store().sqlx_transaction().await?;
            let n = sql::sweep_violations(&mut tx, before, SWEEP_BATCH).await?;
            tx.commit().await?;
            counts.violations += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        let before = Timestamp::from_millis(now.as_millis() - config.idle_bucket_retention_ms);
        loop {
            let mut tx = self.core.store().sqlx_transaction().await?;
            let n = sql::sweep_buckets(&mut tx, before, SWEEP_BATCH).await?;
            tx.commit().await?;
            counts.buckets += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        let horizon = now.as_millis() - PENALTY_MEMORY_MS;
        for shard in self.state.shards.iter() {
            let mut shard = lock(shard);
            shard.subjects.retain(|_, limits| {
                for (idx, slot) in limits.iter_mut().enumerate() {
                    let spec = &config.limits[idx];
                    let idle = slot.as_ref().is_some_and(|e| {
                        !e.dirty
                            && e.recent.iter().all(|t| t.as_millis() <= horizon)
                            && e.penalty.is_none_or(|p| p.until <= now)
                            && spec
                                .windows
                                .iter()
                                .zip(&e.buckets)
                                .all(|(w, b)| w.refill(*b, now) >= w.capacity)
                    });
                    if idle {
                        *slot = None;
                        counts.evicted += 1;
                    }
                }
                limits.iter().any(Option::is_some)
            });
        }
        Ok(counts)
    }
}

/// The decision for a shared-mode check that was allowed, from the rows the
/// statement returned.
fn shared_allowed(
    spec: &CompiledLimit,
    (rows, recent): sql::SharedAllowed,
    now: Timestamp,
) -> Decision {
    let mut buckets: Vec<Bucket> = spec.windows.iter().map(|w| w.full(now)).collect();
    for (period, tokens) in rows {
        if let Some(i) = spec.window(period) {
            buckets[i].tokens = tokens;
        }
    }
    let (remaining, full_at) = match bucket::summary(&spec.windows, &buckets, now) {
        Outcome::Allowed { remaining, full_at } => (remaining, full_at),
        Outcome::NotUntil(at) => (0, at),
    };
    decision(
        spec,
        Verdict::Allowed {
            remaining,
            full_at,
            recent,
        },
        now,
    )
}

fn decision(spec: &CompiledLimit, verdict: Verdict, now: Timestamp) -> Decision {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match verdict {
        Verdict::Allowed {
            remaining,
            full_at,
            recent,
        } => Decision {
            allowed: true,
            limit: spec.name.clone(),
            remaining,
            retry_after: Duration::ZERO,
            reset_at: full_at,
            recent_violations: count(recent),
            penalty: None,
        },
        Verdict::Penalised {
            penalty,
            full_at,
            recent,
        } => Decision {
            allowed: false,
            limit: spec.name.clone(),
            remaining: 0,
            retry_after: penalty.until.duration_since(now),
            reset_at: full_at.max(penalty.until),
            recent_violations: count(recent),
            penalty: Some(penalty),
        },
        Verdict::Violation {
            penalty,
            not_until,
            full_at,
            recent,
        } => Decision {
            allowed: false,
            limit: spec.name.clone(),
            remaining: 0,
            retry_after: penalty.until.max(not_until).duration_since(now),
            reset_at: full_at.max(penalty.until),
            recent_violations: count(recent),
            penalty: Some(penalty),
        },
    }
}

/// Violations of every subject recorded after `since` (written ones; those
/// of non-strict limits still buffered are not counted), for the health
/// report.
pub(crate) fn violations_since(core: &Core, since: Timestamp) -> Result<u64> {
    core.store()
        .read_here(|conn| sql::count_violations_since(conn, since))
}

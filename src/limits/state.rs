//! What a process keeps in memory for in-memory mode: a sharded map of
//! (subject, limit) entries, which of them changed since they were written,
//! and the violations not yet written.
//!
//! No lock here is held across an `.await`: a decision runs under its
//! shard's lock and returns before anything is written.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use super::backend::{
    BucketRow, LimitsBackend, SUBJECT, Stored, ViolationRow, Writes, subject_digest,
};
use super::bucket::{self, Bucket, Outcome};
use super::config::{Compiled, CompiledLimit, LimitsConfig};
use super::sqlite::Statements;
use super::storage::{Backend, Kept};
use super::types::Penalty;
use super::verdict::{self, Verdict};
use crate::core::feed::{Cursor, Facet, News};
use crate::core::{Core, lock};
use crate::{Error, Result, Timestamp};

/// Shards of the in-memory map: enough that tasks on different subjects
/// rarely meet on one lock.
const SHARDS: usize = 32;

/// The facet's state, one per vault.
pub(crate) struct LimitsState {
    pub(super) config: Compiled,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Violations of non-strict limits not yet written.
    pending: Mutex<Vec<ViolationRow>>,
    kept: Kept,
    /// Where this handle stands in the change feed.
    pub(super) feed: Cursor,
}

#[derive(Default)]
struct Shard {
    subjects: HashMap<String, Vec<Option<Entry>>>,
    /// (subject, limit index) of entries whose `dirty` is set.
    dirty: Vec<(String, usize)>,
}

/// One (subject, limit) in memory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// One per window, in configured order.
    pub(super) buckets: Vec<Bucket>,
    /// Violations in the last hour (pruned as it goes).
    pub(super) recent: Vec<Timestamp>,
    pub(super) penalty: Option<Penalty>,
    /// Changed since last written.
    dirty: bool,
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
        let config = config.compile()?;
        let statements = Statements::new(config.limits.iter().map(|l| l.windows.len()));
        Ok(LimitsState {
            config,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pending: Mutex::default(),
            kept: Kept {
                statements,
                #[cfg(feature = "postgres")]
                coalescer: Default::default(),
            },
            feed: Cursor::new(Facet::Limits, std::time::Duration::ZERO),
        })
    }

    /// The storage's side of the facet.
    pub(super) fn backend<'a>(&'a self, core: &'a Core) -> Backend<'a> {
        Backend::of(core, &self.kept)
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
        let mut keys = Vec::new();
        let mut writes = Writes::default();
        let written = self
            .backend(core)
            .write(&mut writes, |writes| self.take_dirty(writes, &mut keys))
            .await;
        if written.is_err() {
            for (subject, idx) in keys {
                self.mark_dirty(&subject, idx);
            }
            let mut pending = lock(&self.pending);
            let newer = std::mem::replace(&mut *pending, writes.violations);
            pending.extend(newer);
        }
        written
    }

    /// Moves every dirty entry's rows and the pending violations into
    /// `writes`, marking the entries clean; `keys` names them.
    fn take_dirty(&self, writes: &mut Writes, keys: &mut Vec<(String, usize)>) {
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
                    writes.buckets.extend(self.rows(&subject, idx, entry));
                    keys.push((subject, idx));
                }
            }
        }
        writes.violations = std::mem::take(&mut *lock(&self.pending));
    }

    /// Writes a strict limit's entry (as it is once the writer is ours, so
    /// later states never lose to earlier ones) and its violation. On
    /// failure both are left for the next flush.
    pub(super) async fn write_strict(
        &self,
        core: &Core,
        idx: usize,
        subject: &str,
        violation: Option<ViolationRow>,
    ) -> Result<()> {
        let mut writes = Writes {
            buckets: Vec::new(),
            violations: violation.into_iter().collect(),
        };
        let result = self
            .backend(core)
            .write_now(&mut writes, |writes| {
                writes.buckets = self.snapshot(subject, idx);
            })
            .await;
        if result.is_err() {
            self.mark_dirty(subject, idx);
            lock(&self.pending).extend(writes.violations);
        }
        result
    }

    /// Buffers a violation for the next flush.
    pub(super) fn push_pending(&self, violation: ViolationRow) {
        lock(&self.pending).push(violation);
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

    /// What this process holds in memory of (`subject`, limit `idx`).
    pub(super) fn in_memory(&self, subject: &str, idx: usize) -> Option<Entry> {
        lock(self.shard(subject))
            .subjects
            .get(subject)
            .and_then(|limits| limits[idx].clone())
    }

    /// The in-memory decision (no `.await` once the shard is locked: the
    /// lock is held through it).
    pub(super) async fn decide(
        &self,
        core: &Core,
        idx: usize,
        subject: &str,
        now: Timestamp,
        cost: f64,
    ) -> Result<Verdict> {
        let limit = &self.config.limits[idx];
        let mut shard = self.loaded(core, idx, subject, now).await?;
        let Shard { subjects, dirty } = &mut *shard;
        let Some(entry) = subjects
            .get_mut(subject)
            .and_then(|limits| limits[idx].as_mut())
        else {
            return Err(Error::Internal {
                detail: "a rate-limit entry vanished while it was loaded".into(),
            });
        };
        let verdict = entry.decide(limit, now, cost);
        if matches!(verdict, Verdict::Allowed { .. }) && !entry.dirty && !limit.strict {
            entry.dirty = true;
            dirty.push((subject.to_owned(), idx));
        }
        Ok(verdict)
    }

    /// The shard holding `subject`, locked, with its entry for limit `idx`
    /// in memory: loaded from the file on first use (the lock is not held
    /// while reading; an entry another task loaded meanwhile wins).
    async fn loaded(
        &self,
        core: &Core,
        idx: usize,
        subject: &str,
        now: Timestamp,
    ) -> Result<MutexGuard<'_, Shard>> {
        let shard_lock = self.shard(subject);
        {
            let shard = lock(shard_lock);
            if shard
                .subjects
                .get(subject)
                .is_some_and(|limits| limits[idx].is_some())
            {
                return Ok(shard);
            }
        }
        let limit = &self.config.limits[idx];
        let stored = self
            .backend(core)
            .load(subject, &limit.name, bucket::memory_start(now))
            .await?;
        let fresh = Entry::from_stored(limit, stored, now);
        let mut shard = lock(shard_lock);
        let n = self.config.limits.len();
        let slot = &mut shard
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(|| vec![None; n])[idx];
        if slot.is_none() {
            *slot = Some(fresh);
        }
        Ok(shard)
    }

    /// Forgets a subject in memory (buckets and pending violations).
    pub(super) fn forget(&self, subject: &str) {
        lock(self.shard(subject)).subjects.remove(subject);
        lock(&self.pending).retain(|v| v.subject != subject);
    }

    /// Applies what another handle published: forgets the subject it reset
    /// or erased (each subject in memory is hashed to find it; resets are
    /// rare). Lost records (or a kind this build does not know) drop every
    /// entry already written, which the next check reloads from the file;
    /// entries not yet written stay, so no spent token is handed out again.
    pub(super) fn apply(&self, core: &Core, news: News<'_>) {
        if let News::Change(change) = news
            && change.kind == SUBJECT
            && let Ok(target) = <[u8; 8]>::try_from(&change.target[..])
        {
            let target = u64::from_be_bytes(target);
            // One that cannot be hashed (no salt yet) is dropped, as if it matched.
            let named = |subject: &str| subject_digest(core, subject).map_or(true, |d| d == target);
            let mut named_subjects = Vec::new();
            for shard in self.shards.iter() {
                let mut shard = lock(shard);
                shard.subjects.retain(|subject, _| {
                    let keep = !named(subject);
                    if !keep {
                        named_subjects.push(subject.clone());
                    }
                    keep
                });
            }
            lock(&self.pending).retain(|v| !named_subjects.contains(&v.subject));
            return;
        }
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.subjects.retain(|_, limits| {
                for slot in limits.iter_mut() {
                    if slot.as_ref().is_some_and(|e| !e.dirty) {
                        *slot = None;
                    }
                }
                limits.iter().any(Option::is_some)
            });
        }
    }

    /// Drops the entries that are written, full and without recent
    /// violations or a running penalty; how many went.
    pub(super) fn evict_idle(&self, now: Timestamp) -> u64 {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.subjects.retain(|_, limits| {
                for (idx, slot) in limits.iter_mut().enumerate() {
                    let limit = &self.config.limits[idx];
                    if slot.as_ref().is_some_and(|e| e.idle(limit, now)) {
                        *slot = None;
                        evicted += 1;
                    }
                }
                limits.iter().any(Option::is_some)
            });
        }
        evicted
    }
}

impl Entry {
    /// An entry from the stored rows: windows without a row are full,
    /// stored tokens are clamped to the window's capacity, and the penalty
    /// is the one that ends last.
    pub(super) fn from_stored(limit: &CompiledLimit, stored: Stored, now: Timestamp) -> Entry {
        let mut buckets: Vec<Bucket> = limit.windows.iter().map(|w| w.full(now)).collect();
        for (period, b) in stored.buckets {
            if let Some(i) = limit.window(period) {
                buckets[i] = Bucket {
                    tokens: b.tokens.clamp(0.0, limit.windows[i].capacity),
                    last_refill: b.last_refill,
                };
            }
        }
        let violations = stored.violations;
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

    /// Decides a check of `cost` at `now` in memory: a running penalty
    /// refuses it; else the buckets take the cost, or a refusal counts as a
    /// violation and sets the next penalty.
    fn decide(&mut self, limit: &CompiledLimit, now: Timestamp, cost: f64) -> Verdict {
        let since = bucket::memory_start(now);
        self.recent.retain(|t| *t > since);
        let recent = self.recent.len();
        if let Some(penalty) = self.penalty.filter(|p| p.until > now) {
            return Verdict::Penalised {
                penalty,
                full_at: verdict::full_at(limit, &self.buckets, now),
                recent,
            };
        }
        match bucket::decide(&limit.windows, &mut self.buckets, now, cost) {
            Outcome::Allowed { remaining, full_at } => Verdict::Allowed {
                remaining,
                full_at,
                recent,
            },
            Outcome::NotUntil(not_until) => {
                self.recent.push(now);
                let penalty = verdict::penalty(limit, self.recent.len(), now);
                self.penalty = Some(penalty);
                Verdict::Violation {
                    penalty,
                    not_until,
                    full_at: verdict::full_at(limit, &self.buckets, now),
                    recent: self.recent.len(),
                }
            }
        }
    }

    /// Shared mode's verdict on a check of `cost` the file refused, from
    /// the stored state: the running penalty, or a new violation.
    pub(super) fn refusal(&self, limit: &CompiledLimit, now: Timestamp, cost: f64) -> Verdict {
        let full_at = verdict::full_at(limit, &self.buckets, now);
        let recent = self.recent.len();
        match self.penalty.filter(|p| p.until > now) {
            Some(penalty) => Verdict::Penalised {
                penalty,
                full_at,
                recent,
            },
            None => Verdict::Violation {
                penalty: verdict::penalty(limit, recent + 1, now),
                not_until: bucket::not_until(&limit.windows, &self.buckets, now, cost)
                    .unwrap_or(now),
                full_at,
                recent: recent + 1,
            },
        }
    }

    /// Whether the entry can leave memory at `now` without losing anything:
    /// written, every window full, no recent violation, no running penalty.
    fn idle(&self, limit: &CompiledLimit, now: Timestamp) -> bool {
        let since = bucket::memory_start(now);
        !self.dirty
            && self.recent.iter().all(|t| *t <= since)
            && self.penalty.is_none_or(|p| p.until <= now)
            && limit
                .windows
                .iter()
                .zip(&self.buckets)
                .all(|(w, b)| w.refill(*b, now) >= w.capacity)
    }
}

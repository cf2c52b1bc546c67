//! From a verdict to the [`Decision`] a caller sees: how long to wait, when
//! every window is full again, which penalty runs. Pure functions of
//! (verdict, now), shared by both modes.

use std::time::Duration;

use super::backend::SharedAllowed;
use super::bucket::{self, Bucket, Outcome};
use super::config::CompiledLimit;
use super::types::{Decision, Penalty};
use crate::Timestamp;

/// What a check found, before it becomes a [`Decision`].
pub(crate) enum Verdict {
    /// The cost was taken.
    Allowed {
        remaining: u64,
        full_at: Timestamp,
        recent: usize,
    },
    /// A penalty runs: refused, and not a new violation.
    Penalised {
        penalty: Penalty,
        full_at: Timestamp,
        recent: usize,
    },
    /// Refused: a new violation, which set `penalty`.
    Violation {
        penalty: Penalty,
        not_until: Timestamp,
        full_at: Timestamp,
        recent: usize,
    },
}

/// The penalty the `n`-th recent violation of `limit` at `now` sets
/// (guarantee 3 of the module docs).
pub(crate) fn penalty(limit: &CompiledLimit, n: usize, now: Timestamp) -> Penalty {
    let duration_ms = bucket::penalty_ms(limit.base_penalty_ms, n);
    Penalty {
        until: Timestamp::from_millis(now.as_millis().saturating_add(duration_ms)),
        duration: Duration::from_millis(duration_ms.unsigned_abs()),
    }
}

/// When every window of `limit` is full again, for `buckets` at `now`.
pub(crate) fn full_at(limit: &CompiledLimit, buckets: &[Bucket], now: Timestamp) -> Timestamp {
    match bucket::summary(&limit.windows, buckets, now) {
        Outcome::Allowed { full_at, .. } | Outcome::NotUntil(full_at) => full_at,
    }
}

/// The decision for a shared-mode check that was allowed, from the rows the
/// statement returned.
pub(crate) fn shared_allowed(
    spec: &CompiledLimit,
    (rows, recent): SharedAllowed,
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

/// The decision a verdict gives.
pub(crate) fn decision(spec: &CompiledLimit, verdict: Verdict, now: Timestamp) -> Decision {
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

//! The token-bucket math: pure functions of (bucket state, now).
//!
//! Invariants:
//! 1. `0 ≤ tokens ≤ capacity` after every step (refill caps, spending clamps).
//! 2. Time going backwards refills nothing (elapsed time clamps to zero),
//!    and `last_refill` never moves back, so the same span is never
//!    refilled twice when the clock steps back and then forward again.
//! 3. The shared-mode SQL (see `sqlite.rs`) computes the same `refill` with the
//!    same f64 operations, so both modes agree to the last bit.

use crate::Timestamp;

/// Tolerance for comparing tokens with a cost: `refill` at the moment
/// `not_until` names must fit, whatever the rounding.
pub(crate) const EPSILON: f64 = 1e-9;

/// One window of a compiled limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowSpec {
    pub(crate) period_secs: i64,
    pub(crate) capacity: f64,
    pub(crate) rate_per_ms: f64,
}

/// The state of one window's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) last_refill: Timestamp,
}

impl WindowSpec {
    /// A full bucket.
    pub(crate) fn full(&self, now: Timestamp) -> Bucket {
        Bucket {
            tokens: self.capacity,
            last_refill: now,
        }
    }

    /// The tokens in `b` at `now`.
    pub(crate) fn refill(&self, b: Bucket, now: Timestamp) -> f64 {
        let elapsed = (now.as_millis() - b.last_refill.as_millis()).max(0) as f64;
        (b.tokens + elapsed * self.rate_per_ms).min(self.capacity)
    }

    /// Milliseconds until `tokens` grow to `need` (0 if they already fit).
    fn wait_ms(&self, tokens: f64, need: f64) -> i64 {
        if tokens + EPSILON >= need {
            0
        } else {
            ((need - tokens) / self.rate_per_ms).ceil() as i64
        }
    }
}

/// What a decision says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    /// The cost was taken from every window.
    Allowed {
        /// Whole tokens left in the tightest window.
        remaining: u64,
        /// When every window is full again.
        full_at: Timestamp,
    },
    /// Not before this time.
    NotUntil(Timestamp),
}

/// Decides whether `cost` fits every window at `now`; if it does, takes it
/// (refilling each bucket to `now` first), else leaves `state` as it was.
/// The caller has checked that `cost` fits an empty-but-full bucket.
pub(crate) fn decide(
    windows: &[WindowSpec],
    state: &mut [Bucket],
    now: Timestamp,
    cost: f64,
) -> Outcome {
    if let Some(at) = not_until(windows, state, now, cost) {
        return Outcome::NotUntil(at);
    }
    for (w, b) in windows.iter().zip(state.iter_mut()) {
        b.tokens = (w.refill(*b, now) - cost).max(0.0);
        b.last_refill = b.last_refill.max(now);
    }
    summary(windows, state, now)
}

/// When `cost` fits every window (`None` if it fits now).
pub(crate) fn not_until(
    windows: &[WindowSpec],
    state: &[Bucket],
    now: Timestamp,
    cost: f64,
) -> Option<Timestamp> {
    let wait = windows
        .iter()
        .zip(state)
        .map(|(w, b)| w.wait_ms(w.refill(*b, now), cost))
        .max()
        .unwrap_or(0);
    (wait > 0).then(|| Timestamp::from_millis(now.as_millis().saturating_add(wait)))
}

/// Remaining whole tokens and when every window is full again, for buckets
/// last refilled at `now`.
pub(crate) fn summary(windows: &[WindowSpec], state: &[Bucket], now: Timestamp) -> Outcome {
    let mut remaining = f64::INFINITY;
    let mut full_in = 0;
    for (w, b) in windows.iter().zip(state) {
        let tokens = w.refill(*b, now);
        remaining = remaining.min(tokens);
        full_in = full_in.max(w.wait_ms(tokens, w.capacity));
    }
    Outcome::Allowed {
        remaining: (remaining + EPSILON).floor().max(0.0) as u64,
        full_at: Timestamp::from_millis(now.as_millis().saturating_add(full_in)),
    }
}

/// The longest penalty: one hour.
pub(crate) const MAX_PENALTY_MS: i64 = 3_600_000;
/// Violations further back than this do not count.
pub(crate) const PENALTY_MEMORY_MS: i64 = 3_600_000;

/// The moment at `now` after which violations count.
pub(crate) fn memory_start(now: Timestamp) -> Timestamp {
    Timestamp::from_millis(now.as_millis() - PENALTY_MEMORY_MS)
}

/// The penalty for the `n`-th violation in the last hour (n ≥ 1):
/// `base × 2^(n−1)`, at most 64 × base and at most one hour.
pub(crate) fn penalty_ms(base_ms: i64, n: usize) -> i64 {
    let doublings = n.saturating_sub(1).min(6) as u32;
    base_ms
        .saturating_mul(1_i64 << doublings)
        .min(MAX_PENALTY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn refill_is_linear_capped_and_ignores_time_going_back() {
        let w = WindowSpec {
            period_secs: 60,
            capacity: 10.0,
            rate_per_ms: 10.0 / 60_000.0,
        };
        let b = Bucket {
            tokens: 0.0,
            last_refill: t(60_000),
        };
        assert_eq!(w.refill(b, t(0)), 0.0);
        assert!((w.refill(b, t(90_000)) - 5.0).abs() < 1e-12);
        assert_eq!(w.refill(b, t(1_000_000)), 10.0);
    }

    #[test]
    fn refused_state_is_untouched_and_not_until_fits() {
        let w = [WindowSpec {
            period_secs: 60,
            capacity: 3.0,
            rate_per_ms: 1.0 / 7_000.0,
        }];
        let mut s = [w[0].full(t(0))];
        for _ in 0..3 {
            assert!(matches!(
                decide(&w, &mut s, t(0), 1.0),
                Outcome::Allowed { .. }
            ));
        }
        let before = s;
        let Outcome::NotUntil(at) = decide(&w, &mut s, t(0), 2.0) else {
            panic!("should refuse")
        };
        assert_eq!(s, before);
        assert_eq!(at, t(14_000));
        assert!(matches!(
            decide(&w, &mut s, t(13_999), 2.0),
            Outcome::NotUntil(_)
        ));
        assert!(matches!(
            decide(&w, &mut s, at, 2.0),
            Outcome::Allowed { remaining: 0, .. }
        ));
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing_twice() {
        let w = [WindowSpec {
            period_secs: 10,
            capacity: 10.0,
            rate_per_ms: 1.0 / 1_000.0,
        }];
        let mut s = [w[0].full(t(100_000))];
        decide(&w, &mut s, t(100_000), 10.0);
        // The clock steps back 5 s: nothing refilled, and nothing to spend.
        assert!(matches!(
            decide(&w, &mut s, t(95_000), 1.0),
            Outcome::NotUntil(at) if at == t(96_000)
        ));
        assert_eq!(s[0].last_refill, t(100_000));
        // Back where it was and 2 s on: 2 tokens, not 7.
        let Outcome::Allowed { remaining, .. } = decide(&w, &mut s, t(102_000), 1.0) else {
            panic!("2 tokens are there")
        };
        assert_eq!(remaining, 1);
    }

    #[test]
    fn penalty_doubles_and_caps() {
        let got: Vec<i64> = (1..=8).map(|n| penalty_ms(30_000, n) / 1000).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 960, 1920, 1920]);
        assert_eq!(penalty_ms(1_000_000, 3), MAX_PENALTY_MS);
    }
}

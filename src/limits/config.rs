//! Limits as configured ([`LimitsConfig`], [`Limit`], [`Window`]) and as
//! compiled for the hot path ([`Compiled`]): validated once at open, so a
//! check never meets a NaN rate or an empty limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Result};

use super::bucket::WindowSpec;

/// One window of a limit: `tokens` per `period`, refilled continuously, with
/// `burst` extra tokens of capacity on top.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The window's length (whole seconds, at least 1 s).
    pub period: Duration,
    /// Tokens granted per `period` (the refill rate is `tokens / period`).
    pub tokens: f64,
    /// Extra capacity above `tokens` (0 = none).
    pub burst: f64,
}

impl Window {
    /// `tokens` per `period`, no burst.
    pub fn per(period: Duration, tokens: f64) -> Self {
        Window {
            period,
            tokens,
            burst: 0.0,
        }
    }

    /// The same window with `burst` extra tokens of capacity.
    pub fn burst(mut self, burst: f64) -> Self {
        self.burst = burst;
        self
    }

    /// The bucket's capacity: `tokens + burst`.
    pub fn capacity(&self) -> f64 {
        self.tokens + self.burst
    }
}

/// A named limit: one or more windows, all of which a request must fit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limit {
    windows: Vec<Window>,
    strict: bool,
    shared: Option<bool>,
}

impl Limit {
    /// A limit with no windows yet (add at least one with [`Limit::window`]).
    pub fn new() -> Self {
        Limit::default()
    }

    /// Adds a window.
    pub fn window(mut self, window: Window) -> Self {
        self.windows.push(window);
        self
    }

    /// Strict limits are written to the file before `check` returns, so not
    /// even a crash hands out fresh tokens (default `false`).
    pub fn strict(mut self, yes: bool) -> Self {
        self.strict = yes;
        self
    }

    /// Shared mode for this limit (each check is one atomic statement in the
    /// file, exact across processes), overriding [`LimitsConfig::shared`].
    pub fn shared(mut self, yes: bool) -> Self {
        self.shared = Some(yes);
        self
    }

    /// The windows, in the order given.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }
}

/// The rate-limit configuration of a vault ([`crate::VaultOptions::limits`]).
///
/// [`LimitsConfig::default`] has the seeds' limits: `api_calls` (100/min
/// with a burst of 20, 1000/h), `search_queries` (20/min burst 5, 200/h),
/// `playlist_ops` (10/min burst 3, 100/h) and `auth_attempts` (5 per 15 min,
/// no burst, strict); all in memory (not shared); violations kept 7 days,
/// buckets idle 30 days.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    limits: BTreeMap<String, Limit>,
    shared: bool,
    violation_retention: Duration,
    idle_bucket_retention: Duration,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

impl Default for LimitsConfig {
    fn default() -> Self {
        let per_min_hour = |min: f64, burst: f64, hour: f64| {
            Limit::new()
                .window(Window::per(MINUTE, min).burst(burst))
                .window(Window::per(HOUR, hour))
        };
        LimitsConfig::empty()
            .limit("api_calls", per_min_hour(100.0, 20.0, 1000.0))
            .limit("search_queries", per_min_hour(20.0, 5.0, 200.0))
            .limit("playlist_ops", per_min_hour(10.0, 3.0, 100.0))
            .limit(
                "auth_attempts",
                Limit::new()
                    .window(Window::per(15 * MINUTE, 5.0))
                    .strict(true),
            )
    }
}

impl LimitsConfig {
    /// No limits at all (add them with [`LimitsConfig::limit`]).
    pub fn empty() -> Self {
        LimitsConfig {
            limits: BTreeMap::new(),
            shared: false,
            violation_retention: 7 * DAY,
            idle_bucket_retention: 30 * DAY,
        }
    }

    /// Adds (or replaces) the limit `name`.
    pub fn limit(mut self, name: impl Into<String>, limit: Limit) -> Self {
        self.limits.insert(name.into(), limit);
        self
    }

    /// Shared mode for every limit that does not say otherwise (default
    /// `false`: buckets in memory, written behind).
    pub fn shared(mut self, yes: bool) -> Self {
        self.shared = yes;
        self
    }

    /// How long violations are kept (default 7 days).
    pub fn violation_retention(mut self, keep: Duration) -> Self {
        self.violation_retention = keep;
        self
    }

    /// How long an unused bucket is kept (default 30 days).
    pub fn idle_bucket_retention(mut self, keep: Duration) -> Self {
        self.idle_bucket_retention = keep;
        self
    }

    /// The limits, by name.
    pub fn limits(&self) -> &BTreeMap<String, Limit> {
        &self.limits
    }

    /// Validates and compiles the configuration.
    pub(crate) fn compile(&self) -> Result<Compiled> {
        let mut limits = Vec::with_capacity(self.limits.len());
        let mut by_name = HashMap::with_capacity(self.limits.len());
        for (name, limit) in &self.limits {
            by_name.insert(name.clone(), limits.len());
            limits.push(compile_limit(name, limit, self.shared)?);
        }
        let retention = |d: Duration, what| {
            i64::try_from(d.as_millis())
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| Error::invalid(what, format!("{d:?} is not in 1 ms..=i64::MAX ms")))
        };
        Ok(Compiled {
            limits,
            by_name,
            violation_retention_ms: retention(self.violation_retention, "violation_retention")?,
            idle_bucket_retention_ms: retention(
                self.idle_bucket_retention,
                "idle_bucket_retention",
            )?,
        })
    }
}

/// Validates and compiles the limit `name`; `shared` is the configuration's
/// default mode.
fn compile_limit(name: &str, limit: &Limit, shared: bool) -> Result<CompiledLimit> {
    let bad = |field: &'static str, reason: String| Error::InvalidLimit {
        limit: name.to_owned(),
        field,
        reason,
    };
    if name.is_empty() {
        return Err(bad("name", "empty".into()));
    }
    if limit.windows.is_empty() {
        return Err(bad("windows", "a limit needs at least one window".into()));
    }
    let mut windows: Vec<WindowSpec> = Vec::with_capacity(limit.windows.len());
    for w in &limit.windows {
        windows.push(compile_window(w, &windows, &bad)?);
    }
    let capacity = windows
        .iter()
        .map(|w| w.capacity)
        .fold(f64::INFINITY, f64::min);
    let base_secs = windows.iter().map(|w| w.period_secs).min().unwrap_or(1);
    Ok(CompiledLimit {
        name: Arc::from(name),
        strict: limit.strict,
        shared: limit.shared.unwrap_or(shared),
        capacity,
        base_penalty_ms: base_secs.saturating_mul(1000),
        windows,
        configured: limit.windows.clone(),
    })
}

/// Validates one window, to follow the limit's `earlier` ones; `bad` makes
/// the error.
fn compile_window(
    w: &Window,
    earlier: &[WindowSpec],
    bad: &impl Fn(&'static str, String) -> Error,
) -> Result<WindowSpec> {
    let secs = w.period.as_secs();
    if secs == 0 || w.period.subsec_nanos() != 0 {
        return Err(bad(
            "period",
            format!("{:?} is not a whole number of seconds ≥ 1", w.period),
        ));
    }
    if !w.tokens.is_finite() || w.tokens <= 0.0 {
        return Err(bad(
            "tokens",
            format!("{} is not a positive number", w.tokens),
        ));
    }
    if !w.burst.is_finite() || w.burst < 0.0 {
        return Err(bad("burst", format!("{} is not a number ≥ 0", w.burst)));
    }
    let period_secs =
        i64::try_from(secs).map_err(|_| bad("period", format!("{secs} s is too long")))?;
    if earlier.iter().any(|o| o.period_secs == period_secs) {
        return Err(bad("period", format!("two windows of {secs} s")));
    }
    let rate_per_ms = w.tokens / (secs as f64 * 1000.0);
    if !rate_per_ms.is_normal() {
        return Err(bad(
            "tokens",
            format!("{} per {secs} s underflows", w.tokens),
        ));
    }
    Ok(WindowSpec {
        period_secs,
        capacity: w.capacity(),
        rate_per_ms,
    })
}

/// A validated limit, ready for the hot path.
#[derive(Debug)]
pub(crate) struct CompiledLimit {
    pub(crate) name: Arc<str>,
    pub(crate) windows: Vec<WindowSpec>,
    /// The windows as configured, for callers that advertise the limit.
    pub(crate) configured: Vec<Window>,
    pub(crate) strict: bool,
    pub(crate) shared: bool,
    /// The smallest window capacity: a cost above it can never fit.
    pub(crate) capacity: f64,
    /// The penalty base: the shortest window, in ms.
    pub(crate) base_penalty_ms: i64,
}

impl CompiledLimit {
    pub(crate) fn window(&self, period_secs: i64) -> Option<usize> {
        self.windows
            .iter()
            .position(|w| w.period_secs == period_secs)
    }
}

/// A validated configuration.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) limits: Vec<CompiledLimit>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) violation_retention_ms: i64,
    pub(crate) idle_bucket_retention_ms: i64,
}

impl Compiled {
    pub(crate) fn find(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownLimit {
                name: name.to_owned(),
            })
    }
}

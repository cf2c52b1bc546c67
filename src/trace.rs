//! Tracing: every facet operation runs in a span named `<facet>.<operation>`
//! (`sessions.validate`, `cache.get`, `vault.flush` …) at `debug`, or at
//! `trace` for the hot reads (a session validation, a cache get, a limit
//! check), with an `outcome` field (`Valid`, `Revoked`, `hit`, `miss`,
//! `allowed`, `refused`, `ok`, `error` …). A subscriber that records span
//! timings gives each span its duration (`FmtSpan::CLOSE` prints
//! `time.busy` and `time.idle`).
//!
//! Spans name what the audit log would show (a user id, a session id, a
//! cache key, a limit's name) and never a token, a key, a value, a
//! preference or a rate-limit subject (often an IP address).
//!
//! With the level disabled, a span costs its callsite's interest check and
//! [`done`] one more level check: nothing is formatted or allocated.

use tracing::{Instrument, Level, Span};

/// Records on the current span the outcome of `result`: `ok(value)`, or
/// `error`. Returns `result`.
pub(crate) fn done<T, E>(
    level: Level,
    result: Result<T, E>,
    ok: impl FnOnce(&T) -> &'static str,
) -> Result<T, E> {
    if tracing::level_enabled!(level) {
        let outcome = match &result {
            Ok(value) => ok(value),
            Err(_) => "error",
        };
        Span::current().record("outcome", outcome);
    }
    result
}

/// A hot read's slow branch, taken only when its `trace` span is enabled:
/// runs `op` in `span` and records its outcome there. Callers box it, so
/// that with the level disabled the read pays one level check and keeps its
/// own small future: `#[instrument]` on `Cache::get` made an L1 hit take
/// twice as long.
pub(crate) async fn traced<T, E>(
    span: Span,
    op: impl Future<Output = Result<T, E>>,
    ok: impl FnOnce(&T) -> &'static str,
) -> Result<T, E> {
    let result = op.instrument(span.clone()).await;
    span.record(
        "outcome",
        match &result {
            Ok(value) => ok(value),
            Err(_) => "error",
        },
    );
    result
}

/// The outcome of an operation that returns nothing to tell.
pub(crate) fn ok<T>(_: &T) -> &'static str {
    "ok"
}

//! `ratelimit_check` and `ratelimit_check_shared`: the rate-limit hot paths,
//! each beside its physical limit measured in the same run.
//!
//! - in memory: `vault.limits().check` (sharded map, written behind) beside
//!   a plain `HashMap` token bucket on one thread, same clock, same subjects;
//! - shared: one atomic upsert per check in a `BEGIN IMMEDIATE` transaction
//!   on the vault's writer, beside rusqlite doing `BEGIN IMMEDIATE; INSERT …
//!   ON CONFLICT DO UPDATE … RETURNING; COMMIT` per check on the same
//!   bundled SQLCipher, same file, same key.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use statevault::{
    ClientInfo, Clock, Error, Limit, LimitsConfig, Result, SystemClock, Vault, Window,
};

const SUBJECTS: usize = 1000;
/// Tokens per hour: enough that the bench never runs out (every check is the
/// allowed path, the common one).
pub(crate) const PLENTY: f64 = 1e12;

pub(crate) fn config(shared: bool) -> LimitsConfig {
    LimitsConfig::empty().limit(
        "bench",
        Limit::new()
            .window(Window::per(Duration::from_secs(3600), PLENTY))
            .shared(shared),
    )
}

fn subjects() -> Vec<String> {
    (0..SUBJECTS).map(|i| format!("user-{i}")).collect()
}

fn duration(quick: bool) -> Duration {
    if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(3)
    }
}

/// In-memory `check` beside a plain HashMap token bucket.
pub async fn ratelimit_check(dir: &Path, quick: bool) -> Result<Value> {
    let vault =
        Vault::open(crate::harness::options(&dir.join("limits.db")).limits(config(false))).await?;
    let subjects = subjects();
    let limits = vault.limits();
    let client = ClientInfo::none();
    let run_for = duration(quick);
    // Warm: load every subject once.
    for s in &subjects {
        limits.check(s, "bench", 1, &client).await?;
    }
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < run_for {
        for s in subjects.iter().take(256) {
            if !limits.check(s, "bench", 1, &client).await?.allowed {
                return Err(Error::InvalidInput {
                    what: "bench",
                    reason: "a check was refused".into(),
                });
            }
        }
        ops += 256;
    }
    let ours = ops as f64 / started.elapsed().as_secs_f64();
    vault.close().await?;

    let clock = SystemClock;
    let rate_per_ms = PLENTY / 3_600_000.0;
    let mut buckets: HashMap<String, (f64, i64)> = subjects
        .iter()
        .map(|s| (s.clone(), (PLENTY, clock.now().as_millis())))
        .collect();
    let started = Instant::now();
    let mut ops = 0u64;
    let mut allowed = 0u64;
    while started.elapsed() < run_for {
        for s in subjects.iter().take(256) {
            let now = clock.now().as_millis();
            let Some((tokens, last)) = buckets.get_mut(s.as_str()) else {
                continue;
            };
            let refilled = (*tokens + (now - *last).max(0) as f64 * rate_per_ms).min(PLENTY);
            *last = now;
            if refilled >= 1.0 {
                *tokens = refilled - 1.0;
                allowed += 1;
            } else {
                *tokens = refilled;
            }
        }
        ops += 256;
    }
    let base = ops as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(allowed);
    Ok(Value::Object(crate::harness::workload(
        ours,
        "std HashMap<String, (tokens, last_ms)> token bucket, one thread, same clock",
        base,
    )))
}

/// Shared-mode `check` beside rusqlite's upsert-returning per check.
pub async fn ratelimit_check_shared(dir: &Path, quick: bool) -> Result<Value> {
    let path = dir.join("limits-shared.db");
    let vault = Vault::open(crate::harness::options(&path).limits(config(true))).await?;
    let subjects = subjects();
    let limits = vault.limits();
    let client = ClientInfo::none();
    let run_for = duration(quick);
    let started = Instant::now();
    let mut ops = 0u64;
    'outer: loop {
        for s in subjects.iter().take(64) {
            if !limits.check(s, "bench", 1, &client).await?.allowed {
                return Err(Error::InvalidInput {
                    what: "bench",
                    reason: "a check was refused".into(),
                });
            }
            ops += 1;
            if started.elapsed() >= run_for {
                break 'outer;
            }
        }
    }
    let ours = ops as f64 / started.elapsed().as_secs_f64();
    vault.close().await?;
    let base = rusqlite_upserts(&path, &subjects, run_for)?;
    Ok(Value::Object(crate::harness::workload(
        ours,
        "rusqlite BEGIN IMMEDIATE; INSERT … ON CONFLICT DO UPDATE … RETURNING; COMMIT per check, same file and key",
        base,
    )))
}

fn rusqlite_upserts(path: &Path, subjects: &[String], run_for: Duration) -> Result<f64> {
    let conn = crate::harness::raw_connection(path)?;
    let started = Instant::now();
    let mut ops = 0u64;
    'outer: loop {
        for s in subjects.iter().take(64) {
            std::hint::black_box(shared_upsert(&conn, s)?);
            ops += 1;
            if started.elapsed() >= run_for {
                break 'outer;
            }
        }
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// A shared-mode check done directly: `BEGIN IMMEDIATE; INSERT … ON
/// CONFLICT DO UPDATE … RETURNING; COMMIT`, the bucket refilled from its
/// row by the clock. Returns the tokens left.
pub(crate) fn shared_upsert(conn: &rusqlite::Connection, subject: &str) -> Result<f64> {
    let rate_per_ms = PLENTY / 3_600_000.0;
    let sql = "INSERT INTO token_buckets
                 (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
               VALUES (?1, 'baseline', 3600, ?2 - 1, ?3, ?3)
               ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
                 tokens = min(?2, tokens + max(0, ?4 - CAST(round(unixepoch(last_refill_at, 'subsec') * 1000) AS INTEGER)) * ?5) - 1,
                 last_refill_at = excluded.last_refill_at,
                 updated_at = excluded.updated_at
               RETURNING tokens";
    let now = SystemClock.now();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let tokens = conn
        .prepare_cached(sql)?
        .query_row((subject, PLENTY, now, now.as_millis(), rate_per_ms), |r| {
            r.get(0)
        });
    match tokens {
        Ok(tokens) => {
            conn.execute_batch("COMMIT")?;
            Ok(tokens)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e.into())
        }
    }
}

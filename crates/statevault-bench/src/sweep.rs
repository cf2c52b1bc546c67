//! `sweep_expired`: deleting expired sessions in batches of 500 rows per
//! transaction, beside rusqlite deleting the same rows with the same batch
//! size, on a copy of the same file, in the same run. Meanwhile a task
//! validates live sessions from the file (no memory), and the workload
//! reports that validation's p50, p99 and worst latency during the sweep.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use statevault::{
    FakeClock, NewSession, Result, SessionConfig, Timestamp, Validation, Vault, default_key_file,
};

use crate::harness::{per_sec, raw_connection, workload};

const BATCH: i64 = 500;

/// Live sessions the concurrent validation cycles through.
const LIVE: usize = 1_000;

/// `rows` expired sessions (default 200 000, 20 000 with `quick`).
pub async fn sweep_expired(dir: &Path, quick: bool, rows: Option<u64>) -> Result<Value> {
    let rows = rows.map_or(if quick { 20_000 } else { 200_000 }, |n| {
        i64::try_from(n).unwrap_or(i64::MAX)
    });
    let ours_path = dir.join("sweep_expired.db");
    let theirs_path = dir.join("sweep_expired_rusqlite.db");
    let clock = FakeClock::new(Timestamp::from_millis(1_767_225_600_000));
    let vault = Vault::open(
        crate::harness::options(&ours_path)
            .clock(clock.clone())
            .sweep_interval(None),
    )
    .await?;
    vault.close().await?;
    fill(&ours_path, rows)?;
    copy(&ours_path, &theirs_path)?;

    // 31 days later every row is past the 30-day retention.
    clock.advance(Duration::from_secs(31 * 24 * 3600));
    let mut sessions = SessionConfig::default();
    // Every validation reads the file, as a cold or another process's would.
    sessions.memory_ttl = Duration::ZERO;
    let vault = Vault::open(
        crate::harness::options(&ours_path)
            .clock(clock.clone())
            .sessions(sessions)
            .sweep_interval(None),
    )
    .await?;
    let validating = Validating::start(&vault).await?;
    let started = Instant::now();
    let removed = vault.sessions().sweep(BATCH as usize).await?;
    let took = started.elapsed();
    let latencies = validating.stop().await?;
    vault.close().await?;

    let conn = raw_connection(&theirs_path)?;
    let cutoff = "2026-01-02T00:00:00.000Z";
    let started = Instant::now();
    let mut deleted = 0;
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let n = conn.execute(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE last_seen_at < ?1 LIMIT ?2)",
            rusqlite::params![cutoff, BATCH],
        )?;
        conn.execute_batch("COMMIT")?;
        deleted += n as u64;
        if (n as i64) < BATCH {
            break;
        }
    }
    let limit = per_sec(deleted, started.elapsed());
    let mut m = workload(
        per_sec(removed, took),
        "rusqlite DELETE … LIMIT 500 per transaction, same rows",
        limit,
    );
    m.insert("rows".into(), removed.into());
    m.insert("seconds".into(), took.as_secs_f64().into());
    m.insert("batch".into(), BATCH.into());
    m.insert("validations".into(), latencies.len().into());
    for (name, q) in [("validate_p50_ms", 0.5), ("validate_p99_ms", 0.99)] {
        m.insert(name.into(), quantile_ms(&latencies, q).into());
    }
    m.insert(
        "validate_max_ms".into(),
        quantile_ms(&latencies, 1.0).into(),
    );
    Ok(Value::Object(m))
}

/// A task validating live sessions, one after another, until stopped.
struct Validating {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<Duration>>>,
}

impl Validating {
    /// Creates [`LIVE`] sessions and starts validating them in turn.
    async fn start(vault: &Vault) -> Result<Validating> {
        let mut tokens = Vec::with_capacity(LIVE);
        for i in 0..LIVE {
            let issued = vault
                .sessions()
                .create(NewSession::new(format!("live-{i}")))
                .await?;
            tokens.push(issued.token);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (vault, stopped) = (vault.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            for token in tokens.iter().cycle() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let validation = vault.sessions().validate(token.expose(), None).await?;
                latencies.push(started.elapsed());
                assert!(matches!(validation, Validation::Valid(_)));
                // About a request every 200 µs: a busy service, not a spin.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Ok(latencies)
        });
        Ok(Validating { stop, task })
    }

    /// Stops the task; returns its latencies, sorted.
    async fn stop(self) -> Result<Vec<Duration>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.task.await.expect("the validating task panicked")?;
        latencies.sort_unstable();
        Ok(latencies)
    }
}

/// The `q` quantile of sorted `latencies`, in milliseconds.
fn quantile_ms(latencies: &[Duration], q: f64) -> f64 {
    let Some(last) = latencies.len().checked_sub(1) else {
        return 0.0;
    };
    let at = (last as f64 * q).round() as usize;
    latencies[at.min(last)].as_secs_f64() * 1e3
}

/// `rows` sessions made 50 ms apart from the fake clock's start, and last
/// seen then, inserted directly in one multi-row `INSERT`. Their token keys
/// are shaped as the vault makes them: the issue time, then 26 bytes as
/// random as a SHA-256's.
fn fill(path: &Path, rows: i64) -> Result<()> {
    let conn = raw_connection(path)?;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1),
         t(i, ms, at) AS (
             SELECT i, 1767225600000 + i * 50,
                 strftime('%Y-%m-%dT%H:%M:%fZ', 1767225600 + i * 0.05, 'unixepoch')
             FROM n)
         INSERT INTO sessions (id, token_hash, csrf_hash, user_id, created_at, last_seen_at,
             idle_timeout_secs, expires_at, rotation_due_at)
         SELECT printf('s-%09d', i), unhex(printf('%012x', ms) || hex(randomblob(26))),
             randomblob(32), printf('s-%09d', i), at, at, 43200,
             '2026-01-08T00:00:00.000Z', '2026-01-02T00:00:00.000Z'
         FROM t",
        [rows],
    )?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    conn.close().map_err(|(_, e)| statevault::Error::from(e))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| statevault::Error::Io { path, source }
    };
    std::fs::copy(from, to).map_err(io(to))?;
    let key_file = default_key_file(from);
    if key_file.exists() {
        std::fs::copy(key_file, default_key_file(to)).map_err(io(to))?;
    }
    Ok(())
}

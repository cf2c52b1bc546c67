//! `sweep_expired`: deleting expired sessions in batches of 500 rows per
//! transaction, beside rusqlite deleting the same rows with the same batch
//! size, on a copy of the same file, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use statevault::{FakeClock, Result, SessionConfig, Timestamp, Vault, default_key_file};

use crate::harness::{per_sec, raw_connection, workload};

const BATCH: i64 = 500;

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
    let vault = Vault::open(
        crate::harness::options(&ours_path)
            .clock(clock.clone())
            .sessions(SessionConfig::default())
            .sweep_interval(None),
    )
    .await?;
    let started = Instant::now();
    let removed = vault.sessions().sweep(BATCH as usize).await?;
    let ours = per_sec(removed, started.elapsed());
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
        ours,
        "rusqlite DELETE … LIMIT 500 per transaction, same rows",
        limit,
    );
    m.insert("rows".into(), removed.into());
    m.insert("seconds".into(), (removed as f64 / ours).into());
    m.insert("batch".into(), BATCH.into());
    Ok(Value::Object(m))
}

/// `rows` sessions last seen at the fake clock's start, inserted directly.
fn fill(path: &Path, rows: i64) -> Result<()> {
    let mut conn = raw_connection(path)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, created_at, last_seen_at, idle_timeout_secs,
                 expires_at, rotation_due_at)
             VALUES (?1, ?2, ?2, ?1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 43200,
                 '2026-01-08T00:00:00.000Z', '2026-01-02T00:00:00.000Z')",
        )?;
        for i in 0..rows {
            // Token hashes are uniformly random, as real ones are: their
            // unique index is the costly one to delete from.
            let hash = Sha256::digest(i.to_be_bytes());
            stmt.execute(rusqlite::params![format!("s-{i:09}"), &hash[..]])?;
        }
    }
    tx.commit()?;
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

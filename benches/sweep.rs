//! `sweep_expired`: the sessions facet's retention sweep (500 rows per
//! transaction) over 5 000 expired sessions with random token hashes, beside
//! rusqlite deleting the same rows in the same batches, each on a fresh copy
//! of one file. Only the sweep itself is timed.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::Digest;
use statevault::{FakeClock, Timestamp, Vault, VaultOptions, default_key_file};

mod common;
use common::raw;

const ROWS: u32 = 5_000;
const BATCH: i64 = 500;
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A migrated vault holding `ROWS` sessions last seen at `START_MS`.
fn template(rt: &tokio::runtime::Runtime, path: &Path) {
    let options = VaultOptions::new(path)
        .clock(FakeClock::new(Timestamp::from_millis(START_MS)))
        .sweep_interval(None);
    rt.block_on(async { Vault::open(options).await.unwrap().close().await.unwrap() });
    let mut conn = raw(path);
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, created_at, last_seen_at,
                     idle_timeout_secs, expires_at, rotation_due_at)
                 VALUES (?1, ?2, ?2, ?1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z',
                     43200, '2026-01-08T00:00:00.000Z', '2026-01-02T00:00:00.000Z')",
            )
            .unwrap();
        for i in 0..ROWS {
            let hash = sha2::Sha256::digest(i.to_be_bytes());
            stmt.execute(rusqlite::params![format!("s-{i:09}"), &hash[..]])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// A fresh copy of the template (and its key) at `to`.
fn copy(from: &Path, to: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
    std::fs::copy(from, to).unwrap();
    std::fs::copy(default_key_file(from), default_key_file(to)).unwrap();
}

fn sweep(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("template.db");
    template(&rt, &original);
    let work = dir.path().join("work.db");

    let mut group = c.benchmark_group("sweep_expired");
    group.sample_size(10);
    group.bench_function("statevault_5000_rows", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                copy(&original, &work);
                // 31 days later every row is past the 30-day retention.
                let clock = FakeClock::new(Timestamp::from_millis(START_MS + 31 * 86_400_000));
                rt.block_on(async {
                    let vault =
                        Vault::open(VaultOptions::new(&work).clock(clock).sweep_interval(None))
                            .await
                            .unwrap();
                    let started = Instant::now();
                    let removed = vault.sessions().sweep(BATCH as usize).await.unwrap();
                    took += started.elapsed();
                    assert_eq!(removed, u64::from(ROWS));
                    vault.close().await.unwrap();
                });
            }
            took
        })
    });
    group.bench_function("rusqlite_5000_rows", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                copy(&original, &work);
                let conn = raw(&work);
                let started = Instant::now();
                loop {
                    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                    let n = conn
                        .execute(
                            "DELETE FROM sessions WHERE id IN
                                 (SELECT id FROM sessions WHERE last_seen_at < ?1 LIMIT ?2)",
                            rusqlite::params!["2026-01-02T00:00:00.000Z", BATCH],
                        )
                        .unwrap();
                    conn.execute_batch("COMMIT").unwrap();
                    if (n as i64) < BATCH {
                        break;
                    }
                }
                took += started.elapsed();
                conn.close().unwrap();
            }
            took
        })
    });
    group.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);

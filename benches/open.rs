//! Opening an existing encrypted vault (raw-key file) beside rusqlite
//! opening the same file with the same key: open, key, WAL, read the schema.
//! Only the open is timed; closing is not.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use statevault::{Vault, VaultOptions, default_key_file};

fn open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    rt.block_on(async {
        Vault::open(VaultOptions::new(&path))
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });
    let key = std::fs::read_to_string(default_key_file(&path)).unwrap();

    let mut group = c.benchmark_group("open");
    group.bench_function("statevault", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let vault = Vault::open(VaultOptions::new(&path).create_if_missing(false))
                        .await
                        .unwrap();
                    total += started.elapsed();
                    vault.close().await.unwrap();
                }
                total
            })
        })
    });
    group.bench_function("rusqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.execute_batch(&format!(
                    "PRAGMA key = \"{}\"; PRAGMA journal_mode = WAL;",
                    key.trim()
                ))
                .unwrap();
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                    .unwrap();
                total += started.elapsed();
                drop(conn);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);

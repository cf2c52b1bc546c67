//! `ratelimit_check` (in memory, written behind) beside a plain HashMap
//! token bucket, and `ratelimit_check_shared` (one atomic upsert per check
//! in the file) beside rusqlite's upsert-returning per check on the same
//! bundled SQLCipher, same file, same key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use statevault::{
    ClientInfo, Clock, Limit, LimitsConfig, SystemClock, Vault, VaultOptions, Window,
    default_key_file,
};

const PLENTY: f64 = 1e12;

fn config(shared: bool) -> LimitsConfig {
    LimitsConfig::empty().limit(
        "bench",
        Limit::new()
            .window(Window::per(Duration::from_secs(3600), PLENTY))
            .shared(shared),
    )
}

fn limits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let subjects: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let client = ClientInfo::none();
    let mut group = c.benchmark_group("ratelimit_check");

    let vault = rt
        .block_on(Vault::open(
            VaultOptions::new(dir.path().join("mem.db")).limits(config(false)),
        ))
        .unwrap();
    let mut i = 0;
    group.bench_function("in_memory", |b| {
        // One `block_on` per batch: entering the runtime costs more than
        // an in-memory check.
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    i = (i + 1) % subjects.len();
                    let limits = vault.limits();
                    let d = limits.check(&subjects[i], "bench", 1, &client).await;
                    std::hint::black_box(d.unwrap());
                }
                started.elapsed()
            })
        })
    });
    rt.block_on(vault.close()).unwrap();

    let clock = SystemClock;
    let rate = PLENTY / 3_600_000.0;
    let mut buckets: HashMap<String, (f64, i64)> = subjects
        .iter()
        .map(|s| (s.clone(), (PLENTY, clock.now().as_millis())))
        .collect();
    group.bench_function("hashmap_baseline", |b| {
        b.iter(|| {
            i = (i + 1) % subjects.len();
            let now = clock.now().as_millis();
            let (tokens, last) = buckets.get_mut(subjects[i].as_str()).unwrap();
            let refilled = (*tokens + (now - *last).max(0) as f64 * rate).min(PLENTY);
            *last = now;
            *tokens = refilled - 1.0;
            *tokens
        })
    });

    let shared_path = dir.path().join("shared.db");
    let vault = rt
        .block_on(Vault::open(
            VaultOptions::new(&shared_path).limits(config(true)),
        ))
        .unwrap();
    group.bench_function("shared", |b| {
        // One `block_on` per batch: entering the runtime costs more than
        // an in-memory check.
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    i = (i + 1) % subjects.len();
                    let limits = vault.limits();
                    let d = limits.check(&subjects[i], "bench", 1, &client).await;
                    std::hint::black_box(d.unwrap());
                }
                started.elapsed()
            })
        })
    });
    rt.block_on(vault.close()).unwrap();

    let key = std::fs::read_to_string(default_key_file(&shared_path)).unwrap();
    let conn = rusqlite::Connection::open(&shared_path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"{}\"; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
        key.trim()
    ))
    .unwrap();
    let sql = "INSERT INTO token_buckets
                 (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
               VALUES (?1, 'baseline', 3600, ?2 - 1, ?3, ?3)
               ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
                 tokens = min(?2, tokens + max(0, ?4 - CAST(round(unixepoch(last_refill_at, 'subsec') * 1000) AS INTEGER)) * ?5) - 1,
                 last_refill_at = excluded.last_refill_at,
                 updated_at = excluded.updated_at
               RETURNING tokens";
    group.bench_function("rusqlite_upsert_returning", |b| {
        b.iter(|| {
            i = (i + 1) % subjects.len();
            let now = clock.now();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            let tokens: f64 = conn
                .prepare_cached(sql)
                .unwrap()
                .query_row(
                    (subjects[i].as_str(), PLENTY, now, now.as_millis(), rate),
                    |r| r.get(0),
                )
                .unwrap();
            conn.execute_batch("COMMIT").unwrap();
            tokens
        })
    });
    group.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);

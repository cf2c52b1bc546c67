//! `session_create` and `session_validate` (from memory and from the file),
//! beside rusqlite's insert of the same row and indexed lookup by token hash
//! on the same kind of file (same key, WAL, synchronous=NORMAL).

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::Digest;
use statevault::{NewSession, SessionConfig, Vault, VaultOptions};

mod common;
use common::raw;

fn sessions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let open = |config: SessionConfig| {
        rt.block_on(Vault::open(VaultOptions::new(&path).sessions(config)))
            .unwrap()
    };

    let vault = open(SessionConfig::default());
    let tokens: Vec<String> = rt.block_on(async {
        let mut tokens = Vec::new();
        for i in 0..1000 {
            let issued = vault
                .sessions()
                .create(NewSession::new(format!("user-{i}")))
                .await
                .unwrap();
            tokens.push(issued.token.expose().to_owned());
        }
        tokens
    });

    let mut group = c.benchmark_group("session_create");
    let mut n = 0u64;
    group.bench_function("statevault", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(vault.sessions().create(NewSession::new(format!("c-{n}"))))
                .unwrap()
        })
    });
    let conn = raw(&path);
    group.bench_function("rusqlite", |b| {
        let mut stmt = conn
            .prepare(
                "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, created_at, last_seen_at, idle_timeout_secs,
                     expires_at, rotation_due_at)
                 VALUES (?1, ?2, ?2, ?1, '2026-11-23T00:00:00.000Z', '2026-11-23T00:00:00.000Z', 43200,
                     '2026-11-30T00:00:00.000Z', '2026-11-24T00:00:00.000Z')",
            )
            .unwrap();
        b.iter(|| {
            n += 1;
            let id = format!("raw-{n}");
            stmt.execute(rusqlite::params![id, &sha2::Sha256::digest(id.as_bytes())[..]]).unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("session_validate");
    let mut i = 0usize;
    group.bench_function("statevault_memory", |b| {
        b.iter(|| {
            i += 7919;
            rt.block_on(vault.sessions().validate(&tokens[i % tokens.len()], None))
                .unwrap()
        })
    });
    rt.block_on(vault.close()).unwrap();
    let mut no_memory = SessionConfig::default();
    no_memory.memory_entries = 0;
    let vault = open(no_memory);
    group.bench_function("statevault_file", |b| {
        b.iter(|| {
            i += 7919;
            rt.block_on(vault.sessions().validate(&tokens[i % tokens.len()], None))
                .unwrap()
        })
    });
    let hashes: Vec<[u8; 32]> = tokens
        .iter()
        .map(|t| sha2::Sha256::digest(t.as_bytes()).into())
        .collect();
    group.bench_function("rusqlite", |b| {
        b.iter(|| {
            i += 7919;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, user_id, data, last_seen_at, expires_at, revoked_at FROM sessions WHERE token_hash = ?1",
                )
                .unwrap();
            stmt.query_row([&hashes[i % hashes.len()][..]], |r| r.get::<_, String>(0)).unwrap()
        })
    });
    group.finish();
    rt.block_on(vault.close()).unwrap();
}

criterion_group!(benches, sessions);
criterion_main!(benches);

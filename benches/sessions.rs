//! `session_create` and `session_validate`, each beside a baseline doing
//! the same work: creating beside rusqlite's insert of the same row;
//! validating from memory beside an in-memory map doing the same lookup
//! ([`MemoryMap`]); validating from the file beside rusqlite hashing the
//! token and reading the row by the token-hash index, on the same kind of
//! file (same key, WAL, synchronous=NORMAL).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::Digest;
use statevault::{Clock, NewSession, SessionConfig, SystemClock, Timestamp, Vault, VaultOptions};

mod common;
use common::raw;

/// Rows by token hash: (session id, expiry in ms).
type Shard = lru::LruCache<[u8; 32], std::sync::Arc<(String, i64)>>;

/// What the vault's memory does per validation, done directly: hash the
/// token, look it up in one of 16 mutex-guarded `lru` shards, check the
/// row's expiry against the clock, record the touch by session id.
struct MemoryMap {
    shards: Vec<Mutex<Shard>>,
    touches: Mutex<HashMap<String, i64>>,
}

impl MemoryMap {
    fn load(conn: &rusqlite::Connection) -> MemoryMap {
        let map = MemoryMap {
            shards: (0..16)
                .map(|_| Mutex::new(lru::LruCache::new(NonZeroUsize::new(10_000).unwrap())))
                .collect(),
            touches: Mutex::new(HashMap::new()),
        };
        let mut stmt = conn
            .prepare("SELECT token_hash, id, expires_at FROM sessions")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Timestamp>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (hash, id, expires) = row.unwrap();
            let hash: [u8; 32] = hash.try_into().unwrap();
            map.shards[usize::from(hash[0]) % 16]
                .lock()
                .unwrap()
                .put(hash, std::sync::Arc::new((id, expires.as_millis())));
        }
        map
    }

    fn validate(&self, token: &str) -> bool {
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = SystemClock.now().as_millis();
        let row = self.shards[usize::from(hash[0]) % 16]
            .lock()
            .unwrap()
            .get(&hash)
            .cloned();
        let Some(row) = row.filter(|row| now < row.1) else {
            return false;
        };
        self.touches.lock().unwrap().insert(row.0.clone(), now);
        true
    }
}

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
    let map = MemoryMap::load(&conn);
    group.bench_function("in_memory_map", |b| {
        b.iter(|| {
            i += 7919;
            assert!(map.validate(&tokens[i % tokens.len()]));
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
    group.bench_function("rusqlite", |b| {
        b.iter(|| {
            i += 7919;
            let hash = sha2::Sha256::digest(tokens[i % tokens.len()].as_bytes());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta, created_at,
                         last_seen_at, idle_timeout_secs, expires_at, rotation_due_at, revoked_at, revoked_reason
                     FROM sessions WHERE token_hash = ?1",
                )
                .unwrap();
            stmt.query_row([&hash[..]], |r| r.get::<_, String>(0)).unwrap()
        })
    });
    group.finish();
    rt.block_on(vault.close()).unwrap();
}

criterion_group!(benches, sessions);
criterion_main!(benches);

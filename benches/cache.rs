//! The cache's three paths beside their limits, as in `statevault bench`:
//! `cache_l1_get` beside `lru` alone, keyed by the hash computed once when
//! the key was made (as a `CacheKey` carries it), and `lru` hashing the text
//! per get; `cache_l2_get` (L1 off) beside a rusqlite point read + zstd
//! decompress of the same rows; `cache_set` (1000 sets of 1000 distinct keys
//! and the flush that writes them) beside rusqlite upserting the same 1000
//! rows with the same columns and fresh times, 100 per statement, in one
//! transaction: both sides write 1000 distinct rows per iteration.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use statevault::{CacheConfig, CacheKey, Vault, VaultOptions};

mod common;
use common::raw;

fn value(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "query": format!("query {i}"),
        "items": (0..6).map(|t| serde_json::json!({
            "id": i * 10 + t, "title": format!("Track {t} of {i}"),
            "artist": format!("Artist {}", (i + t) % 97), "duration": 180 + (i * 13 + t) % 240,
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn keys(n: usize) -> Vec<CacheKey> {
    (0..n)
        .map(|i| CacheKey::derive("search", "tracks", &i, Some("bench")).unwrap())
        .collect()
}

/// A key's text with its hash computed once, as a `CacheKey` carries them:
/// the baseline finds its entry by that hash and compares the text, as L1
/// does.
#[derive(PartialEq, Eq)]
struct Prehashed {
    hash: u64,
    text: Box<str>,
}

impl Hash for Prehashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Keeps the `u64` a [`Prehashed`] writes as the hash.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn prehashed(keys: &[CacheKey]) -> Vec<Prehashed> {
    let seed = foldhash::fast::FixedState::default();
    keys.iter()
        .map(|k| Prehashed {
            hash: seed.hash_one(k.as_str()),
            text: k.as_str().into(),
        })
        .collect()
}

/// `iters` gets inside one `block_on`, as a service's task makes them: a
/// `block_on` per get would add the runtime's own entry and exit to each.
fn gets(rt: &tokio::runtime::Runtime, vault: &Vault, keys: &[CacheKey], iters: u64) -> Duration {
    rt.block_on(async {
        let cache = vault.cache();
        let started = Instant::now();
        let mut i = 0;
        for _ in 0..iters {
            i = (i + 7) % keys.len();
            black_box(cache.get(&keys[i]).await.unwrap());
        }
        started.elapsed()
    })
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = 500;
    let keys = keys(n);
    let values: Vec<Vec<u8>> = (0..n).map(value).collect();

    let l1 = rt.block_on(async {
        let vault = Vault::open(VaultOptions::new(dir.path().join("l1.db")))
            .await
            .unwrap();
        for (k, v) in keys.iter().zip(&values) {
            vault.cache().set(k, v).await.unwrap();
        }
        vault
    });
    let l2_path = dir.path().join("l2.db");
    let l2 = rt.block_on(async {
        let vault =
            Vault::open(VaultOptions::new(&l2_path).cache(CacheConfig::default().l1_entries(0)))
                .await
                .unwrap();
        for (k, v) in keys.iter().zip(&values) {
            vault.cache().set(k, v).await.unwrap();
        }
        vault.flush().await.unwrap();
        vault
    });

    let mut group = c.benchmark_group("cache_l1_get");
    let mut i = 0;
    group.bench_function("statevault", |b| {
        b.iter_custom(|iters| gets(&rt, &l1, &keys, iters))
    });
    let lookups = prehashed(&keys);
    let mut lru = lru::LruCache::<Prehashed, Arc<[u8]>, _>::with_hasher(
        NonZeroUsize::new(1000).unwrap(),
        BuildHasherDefault::<PassThrough>::default(),
    );
    for (k, v) in prehashed(&keys).into_iter().zip(&values) {
        lru.put(k, Arc::from(v.as_slice()));
    }
    group.bench_function("lru", |b| {
        b.iter(|| {
            i = (i + 7) % n;
            black_box(lru.get(&lookups[i]).cloned())
        })
    });
    let mut folded = lru::LruCache::<String, Arc<[u8]>, _>::with_hasher(
        NonZeroUsize::new(1000).unwrap(),
        foldhash::fast::RandomState::default(),
    );
    for (k, v) in keys.iter().zip(&values) {
        folded.put(k.as_str().to_owned(), Arc::from(v.as_slice()));
    }
    group.bench_function("lru_hashing_text", |b| {
        b.iter(|| {
            i = (i + 7) % n;
            black_box(folded.get(keys[i].as_str()).cloned())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cache_l2_get");
    group.bench_function("statevault", |b| {
        b.iter_custom(|iters| gets(&rt, &l2, &keys, iters))
    });
    let conn = raw(&l2_path);
    let mut zstd = zstd::bulk::Decompressor::new().unwrap();
    group.bench_function("rusqlite_zstd", |b| {
        b.iter(|| {
            i = (i + 7) % n;
            let mut stmt = conn
                .prepare_cached("SELECT value, size FROM cache_entries WHERE key = ?1")
                .unwrap();
            stmt.query_row([keys[i].as_str()], |row| {
                let size: i64 = row.get(1)?;
                Ok(zstd
                    .decompress(row.get_ref(0)?.as_blob()?, size as usize)
                    .unwrap())
            })
            .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cache_set");
    group.sample_size(10);
    let set_keys = self::keys(1000);
    let set_values: Vec<Vec<u8>> = (0..1000).map(value).collect();
    let set_path = dir.path().join("set.db");
    let setter = rt
        .block_on(Vault::open(VaultOptions::new(&set_path)))
        .unwrap();
    group.bench_function("statevault_1000_and_flush", |b| {
        b.iter(|| {
            rt.block_on(async {
                for (k, v) in set_keys.iter().zip(&set_values) {
                    setter.cache().set(k, v).await.unwrap();
                }
                setter.flush().await.unwrap();
            })
        })
    });
    let mut conn = raw(&set_path);
    // The vault's own settings: level 3, literals without Huffman coding.
    let mut compressor = zstd::bulk::Compressor::new(3).unwrap();
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::LiteralCompressionMode(
            zstd::zstd_safe::ParamSwitch::Disable,
        ))
        .unwrap();
    let mut round = 0u64;
    group.bench_function("rusqlite_1000", |b| {
        b.iter_batched(
            || (),
            |()| {
                // Each round writes new times, as the vault's flush does, so
                // the expiry and LRU indexes move on both sides.
                round += 1;
                let (h, m, s) = ((round / 3600) % 23, (round / 60) % 60, round % 60);
                let now = format!("2026-01-01T{h:02}:{m:02}:{s:02}.000Z");
                let later = format!("2026-01-01T{:02}:{m:02}:{s:02}.000Z", h + 1);
                let tx = conn.transaction().unwrap();
                let rows: Vec<(&str, Vec<u8>, i64, i64)> = set_keys
                    .iter()
                    .zip(&set_values)
                    .map(|(k, v)| {
                        let blob = compressor.compress(v).unwrap();
                        let stored = blob.len() as i64;
                        (k.as_str(), blob, v.len() as i64, stored)
                    })
                    .collect();
                for chunk in rows.chunks(100) {
                    let sql = format!(
                        "INSERT INTO cache_entries (key, namespace, codec, size, stored_size, created_at, expires_at, last_access_at, value) VALUES {} ON CONFLICT (key) DO UPDATE SET namespace = excluded.namespace, codec = excluded.codec, size = excluded.size, stored_size = excluded.stored_size, created_at = excluded.created_at, expires_at = excluded.expires_at, last_access_at = excluded.last_access_at, value = excluded.value",
                        vec!["(?, 'search', 'zstd', ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                    );
                    let mut stmt = tx.prepare_cached(&sql).unwrap();
                    let mut params: Vec<&dyn rusqlite::ToSql> = Vec::new();
                    for (k, blob, size, stored) in chunk {
                        params.extend([
                            k as &dyn rusqlite::ToSql,
                            size,
                            stored,
                            &now,
                            &later,
                            &now,
                            blob,
                        ]);
                    }
                    stmt.execute(params.as_slice()).unwrap();
                }
                tx.commit().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(conn);
    rt.block_on(async {
        setter.close().await.unwrap();
        l1.close().await.unwrap();
        l2.close().await.unwrap();
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);

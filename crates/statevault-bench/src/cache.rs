//! `cache_l1_get`, `cache_l2_get`, `cache_set`: each beside its physical
//! limit measured in the same run on the same data — `lru` alone; rusqlite
//! point read + zstd decompress on the same file and key; rusqlite inserting
//! the same rows in batches.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statevault::{CacheConfig, CacheKey, Error, Result, Vault};

/// A JSON-like value of about 1 KiB, like a page of search results.
pub fn json_value(i: usize) -> Vec<u8> {
    let tracks: Vec<Value> = (0..6)
        .map(|t| {
            json!({
                "id": i * 10 + t,
                "title": format!("Track {t} of result {i}"),
                "artist": {"id": 1000 + (i * 7 + t) % 97, "name": format!("Artist {}", (i * 7 + t) % 97)},
                "album": {"id": 5000 + i % 311, "title": format!("Album {}", i % 311)},
                "duration": 180 + (i * 13 + t * 31) % 240,
                "explicit": (i + t).is_multiple_of(5),
                "popularity": (i * 31 + t * 17) % 100,
            })
        })
        .collect();
    serde_json::to_vec(
        &json!({"query": format!("query {i}"), "limit": 6, "offset": 0, "items": tracks}),
    )
    .unwrap_or_default()
}

pub(crate) fn keys(n: usize) -> Result<Vec<CacheKey>> {
    (0..n)
        .map(|i| {
            CacheKey::derive(
                "search",
                "tracks",
                &json!({"q": format!("query {i}"), "limit": 6}),
                Some("bench"),
            )
        })
        .collect()
}

/// A pseudo-random walk over `0..n` (same sequence for both sides).
fn order(n: usize, len: usize) -> Vec<usize> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

fn budget(quick: bool) -> Duration {
    if quick {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    }
}

/// Ops/s of `op` run in rounds over `walk` until `budget` has passed.
async fn rate(
    budget: Duration,
    walk: &[usize],
    mut op: impl AsyncFnMut(usize) -> Result<()>,
) -> Result<f64> {
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < budget {
        for &i in walk {
            op(i).await?;
        }
        ops += walk.len() as u64;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// zstd's errors are `io::Error`s without a file.
pub(crate) fn zstd_error(source: std::io::Error) -> Error {
    Error::Io {
        path: "(zstd)".into(),
        source,
    }
}

/// A key's text with its hash, computed once when the key is made, as a
/// `CacheKey` carries them: the `lru` baseline finds its entry by that hash
/// and compares the text, as L1 does, instead of hashing the text per get.
#[derive(PartialEq, Eq)]
struct Prehashed {
    hash: u64,
    text: Box<str>,
}

impl Prehashed {
    fn of(key: &CacheKey, seed: &foldhash::fast::FixedState) -> Prehashed {
        Prehashed {
            hash: seed.hash_one(key.as_str()),
            text: key.as_str().into(),
        }
    }
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

/// An `lru` of L1's default capacity (1000) holding the bench's values.
fn filled_lru<K: Hash + Eq, S: BuildHasher>(
    keys: impl IntoIterator<Item = K>,
    values: &[Vec<u8>],
    hasher: S,
) -> lru::LruCache<K, Arc<[u8]>, S> {
    let cap = NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN);
    let mut lru = lru::LruCache::with_hasher(cap, hasher);
    for (k, v) in keys.into_iter().zip(values) {
        lru.put(k, Arc::from(v.as_slice()));
    }
    lru
}

/// Gets of 500 hot 1 KiB JSON values held in L1, beside `lru` alone.
///
/// Both sides look a key up by the hash it carries, computed once when the
/// key was made (`CacheKey` keeps its hash; the baseline's keys are
/// [`Prehashed`]), so neither hashes the text in the timed loop. `lru`
/// hashing the text on every get is reported beside them, as is the same
/// `lru` behind one mutex (L1 locks a shard per get).
///
/// The sets are flushed to L2 first, so that no write runs beside the gets.
/// The four contenders run in alternating rounds, each rate the mean of its
/// rounds: a drift in the machine's speed during the run falls on all alike
/// instead of on whichever ran first.
pub async fn l1_get(dir: &Path, quick: bool) -> Result<Value> {
    const N: usize = 500;
    const ROUNDS: u32 = 8;
    let vault = Vault::open(crate::harness::options(&dir.join("cache_l1.db"))).await?;
    let cache = vault.cache();
    let keys = keys(N)?;
    let values: Vec<Vec<u8>> = (0..N).map(json_value).collect();
    for (k, v) in keys.iter().zip(&values) {
        cache.set(k, v).await?;
    }
    vault.flush().await?;
    let walk = order(N, 10_000);
    let seed = foldhash::fast::FixedState::default();
    let prehashed: Vec<Prehashed> = keys.iter().map(|k| Prehashed::of(k, &seed)).collect();
    let by_hash = BuildHasherDefault::<PassThrough>::default();
    let stored = || keys.iter().map(|k| Prehashed::of(k, &seed));
    let mut lru = filled_lru(stored(), &values, by_hash.clone());
    let locked = std::sync::Mutex::new(filled_lru(stored(), &values, by_hash));
    let texts = keys.iter().map(|k| k.as_str().to_owned());
    let mut hashing = filled_lru(texts, &values, foldhash::fast::RandomState::default());
    let round = budget(quick) / ROUNDS;
    let [mut ours, mut limit, mut with_lock, mut hashing_text] = [0.0; 4];
    for _ in 0..ROUNDS {
        ours += rate(round, &walk, async |i| {
            black_box(cache.get(&keys[i]).await?);
            Ok(())
        })
        .await?;
        limit += rate(round, &walk, async |i| {
            black_box(lru.get(&prehashed[i]).cloned());
            Ok(())
        })
        .await?;
        with_lock += rate(round, &walk, async |i| {
            let mut lru = locked.lock().map_err(|_| Error::Closed)?;
            black_box(lru.get(&prehashed[i]).cloned());
            Ok(())
        })
        .await?;
        hashing_text += rate(round, &walk, async |i| {
            black_box(hashing.get(keys[i].as_str()).cloned());
            Ok(())
        })
        .await?;
    }
    let mean = |sum: f64| sum / f64::from(ROUNDS);
    let stats = cache.stats().await?;
    vault.close().await?;
    let mut m = crate::harness::workload(
        mean(ours),
        "lru::LruCache get + Arc clone, no lock, keyed by the hash computed when the key was made \
         (as CacheKey is), same keys, values and order, alternating rounds",
        mean(limit),
    );
    m.insert(
        "lru_behind_a_mutex_ops_per_sec".into(),
        json!(mean(with_lock).round()),
    );
    m.insert(
        "lru_hashing_text_ops_per_sec".into(),
        json!(mean(hashing_text).round()),
    );
    m.insert("l1_hits".into(), json!(stats.l1.hits));
    m.insert("l1_misses".into(), json!(stats.l1.misses));
    m.insert("l1_bytes".into(), json!(stats.l1.bytes));
    Ok(Value::Object(m))
}

/// Gets answered by L2 (L1 off) over 10 000 rows of 1 KiB JSON, beside a
/// rusqlite point read + zstd decompress of the same rows in the same file,
/// the two in alternating rounds (as in [`l1_get`]).
pub async fn l2_get(dir: &Path, quick: bool) -> Result<Value> {
    const ROUNDS: u32 = 8;
    let n = if quick { 2_000 } else { 10_000 };
    let path = dir.join("cache_l2.db");
    let vault =
        Vault::open(crate::harness::options(&path).cache(CacheConfig::default().l1_entries(0)))
            .await?;
    let cache = vault.cache();
    let keys = keys(n)?;
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, &json_value(i)).await?;
    }
    vault.flush().await?;
    let stats = cache.stats().await?;
    let walk = order(n, 10_000);
    let conn = crate::harness::raw_connection(&path)?;
    let mut zstd = zstd::bulk::Decompressor::new().map_err(zstd_error)?;
    let round = budget(quick) / ROUNDS;
    let (mut ours, mut limit) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        ours += rate(round, &walk, async |i| {
            black_box(cache.get(&keys[i]).await?.ok_or(Error::Closed)?);
            Ok(())
        })
        .await?;
        limit += rate(round, &walk, async |i| {
            black_box(point_read(&conn, &mut zstd, &keys[i])?);
            Ok(())
        })
        .await?;
    }
    let (ours, limit) = (ours / f64::from(ROUNDS), limit / f64::from(ROUNDS));
    drop(conn);
    vault.close().await?;
    let mut m = crate::harness::workload(
        ours,
        "rusqlite point read + zstd decompress (reused context), same file, key and rows",
        limit,
    );
    m.insert("rows".into(), json!(n));
    m.insert("value_bytes".into(), json!(stats.l2.value_bytes));
    m.insert("stored_bytes".into(), json!(stats.l2.bytes));
    m.insert(
        "compression_ratio".into(),
        json!((stats.l2.value_bytes as f64 / stats.l2.bytes.max(1) as f64 * 100.0).round() / 100.0),
    );
    Ok(Value::Object(m))
}

/// Sets of distinct 1 KiB JSON values, flushed every 1000 sets (the flush
/// counts), beside rusqlite compressing and inserting the same rows, 100 per
/// statement, 1000 per transaction: both write every set, each key once.
/// Then, as the variant `each committed`, sets that are each flushed before
/// the next (a set then `flush`), beside rusqlite upserting the same rows one
/// per transaction.
pub async fn set(dir: &Path, quick: bool) -> Result<Value> {
    let n = if quick { 5_000 } else { 50_000 };
    let each = if quick { 200 } else { 2_000 };
    let keys = keys(n)?;
    let values: Vec<Vec<u8>> = (0..n).map(json_value).collect();

    let vault = Vault::open(crate::harness::options(&dir.join("cache_set.db"))).await?;
    let cache = vault.cache();
    let started = Instant::now();
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        cache.set(k, v).await?;
        if i % 1000 == 999 {
            vault.flush().await?;
        }
    }
    vault.flush().await?;
    let ours = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (k, v) in keys.iter().zip(&values).take(each) {
        cache.set(k, v).await?;
        vault.flush().await?;
    }
    let ours_each = each as f64 / started.elapsed().as_secs_f64();
    vault.close().await?;

    let path = dir.join("cache_set_rusqlite.db");
    Vault::open(crate::harness::options(&path))
        .await?
        .close()
        .await?;
    let mut conn = crate::harness::raw_connection(&path)?;
    let mut zstd = compressor()?;
    let started = Instant::now();
    for (ki, vi) in keys.chunks(1000).zip(values.chunks(1000)) {
        let tx = conn.transaction()?;
        for (kc, vc) in ki.chunks(100).zip(vi.chunks(100)) {
            upsert(&tx, &mut zstd, kc, vc)?;
        }
        tx.commit()?;
    }
    let limit = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (k, v) in keys.iter().zip(&values).take(each) {
        let tx = conn.transaction()?;
        upsert(
            &tx,
            &mut zstd,
            std::slice::from_ref(k),
            std::slice::from_ref(v),
        )?;
        tx.commit()?;
    }
    let limit_each = each as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    let mut m = crate::harness::workload(
        ours,
        "rusqlite: zstd (reused context) + 100 rows per INSERT, 1000 per transaction, same distinct rows",
        limit,
    );
    m.insert("rows".into(), json!(n));
    crate::harness::variant(
        &mut m,
        "each committed",
        ours_each,
        "rusqlite: zstd + one-row upsert, one transaction per set, same rows",
        limit_each,
    );
    m.insert("each_committed_rows".into(), json!(each));
    Ok(Value::Object(m))
}

/// An L2 get done directly: the row's value by key, decompressed.
pub(crate) fn point_read(
    conn: &rusqlite::Connection,
    zstd: &mut zstd::bulk::Decompressor<'_>,
    key: &CacheKey,
) -> Result<Vec<u8>> {
    let mut stmt = conn.prepare_cached("SELECT value, size FROM cache_entries WHERE key = ?1")?;
    let value = stmt.query_row([key.as_str()], |row| {
        let size: i64 = row.get(1)?;
        let blob = row.get_ref(0)?.as_blob()?;
        Ok(zstd.decompress(blob, size as usize))
    })?;
    value.map_err(zstd_error)
}

/// zstd with the vault's own settings: level 3, literals without Huffman coding.
pub(crate) fn compressor() -> Result<zstd::bulk::Compressor<'static>> {
    let mut zstd = zstd::bulk::Compressor::new(3).map_err(zstd_error)?;
    zstd.set_parameter(zstd::zstd_safe::CParameter::LiteralCompressionMode(
        zstd::zstd_safe::ParamSwitch::Disable,
    ))
    .map_err(zstd_error)?;
    Ok(zstd)
}

/// Compresses `values` and upserts them under `keys` in one statement, with
/// the columns the vault's flush writes.
pub(crate) fn upsert(
    conn: &rusqlite::Connection,
    zstd: &mut zstd::bulk::Compressor<'_>,
    keys: &[CacheKey],
    values: &[Vec<u8>],
) -> Result<()> {
    let now = "2026-01-01T00:00:00.000Z";
    let later = "2026-01-01T00:05:00.000Z";
    let rows: Vec<Vec<u8>> = values
        .iter()
        .map(|v| zstd.compress(v).map_err(zstd_error))
        .collect::<Result<_>>()?;
    let placeholders =
        vec!["(?, 'search', 'bench', 'zstd', ?, ?, ?, ?, ?, ?)"; keys.len()].join(", ");
    let sql = format!(
        "INSERT INTO cache_entries (key, namespace, user_id, codec, size, stored_size, created_at, expires_at, last_access_at, value) VALUES {placeholders} ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let sizes: Vec<(i64, i64)> = values
        .iter()
        .zip(&rows)
        .map(|(v, r)| (v.len() as i64, r.len() as i64))
        .collect();
    let texts: Vec<&str> = keys.iter().map(CacheKey::as_str).collect();
    let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(keys.len() * 7);
    for ((k, r), (size, stored)) in texts.iter().zip(&rows).zip(&sizes) {
        params.extend([
            k as &dyn rusqlite::ToSql,
            size,
            stored,
            &now,
            &later,
            &now,
            r,
        ]);
    }
    stmt.execute(params.as_slice())?;
    Ok(())
}

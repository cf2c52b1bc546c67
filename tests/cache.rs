//! The two-level cache: both levels, TTLs on a fake clock, bounds, tags,
//! single flight, counters, write-behind, corruption, the CLI.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use statevault::{CacheConfig, CacheKey, Error, FakeClock, SetOptions, Vault};

async fn vault_with(dir: &std::path::Path, config: CacheConfig) -> (Vault, FakeClock) {
    let (options, clock) = common::options(dir, "vault.db");
    (
        Vault::open(options.cache(config)).await.expect("open"),
        clock,
    )
}

fn key(ns: &str, name: &str) -> CacheKey {
    CacheKey::new(ns, name).unwrap()
}

/// Rows in `cache_entries` for `key`, read with a raw connection.
fn l2_rows(db: &std::path::Path, key: &str) -> i64 {
    common::raw_connection(db)
        .query_row(
            "SELECT count(*) FROM cache_entries WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn set_get_reaches_l2_on_flush_and_is_promoted() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let k = key("metadata", "album:1");
    cache.set(&k, b"hello").await.unwrap();
    assert_eq!(&*cache.get(&k).await.unwrap().unwrap(), b"hello");
    assert_eq!(
        l2_rows(vault.path(), k.as_str()),
        0,
        "write-behind: not yet in L2"
    );
    vault.flush().await.unwrap();
    assert_eq!(l2_rows(vault.path(), k.as_str()), 1);
    let path = vault.path().to_owned();
    vault.close().await.unwrap();

    // a new process: L1 empty, the value comes from L2 and is promoted
    let (options, _clock) = common::options(dir.path(), "vault.db");
    assert_eq!(options.path(), path);
    let vault = Vault::open(options).await.unwrap();
    let cache = vault.cache();
    assert_eq!(&*cache.get(&k).await.unwrap().unwrap(), b"hello");
    assert_eq!(&*cache.get(&k).await.unwrap().unwrap(), b"hello");
    let stats = cache.stats().await.unwrap();
    assert_eq!((stats.l2.hits, stats.l1.hits), (1, 1), "{stats:?}");
    assert_eq!(stats.l1.entries, 1);
    assert!(cache.get(&key("metadata", "nope")).await.unwrap().is_none());
    let stats = cache.stats().await.unwrap();
    assert_eq!(stats.l2.misses, 1);
    assert!((stats.hit_ratio - 2.0 / 3.0).abs() < 1e-9);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn ttls_follow_the_fake_clock_and_namespace_defaults() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let search = key("search", "q");
    let tracks = key("tracks", "t");
    let short = key("other", "short");
    cache.set(&search, b"s").await.unwrap();
    cache.set(&tracks, b"t").await.unwrap();
    cache
        .set_with(
            &short,
            b"x",
            &SetOptions::new().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    vault.flush().await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert!(cache.get(&short).await.unwrap().is_none());
    assert!(cache.get(&search).await.unwrap().is_some());
    clock.advance(Duration::from_secs(5 * 60));
    assert!(cache.get(&search).await.unwrap().is_none(), "search: 5 min");
    assert!(cache.get(&tracks).await.unwrap().is_some(), "tracks: 6 h");
    clock.advance(Duration::from_secs(6 * 3600));
    assert!(cache.get(&tracks).await.unwrap().is_none());

    // expired rows stay in L2 until a sweep, which purges them
    assert_eq!(l2_rows(vault.path(), tracks.as_str()), 1);
    let swept = cache.sweep().await.unwrap();
    assert_eq!(swept.expired, 3);
    assert_eq!(l2_rows(vault.path(), tracks.as_str()), 0);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn expired_in_memory_never_falls_back_to_an_older_l2_value() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let k = key("metadata", "k");
    cache
        .set_with(
            &k,
            b"old",
            &SetOptions::new().ttl(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    vault.flush().await.unwrap();
    cache
        .set_with(&k, b"new", &SetOptions::new().ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert!(cache.get(&k).await.unwrap().is_none());
    vault.flush().await.unwrap();
    assert!(cache.get(&k).await.unwrap().is_none());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn l1_evicts_by_count_and_pending_sets_are_still_served() {
    let dir = common::tempdir();
    let config = CacheConfig::default().l1_shards(1).l1_entries(10);
    let (vault, _clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    for i in 0..50 {
        cache
            .set(&key("n", &i.to_string()), &[i as u8; 100])
            .await
            .unwrap();
    }
    let stats = cache.stats().await.unwrap();
    assert_eq!(stats.l1.entries, 10);
    assert_eq!(stats.l1.evictions, 40);
    assert_eq!(stats.pending_writes, 50);
    // evicted from L1 but not yet in L2: the buffer answers
    for i in 0..50 {
        let v = cache.get(&key("n", &i.to_string())).await.unwrap();
        assert_eq!(v.as_deref(), Some(&[i as u8; 100][..]), "{i}");
    }
    vault.flush().await.unwrap();
    for i in 0..50 {
        assert!(
            cache
                .get(&key("n", &i.to_string()))
                .await
                .unwrap()
                .is_some()
        );
    }
    vault.close().await.unwrap();
}

#[tokio::test]
async fn l1_never_holds_more_than_its_byte_bound() {
    let dir = common::tempdir();
    let bound = 64 * 1024;
    let config = CacheConfig::default().l1_shards(4).l1_bytes(bound);
    let (vault, _clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    for i in 0..500 {
        let size = 100 + (i * 37) % 5000;
        cache
            .set(&key("b", &i.to_string()), &vec![7; size])
            .await
            .unwrap();
        let stats = cache.stats().await.unwrap();
        assert!(
            stats.l1.bytes <= bound as u64,
            "{} > {bound}",
            stats.l1.bytes
        );
    }
    let stats = cache.stats().await.unwrap();
    assert!(stats.l1.evictions > 0);
    assert!(
        stats.l1.bytes > bound as u64 / 2,
        "bound is used: {}",
        stats.l1.bytes
    );
    // a value bigger than a shard's share is kept out of L1 and still served
    let big = key("b", "big");
    cache.set(&big, &vec![1; bound]).await.unwrap();
    assert_eq!(cache.get(&big).await.unwrap().unwrap().len(), bound);
    assert!(cache.stats().await.unwrap().l1.bytes <= bound as u64);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn tag_invalidation_reaches_both_levels() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let tagged = SetOptions::new().tag("playlist:7");
    let (a, b, c, d) = (key("p", "a"), key("p", "b"), key("p", "c"), key("p", "d"));
    cache.set_with(&a, b"a", &tagged).await.unwrap();
    cache
        .set_with(&b, b"b", &tagged.clone().tag("other"))
        .await
        .unwrap();
    cache.set(&c, b"c").await.unwrap();
    vault.flush().await.unwrap();
    // d: only in the buffer (never flushed) when invalidated
    cache.set_with(&d, b"d", &tagged).await.unwrap();
    assert_eq!(cache.invalidate_tag("playlist:7").await.unwrap(), 3);
    for k in [&a, &b, &d] {
        assert!(cache.get(k).await.unwrap().is_none(), "{k}");
        assert_eq!(l2_rows(vault.path(), k.as_str()), 0);
    }
    assert!(cache.get(&c).await.unwrap().is_some());
    // nothing comes back after a flush or a reopen
    vault.flush().await.unwrap();
    assert!(cache.get(&d).await.unwrap().is_none());
    let n: i64 = common::raw_connection(vault.path())
        .query_row("SELECT count(*) FROM cache_tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "tags go with their entries");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn tag_invalidation_reaches_entries_promoted_from_l2() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let k = key("p", "x");
    vault
        .cache()
        .set_with(&k, b"x", &SetOptions::new().tag("t1").tag("t2"))
        .await
        .unwrap();
    vault.close().await.unwrap();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    assert!(cache.get(&k).await.unwrap().is_some()); // promoted with its tags
    // the row disappears from L2 behind this process's back
    common::raw_connection(vault.path())
        .execute("DELETE FROM cache_entries", [])
        .unwrap();
    assert_eq!(cache.invalidate_tag("t2").await.unwrap(), 1);
    assert!(cache.get(&k).await.unwrap().is_none());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn clear_user_namespace_and_all() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let u1 = CacheKey::derive("search", "tracks", &json!({"q": "a"}), Some("u1")).unwrap();
    let u1b = CacheKey::new("tracks", "9")
        .unwrap()
        .for_user("u1")
        .unwrap();
    let u2 = CacheKey::derive("search", "tracks", &json!({"q": "a"}), Some("u2")).unwrap();
    let shared = key("tracks", "10");
    for k in [&u1, &u1b, &u2, &shared] {
        cache.set(k, b"v").await.unwrap();
    }
    vault.flush().await.unwrap();
    assert_eq!(cache.clear_user("u1").await.unwrap(), 2);
    assert!(cache.get(&u1).await.unwrap().is_none());
    assert!(cache.get(&u1b).await.unwrap().is_none());
    assert!(cache.get(&u2).await.unwrap().is_some());
    assert_eq!(cache.clear_namespace("search").await.unwrap(), 1);
    assert!(cache.get(&u2).await.unwrap().is_none());
    assert!(cache.exists(&shared).await.unwrap());
    assert_eq!(cache.clear().await.unwrap(), 1);
    assert!(!cache.exists(&shared).await.unwrap());
    assert_eq!(cache.stats().await.unwrap().invalidations, 4);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn delete_exists_and_batches() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let keys: Vec<CacheKey> = (0..5).map(|i| key("m", &i.to_string())).collect();
    let entries: Vec<(CacheKey, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.clone(), k.as_str().as_bytes().to_vec()))
        .collect();
    cache.set_many(&entries, &SetOptions::new()).await.unwrap();
    vault.flush().await.unwrap();
    let got = cache.get_many(&keys).await.unwrap();
    assert!(
        got.iter()
            .zip(&keys)
            .all(|(v, k)| v.as_deref() == Some(k.as_str().as_bytes()))
    );
    assert!(cache.delete(&keys[0]).await.unwrap());
    assert!(!cache.delete(&keys[0]).await.unwrap());
    assert!(!cache.exists(&keys[0]).await.unwrap());
    assert_eq!(cache.delete_many(&keys[1..3]).await.unwrap(), 2);
    let got = cache.get_many(&keys).await.unwrap();
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 2);
    vault.close().await.unwrap();
    // deletes were synchronous: gone in the file too
    let (vault, _clock) = common::vault(dir.path()).await;
    let got = vault.cache().get_many(&keys).await.unwrap();
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 2);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn single_flight_runs_the_loader_once_for_100_concurrent_misses() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let k = key("metadata", "artist:1");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (vault, calls, k) = (vault.clone(), calls.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            vault
                .cache()
                .get_or_load(&k, &SetOptions::new(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, Error>(json!({"name": "New Order"}))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap()["name"], "New Order");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_loader_stores_nothing_and_the_next_caller_loads() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let k = key("metadata", "x");
    let failed: Result<String, Error> = cache
        .get_or_load(&k, &SetOptions::new(), || async { Err(Error::Closed) })
        .await;
    assert!(matches!(failed, Err(Error::Closed)));
    assert!(!cache.exists(&k).await.unwrap());
    let v: String = cache
        .get_or_load(&k, &SetOptions::new(), || async {
            Ok::<_, Error>("v".into())
        })
        .await
        .unwrap();
    assert_eq!(v, "v");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn values_of_0_1_64k_and_8m_bytes_round_trip_through_both_levels() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let sizes = [0usize, 1, 64 * 1024, 8 * 1024 * 1024];
    let value = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 31 % 251) as u8).collect() };
    for n in sizes {
        let k = key("v", &n.to_string());
        vault.cache().set(&k, &value(n)).await.unwrap();
        assert_eq!(vault.cache().get(&k).await.unwrap().unwrap().len(), n);
    }
    vault.close().await.unwrap();
    let (vault, _clock) = common::vault(dir.path()).await;
    for n in sizes {
        let got = vault
            .cache()
            .get(&key("v", &n.to_string()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*got, value(n).as_slice(), "{n} bytes");
    }
    let codecs: Vec<(String, i64)> = {
        let conn = common::raw_connection(vault.path());
        let mut stmt = conn
            .prepare("SELECT codec, size FROM cache_entries ORDER BY size")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(codecs[0], ("raw".into(), 0));
    assert_eq!(codecs[1], ("raw".into(), 1));
    assert_eq!(codecs[3], ("zstd".into(), 8 * 1024 * 1024));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn json_values_compress() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    for i in 0..20 {
        let doc: Vec<_> = (0..20)
            .map(|t| json!({"id": i * 100 + t, "title": format!("Track {t}"), "artist": "Joy Division"}))
            .collect();
        cache
            .set_json(&key("search", &i.to_string()), &doc, &SetOptions::new())
            .await
            .unwrap();
    }
    vault.flush().await.unwrap();
    let stats = cache.stats().await.unwrap();
    assert!(stats.l2.value_bytes > 3 * stats.l2.bytes, "{stats:?}");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_blob_is_a_typed_error_and_the_entry_is_dropped() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let k = key("metadata", "c");
    vault.cache().set(&k, &vec![b'a'; 4096]).await.unwrap();
    vault.close().await.unwrap();
    common::raw_connection(&dir.path().join("vault.db"))
        .execute("UPDATE cache_entries SET value = x'28b52ffd00deadbeef'", [])
        .unwrap();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    match cache.get(&k).await {
        Err(Error::CacheCorrupt { key, .. }) => assert_eq!(key, k.as_str()),
        other => panic!("expected CacheCorrupt, got {other:?}"),
    }
    assert!(cache.get(&k).await.unwrap().is_none(), "dropped");
    assert_eq!(l2_rows(vault.path(), k.as_str()), 0);
    assert_eq!(cache.stats().await.unwrap().l2.corrupt, 1);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn oversized_values_and_absurd_ttls_are_typed_errors() {
    let dir = common::tempdir();
    let config = CacheConfig::default().max_value_bytes(1024);
    let (vault, _clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    let k = key("m", "k");
    assert!(matches!(
        cache.set(&k, &[0; 1025]).await,
        Err(Error::CacheValueTooLarge {
            size: 1025,
            max: 1024
        })
    ));
    for ttl in [
        Duration::ZERO,
        Duration::from_secs(400 * 86_400),
        Duration::MAX,
    ] {
        let r = cache.set_with(&k, b"v", &SetOptions::new().ttl(ttl)).await;
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{ttl:?}: {r:?}"
        );
    }
    assert!(matches!(
        cache.set_with(&k, b"v", &SetOptions::new().tag("")).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(!cache.exists(&k).await.unwrap());
    vault.close().await.unwrap();
    // bad configuration is refused at open
    let (options, _) = common::options(dir.path(), "other.db");
    let bad = CacheConfig::default().namespace_ttl("search", Duration::ZERO);
    assert!(matches!(
        Vault::open(options.cache(bad)).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn counters_are_atomic_across_handles() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let (other, _clock) = common::vault(dir.path()).await; // a second "process"
    let k = key("counters", "hits");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let v = if i % 2 == 0 {
            vault.clone()
        } else {
            other.clone()
        };
        let k = k.clone();
        tasks.push(tokio::spawn(
            async move { v.cache().incr(&k, 1).await.unwrap() },
        ));
    }
    let mut seen: Vec<i64> = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<_>>(),
        "every increment saw a distinct value"
    );
    assert_eq!(vault.cache().decr(&k, 50).await.unwrap(), -10);
    assert_eq!(&*vault.cache().get(&k).await.unwrap().unwrap(), b"-10");
    // a value that is not an integer is refused
    let text = key("counters", "text");
    vault.cache().set(&text, b"abc").await.unwrap();
    assert!(matches!(
        vault.cache().incr(&text, 1).await,
        Err(Error::InvalidInput { .. })
    ));
    let max = key("counters", "max");
    vault.cache().incr(&max, i64::MAX).await.unwrap();
    assert!(matches!(
        vault.cache().incr(&max, 1).await,
        Err(Error::InvalidInput { .. })
    ));
    other.close().await.unwrap();
    vault.close().await.unwrap();
}

#[tokio::test]
async fn touch_and_expire() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let (a, b) = (key("search", "a"), key("search", "b"));
    cache.set(&a, b"a").await.unwrap();
    cache.set(&b, b"b").await.unwrap();
    vault.flush().await.unwrap();
    clock.advance(Duration::from_secs(4 * 60));
    assert!(
        cache
            .touch(&a, Some(Duration::from_secs(3600)))
            .await
            .unwrap()
    );
    clock.advance(Duration::from_secs(2 * 60));
    assert!(cache.get(&a).await.unwrap().is_some(), "touched");
    assert!(cache.get(&b).await.unwrap().is_none(), "not touched");
    assert!(!cache.touch(&b, None).await.unwrap());
    assert!(cache.expire(&a, Duration::ZERO).await.unwrap());
    assert!(cache.get(&a).await.unwrap().is_none());
    vault.close().await.unwrap();
    // the new expiry reached L2
    let (vault, clock) = common::vault(dir.path()).await;
    clock.advance(Duration::from_secs(6 * 60 + 1));
    assert!(vault.cache().get(&a).await.unwrap().is_none());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn l2_byte_cap_evicts_least_recently_used_rows() {
    let dir = common::tempdir();
    let config = CacheConfig::default()
        .l2_bytes(40_000)
        .raw_below(usize::MAX) // stored size = value size
        .access_resolution(Duration::from_millis(1));
    let (vault, clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    for i in 0..10 {
        cache
            .set(&key("m", &i.to_string()), &[0; 5000])
            .await
            .unwrap();
        vault.flush().await.unwrap();
        clock.advance(Duration::from_secs(1));
    }
    // 10 × 5000 > 40 000: the two oldest went
    let stats = cache.stats().await.unwrap();
    assert!(stats.l2.bytes <= 40_000, "{stats:?}");
    assert_eq!(l2_rows(vault.path(), "m:0"), 0);
    assert_eq!(l2_rows(vault.path(), "m:1"), 0);
    // reading m:2 makes it recent: the next eviction takes m:3
    assert!(cache.get(&key("m", "2")).await.unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    cache.set(&key("m", "new"), &[0; 5000]).await.unwrap();
    vault.flush().await.unwrap();
    assert_eq!(l2_rows(vault.path(), "m:2"), 1);
    assert_eq!(l2_rows(vault.path(), "m:3"), 0);
    assert!(cache.stats().await.unwrap().l2.evictions >= 3);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn l2_hits_note_the_access_at_most_once_per_resolution() {
    let dir = common::tempdir();
    let config = CacheConfig::default()
        .l1_entries(0) // every get is answered by L2
        .access_resolution(Duration::from_secs(5));
    let (vault, clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    let k = key("r", "a");
    let last_access = || -> String {
        common::raw_connection(vault.path())
            .query_row(
                "SELECT last_access_at FROM cache_entries WHERE key = ?1",
                [k.as_str()],
                |r| r.get(0),
            )
            .unwrap()
    };
    cache.set(&k, b"a").await.unwrap();
    vault.flush().await.unwrap();
    let set_at = last_access();
    // 3 s after the set: within the resolution, nothing to write
    clock.advance(Duration::from_secs(3));
    for _ in 0..3 {
        assert!(cache.get(&k).await.unwrap().is_some());
    }
    vault.flush().await.unwrap();
    assert_eq!(last_access(), set_at);
    // 6 s after the set: the hit is noted
    clock.advance(Duration::from_secs(3));
    assert!(cache.get(&k).await.unwrap().is_some());
    vault.flush().await.unwrap();
    let noted = last_access();
    assert!(noted > set_at, "{noted} after {set_at}");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn cli_cache_stats_invalidate_clear() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    cache
        .set_with(&key("search", "a"), b"a", &SetOptions::new().tag("t"))
        .await
        .unwrap();
    cache
        .set(
            &CacheKey::new("tracks", "b")
                .unwrap()
                .for_user("alice")
                .unwrap(),
            b"b",
        )
        .await
        .unwrap();
    cache.set(&key("tracks", "c"), b"c").await.unwrap();
    vault.close().await.unwrap();

    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "cache", "stats", "--json"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let stats: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(stats["l2"]["entries"], 3);
    assert_eq!(stats["namespaces"][1]["namespace"], "tracks");
    assert_eq!(stats["namespaces"][1]["entries"], 2);

    let out = common::run(dir.path(), &["--db", "vault.db", "cache", "stats"]);
    assert!(common::stdout(&out).contains("tracks"));

    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "cache", "invalidate", "--tag", "t"],
    );
    assert!(
        common::stdout(&out).contains("invalidated 1 entry"),
        "{}",
        common::stdout(&out)
    );
    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "cache", "clear", "--user", "alice"],
    );
    assert!(
        common::stdout(&out).contains("cleared 1 entry"),
        "{}",
        common::stdout(&out)
    );
    let out = common::run(dir.path(), &["--db", "vault.db", "cache", "clear"]);
    assert!(
        common::stdout(&out).contains("cleared 1 entry"),
        "{}",
        common::stdout(&out)
    );
    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "cache", "invalidate", "--tag", ""],
    );
    common::assert_one_error_line(&out);
}

#[tokio::test]
async fn the_write_buffer_is_bounded_and_other_handles_see_sets_once_flushed() {
    let dir = common::tempdir();
    let config = CacheConfig::default()
        .l1_shards(1)
        .max_pending_bytes(16 * 1024);
    let (vault, _clock) = vault_with(dir.path(), config).await;
    let (other, _clock) = common::vault(dir.path()).await; // another process, in effect
    let cache = vault.cache();
    let first = key("m", "0");
    cache.set(&first, &[1; 4096]).await.unwrap();
    assert!(
        other.cache().get(&first).await.unwrap().is_none(),
        "not flushed yet"
    );
    for i in 1..10 {
        cache
            .set(&key("m", &i.to_string()), &[1; 4096])
            .await
            .unwrap();
    }
    // over 16 KiB buffered: a set flushed on its own
    assert!(l2_rows(vault.path(), "m:0") == 1);
    assert!(other.cache().get(&first).await.unwrap().is_some());
    assert!(cache.stats().await.unwrap().pending_writes < 10);
    other.close().await.unwrap();
    vault.close().await.unwrap();
}

/// Guarantee 1 of the cache module: once an invalidation returns, no get in
/// this process returns what it removed, even while other tasks were
/// reading (and promoting from L2) during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_value_after_an_invalidation_that_raced_readers() {
    let dir = common::tempdir();
    let keys: Vec<CacheKey> = (0..200).map(|i| key("r", &i.to_string())).collect();
    for round in 0..5 {
        let (vault, _clock) = common::vault(dir.path()).await;
        for k in &keys {
            vault
                .cache()
                .set_with(k, round.to_string().as_bytes(), &SetOptions::new().tag("t"))
                .await
                .unwrap();
        }
        vault.close().await.unwrap();
        // a fresh handle: L1 empty, so readers promote from L2
        let (vault, _clock) = common::vault(dir.path()).await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (vault, keys, done) = (vault.clone(), keys.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = r;
                    while !done.load(Ordering::SeqCst) {
                        vault.cache().get(&keys[i % keys.len()]).await.unwrap();
                        i += 7;
                        // a failing test must be able to shut the runtime down
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(vault.cache().invalidate_tag("t").await.unwrap(), 200);
        for k in &keys {
            assert!(
                vault.cache().get(k).await.unwrap().is_none(),
                "round {round}: {k}"
            );
        }
        done.store(true, Ordering::SeqCst);
        for r in readers {
            r.await.unwrap();
        }
        for k in &keys {
            assert!(
                vault.cache().get(k).await.unwrap().is_none(),
                "round {round}: {k}"
            );
        }
        vault.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_counter_keeps_its_tags() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let cache = vault.cache();
    let k = key("counters", "plays");
    cache
        .set_with(&k, b"5", &SetOptions::new().tag("playlist:7"))
        .await
        .unwrap();
    assert_eq!(cache.incr(&k, 1).await.unwrap(), 6);
    vault.flush().await.unwrap();
    assert_eq!(cache.incr(&k, 1).await.unwrap(), 7);
    assert_eq!(cache.invalidate_tag("playlist:7").await.unwrap(), 1);
    assert!(
        cache.get(&k).await.unwrap().is_none(),
        "gone from both levels"
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn l1_recency_moves_with_the_access_resolution() {
    let dir = common::tempdir();
    let config = CacheConfig::default()
        .l1_shards(1)
        .l1_entries(3)
        .access_resolution(Duration::from_secs(5));
    let (vault, clock) = vault_with(dir.path(), config).await;
    let cache = vault.cache();
    for name in ["a", "b", "c"] {
        cache.set(&key("r", name), name.as_bytes()).await.unwrap();
    }
    vault.flush().await.unwrap();
    // Past the resolution since it was set, a hit moves "a" (the oldest) to
    // the front: "b" is now the oldest.
    clock.advance(Duration::from_secs(6));
    cache.get(&key("r", "a")).await.unwrap();
    cache.set(&key("r", "d"), b"d").await.unwrap();
    vault.flush().await.unwrap();
    let hits = |s: statevault::CacheStats| (s.l1.hits, s.l1.misses);
    let before = hits(cache.stats().await.unwrap());
    assert!(cache.get(&key("r", "a")).await.unwrap().is_some());
    let after_a = hits(cache.stats().await.unwrap());
    assert_eq!(after_a.0, before.0 + 1, "a stayed in L1");
    assert!(cache.get(&key("r", "b")).await.unwrap().is_some());
    let after_b = hits(cache.stats().await.unwrap());
    assert_eq!(
        after_b.1,
        after_a.1 + 1,
        "b was evicted from L1 (served by L2)"
    );
    vault.close().await.unwrap();
}

//! The cache's contract, on every backend. What L2 holds is seen through
//! another handle on the same state: its L1 starts empty, so its reads go
//! to L2.

use std::time::Duration;

use statevault::{CacheConfig, CacheKey, Error, SetOptions, Vault};

use crate::{Backend, contract};

contract!(
    sets_reach_l2_at_the_flush_and_every_size_round_trips,
    invalidations_reach_l2_and_the_other_instances_memory,
    expiry_follows_the_clock_and_the_sweep_reclaims_the_rows,
    counters_add_up_across_instances,
    touch_and_expire_reach_another_instance,
    the_byte_cap_evicts_the_least_recently_used_rows,
);

fn key(ns: &str, name: &str) -> CacheKey {
    CacheKey::new(ns, name).unwrap()
}

/// [`common::until_gone`] within 10 s.
async fn until_gone(vault: &Vault, keys: &[&CacheKey]) {
    crate::common::until_gone(vault, keys, Duration::from_secs(10)).await;
}

async fn sets_reach_l2_at_the_flush_and_every_size_round_trips(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let other = t.another().await;
    let cache = t.vault.cache();
    let sizes = [0usize, 1, 4096, 64 * 1024 + 1, 8 << 20];
    let value = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 31 % 251) as u8).collect() };
    let k = key("v", "1");
    cache.set(&k, &value(1)).await.unwrap();
    assert_eq!(&*cache.get(&k).await.unwrap().unwrap(), &value(1)[..]);
    assert!(
        other.cache().get(&k).await.unwrap().is_none(),
        "write-behind: not in L2 before the flush"
    );
    // (8 MiB fills the write buffer: that set flushes at once.)
    for n in sizes {
        cache
            .set(&key("v", &n.to_string()), &value(n))
            .await
            .unwrap();
    }
    t.vault.flush().await.unwrap();
    for n in sizes {
        let got = other.cache().get(&key("v", &n.to_string())).await.unwrap();
        assert_eq!(got.as_deref(), Some(&value(n)[..]), "{n} bytes");
    }
    // Promoted, so the second read is L1's, unless the flush's change
    // record arrived in between (on PostgreSQL it may arrive after the
    // reads) and dropped the copy, which L2 then serves again.
    other.cache().get(&k).await.unwrap().unwrap();
    let stats = other.cache().stats().await.unwrap();
    assert_eq!(stats.l2.hits + stats.l1.hits, 6, "{stats:?}");
    assert!(stats.l2.hits >= 5, "{stats:?}");
    assert_eq!(stats.l2.misses, 1, "the read before the flush");
    assert_eq!(stats.l2.entries, 5);
    assert!(
        stats.l2.value_bytes > stats.l2.bytes,
        "the 8 MiB value is compressed: {stats:?}"
    );
    assert!(
        other
            .cache()
            .get(&key("v", "nope"))
            .await
            .unwrap()
            .is_none()
    );
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn invalidations_reach_l2_and_the_other_instances_memory(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let other = t.another().await;
    let cache = t.vault.cache();
    let tagged = SetOptions::new().tag("playlist:7");
    let a = key("p", "a");
    let b = key("p", "b");
    let u1 = key("tracks", "9:u1").for_user("u1").unwrap();
    let u2 = key("tracks", "9:u2").for_user("u2").unwrap();
    let search = key("search", "q");
    let plain = key("p", "plain");
    cache.set_with(&a, b"a", &tagged).await.unwrap();
    cache
        .set_with(&b, b"b", &tagged.clone().tag("other"))
        .await
        .unwrap();
    for k in [&u1, &u2, &search, &plain] {
        cache.set(k, b"v").await.unwrap();
    }
    t.vault.flush().await.unwrap();
    assert_eq!(
        other.cache().keys_of_user("u1").await.unwrap(),
        [u1.as_str()]
    );
    // The other instance holds them all in L1.
    for k in [&a, &b, &u1, &u2, &search, &plain] {
        assert!(other.cache().get(k).await.unwrap().is_some(), "{k}");
    }
    // Buffered only, never flushed, when invalidated.
    let d = key("p", "d");
    cache.set_with(&d, b"d", &tagged).await.unwrap();

    assert_eq!(cache.invalidate_tag("playlist:7").await.unwrap(), 3);
    until_gone(&other, &[&a, &b]).await;
    assert!(
        cache.get(&d).await.unwrap().is_none(),
        "gone from the buffer"
    );
    assert_eq!(cache.clear_user("u1").await.unwrap(), 1);
    until_gone(&other, &[&u1]).await;
    assert!(other.cache().get(&u2).await.unwrap().is_some());
    assert_eq!(cache.clear_namespace("search").await.unwrap(), 1);
    until_gone(&other, &[&search]).await;
    assert!(cache.delete(&plain).await.unwrap());
    assert!(!cache.delete(&plain).await.unwrap(), "only once");
    until_gone(&other, &[&plain]).await;
    assert!(other.cache().exists(&u2).await.unwrap());
    assert_eq!(cache.clear().await.unwrap(), 1);
    until_gone(&other, &[&u2]).await;

    // Nothing comes back from a flush, or from L2 to a new instance.
    t.vault.flush().await.unwrap();
    let third = t.another().await;
    for k in [&a, &b, &d, &u1, &u2, &search, &plain] {
        assert!(third.cache().get(k).await.unwrap().is_none(), "{k}");
    }
    assert!(third.cache().namespaces().await.unwrap().is_empty());
    third.close().await.unwrap();
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn expiry_follows_the_clock_and_the_sweep_reclaims_the_rows(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let cache = t.vault.cache();
    let short = key("other", "short");
    let search = key("search", "q");
    let forever = key("other", "forever");
    cache
        .set_with(
            &short,
            b"x",
            &SetOptions::new().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    cache.set(&search, b"s").await.unwrap();
    cache
        .set_with(&forever, b"f", &SetOptions::new().never_expires())
        .await
        .unwrap();
    t.vault.flush().await.unwrap();
    let other = t.another().await;
    t.clock.advance(Duration::from_secs(11));
    assert!(cache.get(&short).await.unwrap().is_none());
    assert!(other.cache().get(&short).await.unwrap().is_none(), "L2 too");
    assert!(other.cache().get(&search).await.unwrap().is_some());
    t.clock.advance(Duration::from_secs(5 * 60));
    assert!(other.cache().get(&search).await.unwrap().is_none(), "5 min");
    let namespaces = other.cache().namespaces().await.unwrap();
    assert_eq!(
        namespaces.iter().map(|n| n.expired_entries).sum::<u64>(),
        2,
        "expired rows wait for a sweep: {namespaces:?}"
    );
    let report = t.vault.sweep().await.unwrap();
    assert_eq!(report.removed["cache_entries"], 2, "{report:?}");
    let stats = other.cache().stats().await.unwrap();
    assert_eq!((stats.l2.entries, stats.l2.expired_entries), (1, 0));
    assert!(other.cache().get(&forever).await.unwrap().is_some());
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn counters_add_up_across_instances(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let other = t.another().await;
    let k = key("counters", "hits");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let v = if i % 2 == 0 {
            t.vault.clone()
        } else {
            other.clone()
        };
        let k = k.clone();
        tasks.push(tokio::spawn(
            async move { v.cache().incr(&k, 1).await.unwrap() },
        ));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<i64>>(), "no increment lost");
    assert_eq!(other.cache().decr(&k, 50).await.unwrap(), -10);
    assert_eq!(&*t.vault.cache().get(&k).await.unwrap().unwrap(), b"-10");
    let text = key("counters", "text");
    t.vault.cache().set(&text, b"abc").await.unwrap();
    assert!(matches!(
        t.vault.cache().incr(&text, 1).await,
        Err(Error::InvalidInput { .. })
    ));
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn touch_and_expire_reach_another_instance(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let cache = t.vault.cache();
    let (a, b) = (key("search", "a"), key("search", "b"));
    cache.set(&a, b"a").await.unwrap();
    cache.set(&b, b"b").await.unwrap();
    t.vault.flush().await.unwrap();
    t.clock.advance(Duration::from_secs(4 * 60));
    let hour = Some(Duration::from_secs(3600));
    assert!(cache.touch(&a, hour).await.unwrap());
    t.clock.advance(Duration::from_secs(2 * 60));
    let other = t.another().await;
    assert!(other.cache().get(&a).await.unwrap().is_some(), "touched");
    assert!(
        other.cache().get(&b).await.unwrap().is_none(),
        "not touched"
    );
    assert!(!cache.touch(&b, None).await.unwrap());
    assert!(cache.expire(&a, Duration::ZERO).await.unwrap());
    assert!(cache.get(&a).await.unwrap().is_none());
    until_gone(&other, &[&a]).await;
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

/// Ten values of 5000 bytes under a cap of 40 000 stored bytes: the oldest
/// go, however many the backend's own overhead makes it (sealing adds a few
/// bytes a value on PostgreSQL). A read makes an entry recent, so the next
/// eviction takes the one after it.
async fn the_byte_cap_evicts_the_least_recently_used_rows(backend: Backend) {
    let config = CacheConfig::default()
        .l2_bytes(40_000)
        .raw_below(usize::MAX)
        .access_resolution(Duration::from_millis(1));
    let Some(t) = backend.open(|o| o.cache(config)).await else {
        return;
    };
    let cache = t.vault.cache();
    let keys: Vec<CacheKey> = (0..10).map(|i| key("m", &i.to_string())).collect();
    for k in &keys {
        cache.set(k, &[0; 5000]).await.unwrap();
        t.vault.flush().await.unwrap();
        t.clock.advance(Duration::from_secs(1));
    }
    let stats = cache.stats().await.unwrap();
    assert!(stats.l2.bytes <= 40_000, "{stats:?}");
    let other = t.another().await;
    let mut kept = Vec::new();
    for k in &keys {
        if other.cache().exists(k).await.unwrap() {
            kept.push(k.clone());
        }
    }
    assert!((7..=8).contains(&kept.len()), "{kept:?}");
    assert_eq!(kept[..], keys[10 - kept.len()..], "the oldest went");
    assert!(cache.get(&kept[0]).await.unwrap().is_some());
    t.clock.advance(Duration::from_secs(1));
    cache.set(&key("m", "new"), &[0; 5000]).await.unwrap();
    t.vault.flush().await.unwrap();
    assert!(
        other.cache().exists(&kept[0]).await.unwrap(),
        "read: recent"
    );
    assert!(
        !other.cache().exists(&kept[1]).await.unwrap(),
        "next oldest"
    );
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

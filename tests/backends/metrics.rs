//! The metrics facet's contract, on every backend: points written per
//! interval, merged across instances when read, downsampled and purged.

use std::time::Duration;

use crate::{Backend, contract};

contract!(
    two_instances_points_merge_when_read,
    sweep_downsamples_then_purges,
    the_exposition_has_this_instances_cache_counters,
);

const MINUTE: Duration = Duration::from_secs(60);

async fn two_instances_points_merge_when_read(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let other = t.another().await;
    let start = t.vault.now();
    for (vault, by, ms) in [(&t.vault, 2.0, 10), (&other, 3.0, 30)] {
        vault.metrics().increment("jobs", &[("queue", "a")], by);
        vault
            .metrics()
            .timing("work", &[], Duration::from_millis(ms));
    }
    t.clock.advance(MINUTE);
    // Each instance flushes twice at once: nothing is counted twice or lost.
    let flushes = |vault: statevault::Vault| async move {
        let (a, b) = tokio::join!(vault.flush(), vault.flush());
        a.and(b)
    };
    flushes(t.vault.clone()).await.unwrap();
    flushes(other.clone()).await.unwrap();
    let metrics = t.vault.metrics();
    let series = metrics
        .series("jobs", &[("queue", "a")], start, t.vault.now(), MINUTE)
        .await
        .unwrap();
    let total: f64 = series.iter().map(|p| p.summary.sum).sum();
    assert_eq!(total, 5.0, "{series:?}");
    let work = metrics
        .percentiles("work", &[], start, t.vault.now())
        .await
        .unwrap();
    assert_eq!(work.count, 2);
    assert_eq!(work.min, Some(10.0), "milliseconds");
    assert_eq!(work.max, Some(30.0));
    let exposition = metrics.prometheus(Duration::from_secs(3600)).await.unwrap();
    assert!(exposition.contains("jobs_total"), "{exposition}");
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn sweep_downsamples_then_purges(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let metrics = t.vault.metrics();
    let start = t.vault.now();
    for minute in 0..120u64 {
        metrics.observe("t", &[], (minute + 1) as f64);
        t.clock.advance(MINUTE);
    }
    t.vault.flush().await.unwrap();
    let before = metrics
        .percentiles("t", &[], start, t.vault.now())
        .await
        .unwrap();
    assert_eq!(before.count, 120);
    assert_eq!(metrics.sweep().await.unwrap().downsampled, 0);
    t.clock.advance(Duration::from_secs(8 * 86_400));
    let swept = metrics.sweep().await.unwrap();
    assert_eq!((swept.downsampled, swept.purged), (120, 0));
    let after = metrics
        .percentiles("t", &[], start, t.vault.now())
        .await
        .unwrap();
    assert_eq!(before, after, "downsampling merges, it loses nothing");
    t.clock.advance(Duration::from_secs(23 * 86_400));
    let swept = metrics.sweep().await.unwrap();
    assert_eq!(swept.purged, 2, "two hourly points");
    let gone = metrics
        .percentiles("t", &[], start, t.vault.now())
        .await
        .unwrap();
    assert_eq!(gone.count, 0);
    t.vault.close().await.unwrap();
}

/// Every backend's exposition shows this instance's cache counters; only
/// the file has file and WAL sizes (the report's `files` is `None` on
/// PostgreSQL, not zeros). It passes `promtool check metrics`.
async fn the_exposition_has_this_instances_cache_counters(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let key = statevault::CacheKey::new("profile", "ann").unwrap();
    t.vault.cache().set(&key, b"cached").await.unwrap();
    assert!(t.vault.cache().get(&key).await.unwrap().is_some());
    let metrics = t.vault.metrics();
    let exposition = metrics.prometheus(Duration::from_secs(3600)).await.unwrap();
    assert!(
        exposition.contains("statevault_cache_hits_total{level=\"l1\"} 1"),
        "{exposition}"
    );
    let on_file = matches!(backend, Backend::Sqlite);
    assert_eq!(
        exposition.contains("statevault_file_bytes"),
        on_file,
        "{exposition}"
    );
    let report = metrics.report(t.vault.now(), t.vault.now()).await.unwrap();
    assert_eq!(report.files.is_some(), on_file, "{report:?}");
    crate::common::promtool_accepts(&exposition);
    t.vault.close().await.unwrap();
}

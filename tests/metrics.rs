//! Metrics and health: intervals crossed with the fake clock, percentiles
//! within the sketch's error, merges equal to one pass, Prometheus checked
//! by promtool, retention, and every health state.

mod common;

use std::time::Duration;

use sketches_ddsketch::{Config, DDSketch};
use statevault::{
    ClientInfo, HealthConfig, HealthStatus, MAX_BINS, MetricsConfig, NewSession, RELATIVE_ERROR,
    Vault, VaultOptions,
};

const MINUTE: Duration = Duration::from_secs(60);

async fn stored_points(vault: &Vault) -> i64 {
    let rows = vault
        .query_read_only("SELECT count(*) FROM metrics")
        .await
        .unwrap();
    rows.rows[0][0].as_i64().unwrap()
}

fn within(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= want * RELATIVE_ERROR + 1e-9,
        "got {got}, want {want} ± {}%",
        RELATIVE_ERROR * 100.0
    );
}

#[tokio::test]
async fn written_once_per_interval_and_merged_on_reopen() {
    let dir = common::tempdir();
    let (options, clock) = common::options(dir.path(), "m.db");
    let vault = Vault::open(options.clone()).await.unwrap();
    let start = vault.now();
    vault.metrics().increment("jobs", &[("queue", "a")], 2.0);
    vault.metrics().increment("jobs", &[("queue", "a")], 3.0);
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 0, "interval still open");

    clock.advance(MINUTE);
    vault.metrics().increment("jobs", &[("queue", "a")], 1.0);
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 1, "the ended interval only");
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 1, "written once");

    // close writes the open interval; a restart in the same interval merges.
    vault.close().await.unwrap();
    let vault = Vault::open(options).await.unwrap();
    vault.metrics().increment("jobs", &[("queue", "a")], 10.0);
    vault.close().await.unwrap();
    let vault = Vault::open(common::options(dir.path(), "m.db").0)
        .await
        .unwrap();
    let series = vault
        .metrics()
        .series(
            "jobs",
            &[],
            start,
            start.saturating_add(10 * MINUTE),
            MINUTE,
        )
        .await
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].summary.sum, 5.0);
    assert_eq!(series[1].summary.sum, 11.0, "merged, not overwritten");
    assert_eq!(series[1].summary.count, 2);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn percentiles_within_error_and_merge_equals_one_pass() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let start = vault.now();
    let mut one_pass = DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, 1e-9));
    let mut all = Vec::new();
    // 10 intervals of 1000 samples each, from a skewed distribution.
    for minute in 0..10u64 {
        for i in 0..1000u64 {
            let v = 1.0 + ((minute * 1000 + i) * 7919 % 10_000) as f64 * ((i % 7) as f64 + 1.0);
            vault
                .metrics()
                .observe("latency", &[("endpoint", "search")], v);
            one_pass.add(v);
            all.push(v);
        }
        clock.advance(MINUTE);
    }
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 10);
    all.sort_by(f64::total_cmp);
    let exact = |q: f64| all[((q * (all.len() - 1) as f64).round()) as usize];

    let s = vault
        .metrics()
        .percentiles("latency", &[("endpoint", "search")], start, vault.now())
        .await
        .unwrap();
    assert_eq!(s.count, 10_000);
    assert_eq!(s.min, Some(all[0]));
    assert_eq!(s.max, Some(*all.last().unwrap()));
    for (got, q) in [(s.p50, 0.5), (s.p95, 0.95), (s.p99, 0.99)] {
        let got = got.unwrap();
        within(got, exact(q));
        assert_eq!(
            got,
            one_pass.quantile(q).unwrap().unwrap(),
            "merge of 10 points = one pass over all samples"
        );
    }

    // A sub-range is the merge of its own points only.
    let half = vault
        .metrics()
        .percentiles(
            "latency",
            &[],
            start.saturating_add(5 * MINUTE),
            vault.now(),
        )
        .await
        .unwrap();
    assert_eq!(half.count, 5000);

    // Series at a 5-minute resolution: two buckets of 5000.
    let series = vault
        .metrics()
        .series("latency", &[], start, vault.now(), 5 * MINUTE)
        .await
        .unwrap();
    assert_eq!(
        series.iter().map(|p| p.summary.count).collect::<Vec<_>>(),
        [5000, 5000]
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn api_calls_auth_sessions_and_sizes() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let start = vault.now();
    let m = vault.metrics();
    for i in 0..100u16 {
        let status = match i % 10 {
            0 => 500,
            1 => 404,
            _ => 200,
        };
        m.record_api_call(
            "search",
            "GET",
            status,
            Duration::from_millis(u64::from(i)),
            Some("u"),
        );
    }
    m.record_api_call("login", "POST", 200, Duration::from_millis(3), None);
    m.record_auth(true);
    m.record_auth(false);
    m.record_auth(false);
    vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    vault
        .sessions()
        .create(NewSession::new("bob"))
        .await
        .unwrap();
    clock.advance(MINUTE);
    vault.flush().await.unwrap();

    let rates = m.error_rates(start, vault.now()).await.unwrap();
    let search = rates.iter().find(|e| e.endpoint == "search").unwrap();
    assert_eq!(
        (search.requests, search.client_errors, search.server_errors),
        (100, 10, 10)
    );
    assert!((search.error_rate - 0.1).abs() < 1e-9);
    assert_eq!(
        rates
            .iter()
            .find(|e| e.endpoint == "login")
            .unwrap()
            .server_errors,
        0
    );
    let auth = m.auth(start, vault.now()).await.unwrap();
    assert_eq!((auth.success, auth.failure), (1, 2));
    assert_eq!(m.active_sessions().await.unwrap(), 2);
    assert!(m.file_sizes().unwrap().file_bytes > 0);

    let report = m.report(start, vault.now()).await.unwrap();
    assert!(
        report
            .series
            .iter()
            .any(|s| s.name == "api_request_duration")
    );
    assert_eq!(report.active_sessions, 2);
    // Nothing about the user is stored.
    let rows = vault
        .query_read_only("SELECT count(*) FROM metrics WHERE labels LIKE '%\"u\"%'")
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], 0);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn prometheus_exposition_passes_promtool() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let m = vault.metrics();
    for i in 0..50u64 {
        m.record_api_call("search", "GET", 200, Duration::from_millis(i), Some("u"));
    }
    m.record_api_call(
        "weird \"quoted\"\\path\nx",
        "GET",
        503,
        Duration::from_millis(9),
        None,
    );
    m.increment("jobs.done-v2", &[("__x", "1"), ("quantile", "q")], 2.0);
    m.gauge("queue_depth", &[("queue", "a")], 7.0);
    m.observe("empty_window", &[], 1.0);
    clock.advance(MINUTE);
    vault.flush().await.unwrap();
    let text = m.prometheus(Duration::from_secs(3600)).await.unwrap();
    assert!(text.contains("# TYPE api_requests_total counter"), "{text}");
    assert!(
        text.contains("# TYPE api_request_duration_seconds summary"),
        "{text}"
    );
    assert!(text.contains("quantile=\"0.99\""), "{text}");
    assert!(
        text.contains("endpoint=\"weird \\\"quoted\\\"\\\\path\\nx\""),
        "{text}"
    );
    assert!(
        text.contains("jobs_done_v2_total{_x=\"1\",quantile_=\"q\"} 2"),
        "{text}"
    );
    assert!(text.contains("queue_depth{queue=\"a\"} 7"), "{text}");
    assert!(text.contains("statevault_active_sessions 0"), "{text}");
    vault.close().await.unwrap();
    common::promtool_accepts(&text);

    // The CLI prints the same exposition, and JSON.
    let db = dir.path().join("vault.db");
    let out = common::run(
        dir.path(),
        &["--db", db.to_str().unwrap(), "metrics", "--format", "json"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["files"]["file_bytes"].as_u64().unwrap() > 0);
    // A window of no time is refused (its quantiles would all be NaN).
    let out = common::run(
        dir.path(),
        &["--db", db.to_str().unwrap(), "metrics", "--window", "0"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("--window"),
        "{}",
        common::stderr(&out)
    );
}

#[tokio::test]
async fn sweep_downsamples_then_purges() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let start = vault.now();
    for minute in 0..120u64 {
        vault.metrics().observe("t", &[], (minute + 1) as f64);
        clock.advance(MINUTE);
    }
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 120);
    let before = vault
        .metrics()
        .percentiles("t", &[], start, vault.now())
        .await
        .unwrap();

    assert_eq!(vault.metrics().sweep().await.unwrap().downsampled, 0);
    clock.advance(Duration::from_secs(8 * 86_400));
    let swept = vault.metrics().sweep().await.unwrap();
    assert_eq!((swept.downsampled, swept.purged), (120, 0));
    assert_eq!(stored_points(&vault).await, 2, "two hourly points");
    let after = vault
        .metrics()
        .percentiles("t", &[], start, vault.now())
        .await
        .unwrap();
    assert_eq!(before, after, "downsampling merges, it loses nothing");

    clock.advance(Duration::from_secs(23 * 86_400));
    let swept = vault.metrics().sweep().await.unwrap();
    assert_eq!(swept.purged, 2);
    assert_eq!(stored_points(&vault).await, 0);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn configurable_interval_and_bad_config() {
    let dir = common::tempdir();
    let (options, clock) = common::options(dir.path(), "i.db");
    let vault = Vault::open(options.metrics(MetricsConfig {
        interval: Duration::from_secs(10),
        ..MetricsConfig::default()
    }))
    .await
    .unwrap();
    vault.metrics().increment("c", &[], 1.0);
    clock.advance(Duration::from_secs(10));
    vault.flush().await.unwrap();
    assert_eq!(stored_points(&vault).await, 1);
    // Bad input is dropped, never a panic.
    vault
        .metrics()
        .increment("c", &[("a", "1"), ("a", "2")], 1.0);
    vault.metrics().observe("c", &[], f64::NAN);
    vault.metrics().increment("c", &[], -1.0);
    vault.close().await.unwrap();

    let err = Vault::open(
        VaultOptions::new(dir.path().join("x.db")).metrics(MetricsConfig {
            interval: Duration::from_millis(1500),
            ..MetricsConfig::default()
        }),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
}

#[tokio::test]
async fn health_every_state() {
    let dir = common::tempdir();
    let (options, clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.health(ignore_the_disk()))
        .await
        .unwrap();
    let report = vault.health().await;
    assert_eq!(report.status, HealthStatus::Healthy, "{report:#?}");
    assert_eq!(report.components.len(), 8);

    // Key older than its rotation period: warning.
    clock.advance(Duration::from_secs(91 * 86_400));
    let report = vault.health().await;
    assert_eq!(
        report.component("key_age").unwrap().status,
        HealthStatus::Warning
    );
    assert_eq!(report.status, HealthStatus::Warning);

    // Key file readable by others: critical.
    let key = statevault::default_key_file(vault.path());
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let report = vault.health().await;
    let c = report.component("key_file").unwrap();
    assert_eq!(c.status, HealthStatus::Critical);
    assert!(c.reason.contains("0644"), "{}", c.reason);
    assert_eq!(report.status.exit_code(), 2);
    common::chmod_private(&key);

    // Closed: the file cannot take a write.
    vault.close().await.unwrap();
    let report = vault.health().await;
    assert_eq!(
        report.component("file").unwrap().status,
        HealthStatus::Critical
    );
}

/// `PRAGMA quick_check` reads the whole file: a report reuses the last
/// answer for `integrity_interval` on the vault's clock and says how old it
/// is (it ran on every report, say every load-balancer probe).
#[tokio::test]
async fn health_reuses_a_recent_integrity_check() {
    let dir = common::tempdir();
    let (options, clock) = common::options(dir.path(), "h.db");
    let config = HealthConfig {
        integrity_interval: Duration::from_secs(600),
        ..HealthConfig::default()
    };
    let vault = Vault::open(options.health(config)).await.unwrap();
    let integrity = |report: &statevault::HealthReport| {
        let c = report.component("integrity").unwrap();
        assert_eq!(c.status, HealthStatus::Healthy, "{c:?}");
        c.reason.clone()
    };
    let first = integrity(&vault.health().await);
    assert!(first.contains("checked just now"), "{first}");
    clock.advance(Duration::from_secs(120));
    let reused = integrity(&vault.health().await);
    assert!(reused.contains("checked 120 s ago"), "{reused}");
    clock.advance(Duration::from_secs(480));
    let again = integrity(&vault.health().await);
    assert!(again.contains("checked just now"), "{again}");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn health_thresholds() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "h.db");
    let strict = HealthConfig {
        disk_warning_free: 1.0,
        wal_warning_bytes: 0,
        violation_warning: 0,
        ..HealthConfig::default()
    };
    let vault = Vault::open(options.clone().health(strict)).await.unwrap();
    vault.metrics().increment("c", &[], 1.0);
    vault.metrics().flush_all().await.unwrap(); // the WAL is not empty
    for _ in 0..6 {
        let _ = vault
            .limits()
            .check("mallory", "auth_attempts", 1, &ClientInfo::none())
            .await
            .unwrap();
    }
    let report = vault.health().await;
    for name in ["disk", "wal", "violations"] {
        assert_eq!(
            report.component(name).unwrap().status,
            HealthStatus::Warning,
            "{name}: {report:#?}"
        );
    }
    vault.close().await.unwrap();

    let critical = HealthConfig {
        disk_warning_free: 1.0,
        disk_critical_free: 1.0,
        wal_warning_bytes: 0,
        wal_critical_bytes: 0,
        violation_warning: 0,
        violation_critical: 0,
        ..HealthConfig::default()
    };
    let vault = Vault::open(options.health(critical)).await.unwrap();
    vault.metrics().increment("c", &[], 1.0);
    vault.metrics().flush_all().await.unwrap(); // the WAL is not empty
    let report = vault.health().await;
    for name in ["disk", "wal", "violations"] {
        assert_eq!(
            report.component(name).unwrap().status,
            HealthStatus::Critical,
            "{name}: {report:#?}"
        );
    }
    vault.close().await.unwrap();
}

/// Free disk space is the machine's, not the test's (CI ran with 9.8 %
/// free): tests that expect a healthy report take it out of the verdict.
/// `health_thresholds` covers the disk component.
fn ignore_the_disk() -> HealthConfig {
    HealthConfig {
        disk_warning_free: 0.0,
        disk_critical_free: 0.0,
        ..HealthConfig::default()
    }
}

#[test]
fn health_cli_exit_codes() {
    let dir = common::tempdir();
    std::fs::write(
        dir.path().join("statevault.toml"),
        "[health]\ndisk_warning_free_percent = 0\ndisk_critical_free_percent = 0\n",
    )
    .unwrap();
    let out = common::run(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::run(dir.path(), &["health", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json["status"], "healthy");

    let key = statevault::default_key_file(&dir.path().join("statevault.db"));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = common::run(dir.path(), &["health"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stdout(&out));
    assert!(
        common::stdout(&out).contains("mode 640"),
        "{}",
        common::stdout(&out)
    );

    let out = common::run(dir.path(), &["--no-encryption", "--db", "plain.db", "init"]);
    assert!(out.status.success());
    let out = common::run(
        dir.path(),
        &["--no-encryption", "--db", "plain.db", "health"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::stdout(&out));

    let out = common::run(dir.path(), &["--db", "missing.db", "health", "--json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn coarse_system_time_is_close_to_now() {
    use statevault::{Clock, SystemClock};
    let coarse = SystemClock.now_coarse();
    let now = SystemClock.now();
    let apart = now.duration_since(coarse).max(coarse.duration_since(now));
    assert!(apart < Duration::from_millis(100), "{coarse:?} vs {now:?}");
}

#[tokio::test]
async fn a_failed_write_keeps_its_points() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let start = vault.now();
    vault.metrics().observe("t", &[], 5.0);
    clock.advance(MINUTE);
    let raw = common::raw_connection(vault.path());
    raw.execute_batch("ALTER TABLE metrics RENAME TO metrics_away")
        .unwrap();
    assert!(vault.flush().await.is_err(), "no table to write to");
    raw.execute_batch("ALTER TABLE metrics_away RENAME TO metrics")
        .unwrap();
    drop(raw);
    vault.flush().await.unwrap();
    let p = vault
        .metrics()
        .percentiles("t", &[], start, vault.now())
        .await
        .unwrap();
    assert_eq!((p.count, p.max), (1, Some(5.0)));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_low_cache_hit_ratio_is_a_warning_once_there_are_enough_lookups() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "cache_health.db");
    let config = HealthConfig {
        cache_min_lookups: 20,
        ..HealthConfig::default()
    };
    let vault = Vault::open(options.health(config)).await.unwrap();
    let status = |report: &statevault::HealthReport| report.component("cache").unwrap().status;

    for i in 0..10 {
        let key = statevault::CacheKey::new("search", &format!("q{i}")).unwrap();
        assert!(vault.cache().get(&key).await.unwrap().is_none());
    }
    assert_eq!(
        status(&vault.health().await),
        HealthStatus::Healthy,
        "10 lookups: too few to judge"
    );
    for i in 10..30 {
        let key = statevault::CacheKey::new("search", &format!("q{i}")).unwrap();
        assert!(vault.cache().get(&key).await.unwrap().is_none());
    }
    let report = vault.health().await;
    assert_eq!(status(&report), HealthStatus::Warning, "{report:?}");
    assert!(
        report
            .component("cache")
            .unwrap()
            .reason
            .contains("hit ratio 0.0 %"),
        "{report:?}"
    );

    let key = statevault::CacheKey::new("search", "hot").unwrap();
    vault.cache().set(&key, b"x").await.unwrap();
    for _ in 0..100 {
        assert!(vault.cache().get(&key).await.unwrap().is_some());
    }
    assert_eq!(status(&vault.health().await), HealthStatus::Healthy);
    let swept = vault.sweep().await.unwrap();
    assert!(swept.removed.contains_key("metrics"), "{swept:?}");
    vault.close().await.unwrap();
}

//! The `metrics` facade (feature `metrics`): `counter!`, `gauge!` and
//! `histogram!` recorded through the vault's recorder appear in its
//! Prometheus exposition with their labels, values and quantiles, and
//! promtool accepts it. Each test records through a local recorder, so tests
//! never share the process's global one (`metrics_facade_global.rs` installs
//! that, alone in its binary).

#![cfg(feature = "metrics")]

mod common;

use std::time::Duration;

use metrics::Unit;
use statevault::{RELATIVE_ERROR, Vault};

const HOUR: Duration = Duration::from_secs(3600);

/// The value of the exposition's sample line that starts with `series `.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line[series.len() + 1..].parse().expect("a number")
}

fn within(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= want * RELATIVE_ERROR + 1e-9,
        "got {got}, want {want} ± {}%",
        RELATIVE_ERROR * 100.0
    );
}

/// Everything recorded so far, written, as Prometheus text.
async fn exposition(vault: &Vault) -> String {
    vault.metrics().flush_all().await.unwrap();
    vault.metrics().prometheus(HOUR).await.unwrap()
}

#[tokio::test]
async fn counters_gauges_and_histograms_reach_the_exposition() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let recorder = vault.metrics().recorder();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..3 {
            metrics::counter!("jobs_done", "queue" => "mail", "tier" => "a").increment(2);
        }
        metrics::counter!("jobs_done", "queue" => "sms", "tier" => "a").increment(1);
        // Labels in another order name the same series.
        metrics::counter!("jobs_done", "tier" => "a", "queue" => "sms").increment(1);
        let handle = metrics::counter!("polls_total");
        handle.increment(5);
        handle.absolute(12); // at least 12: 7 more
        handle.absolute(3); // already past it: nothing

        metrics::gauge!("queue_depth", "queue" => "mail").set(10.0);
        metrics::gauge!("queue_depth", "queue" => "mail").increment(4.5);
        metrics::gauge!("queue_depth", "queue" => "mail").decrement(2.0);
        metrics::gauge!("workers").set(3.0);

        // 1 ms .. 100 ms, in seconds as the facade expects by default.
        for ms in 1..=100 {
            metrics::histogram!("job_duration_seconds", "queue" => "mail")
                .record(f64::from(ms) / 1e3);
        }
    });
    let text = exposition(&vault).await;

    assert!(text.contains("# TYPE jobs_done_total counter"), "{text}");
    assert_eq!(
        sample(&text, "jobs_done_total{queue=\"mail\",tier=\"a\"}"),
        6.0
    );
    assert_eq!(
        sample(&text, "jobs_done_total{queue=\"sms\",tier=\"a\"}"),
        2.0
    );
    assert_eq!(sample(&text, "polls_total"), 12.0);
    assert!(text.contains("# TYPE queue_depth gauge"), "{text}");
    assert_eq!(sample(&text, "queue_depth{queue=\"mail\"}"), 12.5);
    assert_eq!(sample(&text, "workers"), 3.0);

    assert!(
        text.contains("# TYPE job_duration_seconds summary"),
        "{text}"
    );
    let q = |p: &str| {
        sample(
            &text,
            &format!("job_duration_seconds{{quantile=\"{p}\",queue=\"mail\"}}"),
        )
    };
    within(q("0.5"), 0.050);
    within(q("0.95"), 0.095);
    within(q("0.99"), 0.099);
    assert_eq!(
        sample(&text, "job_duration_seconds_count{queue=\"mail\"}"),
        100.0
    );
    within(
        sample(&text, "job_duration_seconds_sum{queue=\"mail\"}"),
        5.05,
    );
    common::promtool_accepts(&text);
    vault.close().await.unwrap();
}

/// A histogram described in milliseconds is converted to seconds; one in a
/// unit that is not time shows its values unchanged.
#[tokio::test]
async fn described_units_convert_histograms() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let recorder = vault.metrics().recorder();
    metrics::with_local_recorder(&recorder, || {
        // A handle taken before the description follows it too.
        let early = metrics::histogram!("render_ms");
        metrics::describe_histogram!("render_ms", Unit::Milliseconds, "Render time.");
        early.record(250.0);
        metrics::histogram!("render_ms").record(250.0);
        metrics::describe_histogram!("payload", Unit::Bytes, "Payload size.");
        metrics::histogram!("payload").record(4096.0);
    });
    let text = exposition(&vault).await;
    within(sample(&text, "render_ms_seconds_sum"), 0.5);
    within(sample(&text, "render_ms_seconds{quantile=\"0.99\"}"), 0.25);
    within(sample(&text, "payload_seconds{quantile=\"0.5\"}"), 4096.0);
    vault.close().await.unwrap();
}

/// Series are kept per interval like the facet's own: a counter recorded in
/// two intervals is written as two points and exposed as their total.
#[tokio::test]
async fn intervals_follow_the_vault_clock() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let recorder = vault.metrics().recorder();
    let start = vault.now();
    metrics::with_local_recorder(&recorder, || metrics::counter!("ticks").increment(1));
    clock.advance(Duration::from_secs(60));
    metrics::with_local_recorder(&recorder, || metrics::counter!("ticks").increment(2));
    clock.advance(Duration::from_secs(60));
    vault.flush().await.unwrap();
    let points = vault
        .metrics()
        .series("ticks", &[], start, vault.now(), Duration::from_secs(60))
        .await
        .unwrap();
    let sums: Vec<f64> = points.iter().map(|p| p.summary.sum).collect();
    assert_eq!(sums, [1.0, 2.0]);
    assert_eq!(
        sample(
            &vault.metrics().prometheus(HOUR).await.unwrap(),
            "ticks_total"
        ),
        3.0
    );
    vault.close().await.unwrap();
}

/// The recorder holds no vault: once the vault is closed, its calls are
/// dropped without a panic, and nothing they recorded reaches the file.
#[tokio::test]
async fn a_closed_vault_drops_what_the_recorder_gets() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.clone()).await.unwrap();
    let recorder = vault.metrics().recorder();
    metrics::with_local_recorder(&recorder, || metrics::counter!("before").increment(1));
    vault.close().await.unwrap();
    drop(vault);
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("before").increment(1);
        metrics::counter!("after").increment(1);
        metrics::gauge!("after_gauge").set(1.0);
        metrics::histogram!("after_seconds").record(1.0);
    });

    let vault = Vault::open(options).await.unwrap();
    let text = exposition(&vault).await;
    assert_eq!(sample(&text, "before_total"), 1.0);
    assert!(!text.contains("after"), "{text}");
    vault.close().await.unwrap();
}

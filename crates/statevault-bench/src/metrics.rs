//! `metrics_record`: recording a timing with labels (`vault.metrics()`,
//! in memory, sharded), from one task and from several tasks at once,
//! beside the sketch crate alone (`DDSketch::add` of the same values into a
//! bare sketch, one per task), in the same run, alternating, best of three
//! rounds each (one with `--quick`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sketches_ddsketch::{Config, DDSketch};
use statevault::{MAX_BINS, RELATIVE_ERROR, Result, Vault};

use crate::harness::{Budget, per_sec};

const BATCH: u64 = 1000;
const ENDPOINTS: [&str; 8] = [
    "search", "track", "album", "artist", "playlist", "user", "login", "stream",
];
/// Alternating rounds of each measurement (one with `--quick`); the best
/// of each is reported.
const ROUNDS: usize = 3;
/// Tasks in the many-task run (this machine has 2 cores).
const TASKS: usize = 4;

/// A duration-like value in milliseconds, varied so the sketch uses many bins.
fn value(i: u64) -> f64 {
    0.5 + (i.wrapping_mul(2_654_435_761) % 100_000) as f64 / 100.0
}

fn bare_sketch(budget: Budget) -> (u64, Duration, f64) {
    let mut sketch = DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, 1e-9));
    let started = Instant::now();
    let mut n = 0;
    while !budget.spent(started, n) {
        for i in n..n + BATCH {
            sketch.add(value(i));
        }
        n += BATCH;
    }
    let took = started.elapsed();
    (n, took, sketch.quantile(0.5).ok().flatten().unwrap_or(0.0))
}

fn record(vault: &Vault, endpoint: &str, budget: Budget) -> (u64, Duration) {
    let metrics = vault.metrics();
    let started = Instant::now();
    let mut n = 0;
    while !budget.spent(started, n) {
        for i in n..n + BATCH {
            metrics.observe(
                "request_duration",
                &[("endpoint", endpoint), ("method", "GET")],
                value(i),
            );
        }
        n += BATCH;
    }
    (n, started.elapsed())
}

pub async fn record_metrics(dir: &Path, budget: Budget, quick: bool) -> Result<Value> {
    let rounds = if quick { 1 } else { ROUNDS };
    let vault = Vault::open(crate::harness::options(&dir.join("metrics_record.db"))).await?;

    // Alternate the two, best of three each: the machine is shared, and a
    // neighbour's burst should not land on one side only.
    let (mut one, mut bare_one) = (0.0f64, 0.0f64);
    for _ in 0..rounds {
        let (n, took) = record(&vault, "search", budget);
        one = one.max(per_sec(n, took));
        let (m, took_bare, _) = bare_sketch(budget);
        bare_one = bare_one.max(per_sec(m, took_bare));
    }

    let started = Instant::now();
    let mut k = 0;
    while !budget.spent(started, k) {
        for i in k..k + BATCH {
            vault.metrics().record_api_call(
                ENDPOINTS[(i % 8) as usize],
                "GET",
                if i % 50 == 0 { 500 } else { 200 },
                Duration::from_micros(500 + i % 100_000),
                Some("alice"),
            );
        }
        k += BATCH;
    }
    let api_calls = per_sec(k, started.elapsed());

    let (mut ours_many, mut bare_many) = (0.0f64, 0.0f64);
    for _ in 0..rounds {
        let (ours, bare) = many(&vault, budget).await;
        ours_many = ours_many.max(ours);
        bare_many = bare_many.max(bare);
    }
    vault.close().await?;
    Ok(json!({
        "ops_per_sec": one,
        "baseline": "sketches-ddsketch DDSketch::add into a bare sketch, same values",
        "baseline_ops_per_sec": bare_one,
        "ratio": one / bare_one,
        "tasks": TASKS,
        "many_tasks_ops_per_sec": ours_many,
        "many_tasks_baseline_ops_per_sec": bare_many,
        "many_tasks_ratio": ours_many / bare_many,
        "record_api_call_per_sec": api_calls,
    }))
}

/// Total records/s of `TASKS` tasks each recording its own endpoint, then
/// of `TASKS` tasks each adding to its own bare sketch.
async fn many(vault: &Vault, budget: Budget) -> (f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let vault = vault.clone();
            tokio::spawn(async move { record(&vault, ENDPOINTS[t], budget).0 })
        })
        .collect();
    let mut n = 0;
    for task in tasks {
        n += task.await.unwrap_or(0);
    }
    let ours = per_sec(n, started.elapsed());

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(async move { bare_sketch(budget).0 }))
        .collect();
    let mut m = 0;
    for task in tasks {
        m += task.await.unwrap_or(0);
    }
    (ours, per_sec(m, started.elapsed()))
}

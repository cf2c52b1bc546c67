//! `metrics_record`: a timing recorded with labels (in memory), from one
//! thread and from four at once, beside `DDSketch::add` into a bare sketch,
//! and `record_api_call` (a counter and a timing per call).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sketches_ddsketch::{Config, DDSketch};
use statevault::{MAX_BINS, RELATIVE_ERROR, Vault, VaultOptions};

const N: u64 = 1000;
const THREADS: usize = 4;

fn value(i: u64) -> f64 {
    0.5 + (i.wrapping_mul(2_654_435_761) % 100_000) as f64 / 100.0
}

fn metrics(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = rt
        .block_on(Vault::open(VaultOptions::new(dir.path().join("bench.db"))))
        .unwrap();
    let mut group = c.benchmark_group("metrics_record");
    group.throughput(Throughput::Elements(N));
    group.bench_function("observe_one_thread", |b| {
        b.iter(|| {
            for i in 0..N {
                vault.metrics().observe(
                    "latency",
                    &[("endpoint", "search"), ("method", "GET")],
                    value(i),
                );
            }
        })
    });
    group.bench_function("bare_ddsketch_add", |b| {
        let mut sketch = DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, 1e-9));
        b.iter(|| {
            for i in 0..N {
                sketch.add(value(i));
            }
        })
    });
    group.bench_function("record_api_call", |b| {
        b.iter(|| {
            for i in 0..N {
                vault.metrics().record_api_call(
                    "search",
                    "GET",
                    200,
                    Duration::from_micros(500 + i),
                    Some("alice"),
                );
            }
        })
    });
    group.throughput(Throughput::Elements(N * THREADS as u64));
    group.bench_function("observe_4_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let vault = &vault;
                    s.spawn(move || {
                        let endpoint = ["search", "track", "album", "artist"][t];
                        for i in 0..N {
                            vault
                                .metrics()
                                .observe("latency", &[("endpoint", endpoint)], value(i));
                        }
                    });
                }
            })
        })
    });
    group.bench_function("bare_ddsketch_4_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        let mut sketch = DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, 1e-9));
                        for i in 0..N {
                            sketch.add(value(i));
                        }
                        sketch.count()
                    });
                }
            })
        })
    });
    group.finish();
    rt.block_on(vault.close()).unwrap();
}

criterion_group!(benches, metrics);
criterion_main!(benches);

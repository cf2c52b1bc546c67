//! `audit_append`: 1000 events appended with the hash chain and written by
//! one flush (group commit).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statevault::{AuditEvent, EventKind, Vault, VaultOptions};

fn audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = rt
        .block_on(Vault::open(VaultOptions::new(dir.path().join("bench.db"))))
        .unwrap();
    let mut group = c.benchmark_group("audit_append");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000_events_one_flush", |b| {
        b.iter(|| {
            for i in 0..1000 {
                let event = AuditEvent::new(EventKind::ApiCall, "search")
                    .user(format!("user-{}", i % 100))
                    .resource("query", i.to_string())
                    .details(serde_json::json!({"status": 200, "ms": 12}));
                vault.audit().append(event).unwrap();
            }
            rt.block_on(vault.flush()).unwrap();
        })
    });
    group.finish();
    rt.block_on(vault.close()).unwrap();
}

criterion_group!(benches, audit);
criterion_main!(benches);

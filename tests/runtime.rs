//! Work a request waits on never blocks the async runtime's thread while
//! the vault's own writer needs that thread to finish: on a
//! `current_thread` runtime (every doc example uses one) that was a certain
//! stall of `busy_timeout` (5 s) and then SQLITE_BUSY.

mod common;

use std::time::{Duration, Instant};

use statevault::{AuditEvent, ClientInfo, EventKind, LimitsConfig, Vault};

/// Shared-mode checks, with the flusher's transactions (held across its
/// `.await`s on the sqlx writer) running beside them on the same thread.
/// Prints the longest check; asserts only that none failed.
#[tokio::test(flavor = "current_thread")]
async fn shared_limit_checks_beside_flushes_on_a_current_thread_runtime() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "runtime.db");
    let vault = Vault::open(options.limits(LimitsConfig::default().shared(true)))
        .await
        .unwrap();
    let flusher = vault.clone();
    let writes = tokio::spawn(async move {
        for round in 0..30 {
            for i in 0..100 {
                let event = AuditEvent::new(EventKind::ApiCall, "search").user(format!("u{i}"));
                flusher.audit().append(event).unwrap();
            }
            flusher.limits().reset(&format!("u{round}")).await.unwrap();
            flusher.flush().await.unwrap();
        }
    });
    let mut worst = Duration::ZERO;
    let mut checks = 0;
    while !writes.is_finished() {
        let started = Instant::now();
        vault
            .limits()
            .check(
                &format!("u{}", checks % 50),
                "api_calls",
                1,
                &ClientInfo::none(),
            )
            .await
            .unwrap();
        worst = worst.max(started.elapsed());
        checks += 1;
        tokio::task::yield_now().await;
    }
    writes.await.unwrap();
    println!("{checks} shared checks beside 30 flushes and resets: the longest took {worst:?}");
    vault.close().await.unwrap();
}

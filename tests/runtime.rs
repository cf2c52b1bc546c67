//! Work a request waits on never blocks the async runtime's thread while
//! the vault's own writer needs that thread to finish: on a
//! `current_thread` runtime (every doc example uses one) that was a certain
//! stall of `busy_timeout` (5 s) and then SQLITE_BUSY. Nor does a
//! connection's PBKDF2 run on it.
//!
//! The tests print how long the runtime's thread was held (a heartbeat task
//! notes the longest gap between its turns); they assert only outcomes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use statevault::{AuditEvent, CacheKey, ClientInfo, EventKind, Key, LimitsConfig, Vault};
use tokio::task::JoinHandle;

/// Shared-mode checks, with the flusher's transactions (held across its
/// `.await`s on the sqlx writer) running beside them on the same thread.
/// Prints the longest check and the longest stall of the runtime; asserts
/// only that no check failed (before the fix the first overlap failed with
/// SQLITE_BUSY after 5.3 s).
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
    let heartbeat = Heartbeat::start();
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
    let stall = heartbeat.stop().await;
    println!(
        "{checks} shared checks beside 30 flushes and resets: the longest took {worst:?}, \
         the runtime's thread was held at most {stall:?}"
    );
    vault.close().await.unwrap();
}

/// Hot reads on a passphrase-keyed vault while another thread reads too.
/// Under contention the reader pool grows, and opening a reader runs
/// PBKDF2 (~200 ms): that runs on a blocking-pool thread now, not in the
/// read that met the contention. Prints the longest stall of the runtime.
#[tokio::test(flavor = "current_thread")]
async fn hot_readers_open_off_the_runtime_thread() {
    let dir = common::tempdir();
    let key = Key::passphrase("correct horse battery staple").unwrap();
    let vault = Vault::open(
        statevault::VaultOptions::new(dir.path().join("pass.db"))
            .key(key)
            .readers(4),
    )
    .await
    .unwrap();
    let absent = CacheKey::new("t", "absent").unwrap();
    let (other, runtime, k) = (
        vault.clone(),
        tokio::runtime::Handle::current(),
        absent.clone(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let elsewhere = std::thread::spawn(move || {
        let mut reads = 0u64;
        while !stop.load(Ordering::Relaxed) {
            assert!(!runtime.block_on(other.cache().exists(&k)).unwrap());
            reads += 1;
        }
        reads
    });
    let heartbeat = Heartbeat::start();
    let mut worst = Duration::ZERO;
    let mut reads = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        assert!(!vault.cache().exists(&absent).await.unwrap());
        worst = worst.max(t.elapsed());
        reads += 1;
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::Relaxed);
    let theirs = elsewhere.join().unwrap();
    let stall = heartbeat.stop().await;
    println!(
        "{reads} hot reads here beside {theirs} on another thread (passphrase key, 4 readers): \
         the longest took {worst:?}, the runtime's thread was held at most {stall:?}"
    );
    vault.close().await.unwrap();
}

/// Notes the longest time the runtime's thread was held by other tasks: a
/// task that yields in a loop and measures the gaps between its turns.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Duration>,
}

impl Heartbeat {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let before = Instant::now();
                tokio::task::yield_now().await;
                worst = worst.max(before.elapsed());
            }
            worst
        });
        Heartbeat { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

//! Work a request waits on never blocks the async runtime's thread while
//! the vault's own writer needs that thread to finish: on a
//! `current_thread` runtime (every doc example uses one) that was a certain
//! stall of `busy_timeout` (5 s) and then SQLITE_BUSY. Nor does work that
//! grows with the file (a large cache value) or a connection's PBKDF2 run
//! on it.
//!
//! The tests print how long the runtime's thread was held (a heartbeat task
//! notes the longest gap between its turns); they assert only outcomes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use statevault::{
    AuditEvent, CacheKey, ClientInfo, EventKind, Key, LimitsConfig, SetOptions, Vault,
};
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
    let heartbeat = Heartbeat::start().await;
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

/// Opening a passphrase-keyed vault, then hot reads while another thread
/// reads too. Opening a connection runs PBKDF2 (~200 ms): the first at
/// open, and one more each time contention grows the reader pool. It runs
/// on the blocking pool now, not on the runtime's thread. Prints the
/// longest stall of the runtime.
#[tokio::test(flavor = "current_thread")]
async fn hot_readers_open_off_the_runtime_thread() {
    let dir = common::tempdir();
    let key = Key::passphrase("correct horse battery staple").unwrap();
    let options = statevault::VaultOptions::new(dir.path().join("pass.db"))
        .key(key)
        .readers(4);
    Vault::open(options.clone())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let heartbeat = Heartbeat::start().await;
    let started = Instant::now();
    let vault = Vault::open(options).await.unwrap();
    let (took, stall) = (started.elapsed(), heartbeat.stop().await);
    println!("opening took {took:?}; the runtime's thread was held at most {stall:?}");
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
    let heartbeat = Heartbeat::start().await;
    // The longest read, and the CPU time this thread spent in it: PBKDF2
    // here would be ~200 ms of it; the rest is waiting to be scheduled.
    let (mut worst, mut worst_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut reads = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let (t, cpu) = (Instant::now(), thread_cpu());
        assert!(!vault.cache().exists(&absent).await.unwrap());
        if t.elapsed() > worst {
            (worst, worst_cpu) = (t.elapsed(), thread_cpu() - cpu);
        }
        reads += 1;
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::Relaxed);
    let theirs = elsewhere.join().unwrap();
    let stall = heartbeat.stop().await;
    println!(
        "{reads} hot reads here beside {theirs} on another thread (passphrase key, 4 readers): \
         the longest took {worst:?} ({worst_cpu:?} on this thread's CPU), the runtime's \
         thread was held at most {stall:?}"
    );
    vault.close().await.unwrap();
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// A large cache value is read and decoded off the runtime's thread: no
/// allocation of its size happens there (before: the decoded copy, 8 MiB).
#[tokio::test(flavor = "current_thread")]
async fn large_cache_values_are_read_off_the_runtime_thread() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "large.db");
    let vault = Vault::open(options.clone()).await.unwrap();
    let json: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("{{\"id\":{i},\"name\":\"item {i}\"}},").into_bytes())
        .take(8 << 20)
        .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let small = b"{\"small\":true}".to_vec();
    let values = [("json", json), ("noise", noise), ("small", small)];
    for (name, value) in &values {
        let key = CacheKey::new("big", name).unwrap();
        let options = SetOptions::new().never_expires();
        vault.cache().set_with(&key, value, &options).await.unwrap();
    }
    vault.close().await.unwrap();

    // A fresh vault: nothing in L1, every get reads L2.
    let vault = Vault::open(options).await.unwrap();
    for (name, value) in &values {
        let key = CacheKey::new("big", name).unwrap();
        let started = Instant::now();
        let (got, largest) = watched(vault.cache().get(&key)).await;
        let took = started.elapsed();
        assert_eq!(got.unwrap().as_deref(), Some(&value[..]), "{name}");
        println!(
            "{name}: {} bytes in {took:?}; the largest allocation on the runtime's thread was {largest} bytes",
            value.len()
        );
        assert!(largest < 1 << 20, "{name}: {largest} bytes");
    }
    vault.close().await.unwrap();
}

/// Notes the longest time the runtime's thread was held by other tasks: a
/// task that yields in a loop and measures the gaps between its turns.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Duration>,
}

impl Heartbeat {
    /// Starts the task and lets it take its first turn, so that it sees
    /// a stall that begins right after.
    async fn start() -> Self {
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
        tokio::task::yield_now().await;
        Heartbeat { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Runs `work` and returns the largest allocation this thread made meanwhile.
async fn watched<F: Future>(work: F) -> (F::Output, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    WATCHED.with(|w| w.set(true));
    let out = work.await;
    WATCHED.with(|w| w.set(false));
    (out, LARGEST.load(Ordering::Relaxed))
}

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, noting the largest allocation of a watched thread.
struct Watch;

#[global_allocator]
static ALLOCATOR: Watch = Watch;

fn note(size: usize) {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to `System` unchanged; `note` only reads a
// thread-local flag and updates an atomic, and never allocates.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

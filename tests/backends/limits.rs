//! The limits facet's contract, on every backend: shared-mode budgets
//! across instances, refill by the clock, penalties, violations, reset and
//! sweeps, and the in-memory modes written behind.

use std::time::Duration;

use statevault::{ClientInfo, Limit, LimitsConfig, Vault, Window};

use crate::{Backend, contract};

contract!(
    a_shared_budget_is_exact_across_instances,
    many_concurrent_checks_of_many_subjects_allow_each_budget_exactly,
    shared_refill_follows_the_clock_and_a_refusal_starts_a_penalty,
    a_shared_limit_of_two_windows_takes_from_both_or_neither,
    in_memory_buckets_are_written_behind_and_read_back,
    violations_reset_and_sweep,
    a_reset_reaches_another_instance,
);

const NONE: ClientInfo<'static> = ClientInfo {
    ip: None,
    user_agent: None,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn shared(limit: Limit) -> LimitsConfig {
    LimitsConfig::empty().limit("l", limit.shared(true))
}

async fn allowed(vault: &Vault, subject: &str, cost: u32) -> bool {
    vault
        .limits()
        .check(subject, "l", cost, &NONE)
        .await
        .unwrap()
        .allowed
}

/// Three handles (three instances) spending one subject's budget at once:
/// exactly the capacity is allowed, never more.
async fn a_shared_budget_is_exact_across_instances(backend: Backend) {
    let config = || shared(Limit::new().window(Window::per(secs(3600), 50.0)));
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    let (b, c) = (t.another().await, t.another().await);
    let spend = |vault: Vault| async move {
        let mut n = 0;
        for _ in 0..40 {
            n += u32::from(allowed(&vault, "shared-subject", 1).await);
        }
        n
    };
    let (x, y, z) = tokio::join!(
        tokio::spawn(spend(t.vault.clone())),
        tokio::spawn(spend(b.clone())),
        tokio::spawn(spend(c.clone())),
    );
    assert_eq!(x.unwrap() + y.unwrap() + z.unwrap(), 50);
    b.close().await.unwrap();
    c.close().await.unwrap();
    t.vault.close().await.unwrap();
}

/// 64 tasks on two instances checking four subjects at once (on
/// PostgreSQL, checks arriving together share a statement): each subject is
/// allowed exactly its budget, and a refusal is a refusal, whichever
/// statement answered it.
async fn many_concurrent_checks_of_many_subjects_allow_each_budget_exactly(backend: Backend) {
    let config = || shared(Limit::new().window(Window::per(secs(3600), 100.0)));
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    let other = t.another().await;
    let mut tasks = Vec::new();
    for task in 0..64u32 {
        let vault = if task % 2 == 0 {
            t.vault.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = [0u32; 4];
            for i in 0..10u32 {
                let subject = (task + i) % 4;
                mine[subject as usize] +=
                    u32::from(allowed(&vault, &format!("s{subject}"), 1).await);
            }
            mine
        }));
    }
    let mut total = [0u32; 4];
    for task in tasks {
        for (sum, n) in total.iter_mut().zip(task.await.unwrap()) {
            *sum += n;
        }
    }
    assert_eq!(total, [100; 4], "160 checks of each subject, 100 allowed");
    let refused = t.vault.limits().check("s0", "l", 1, &NONE).await.unwrap();
    assert!(!refused.allowed);
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn shared_refill_follows_the_clock_and_a_refusal_starts_a_penalty(backend: Backend) {
    let config = || shared(Limit::new().window(Window::per(secs(60), 6.0)));
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    for _ in 0..6 {
        assert!(allowed(&t.vault, "s", 1).await);
    }
    let refused = t.vault.limits().check("s", "l", 1, &NONE).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, secs(60), "penalty of one window");
    assert_eq!(refused.recent_violations, 1);
    // Another instance sees the penalty.
    let other = t.another().await;
    assert!(!allowed(&other, "s", 1).await);
    t.clock.advance(secs(60));
    let d = other.limits().check("s", "l", 6, &NONE).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    // One token per 10 s.
    t.clock.advance(Duration::from_millis(9_999));
    assert!(
        !t.vault
            .limits()
            .check("s", "l", 1, &NONE)
            .await
            .unwrap()
            .allowed
    );
    t.clock.advance(secs(61));
    let status = t.vault.limits().status("s").await.unwrap();
    assert_eq!(status[0].limit, "l");
    assert!(status[0].shared);
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn a_shared_limit_of_two_windows_takes_from_both_or_neither(backend: Backend) {
    let config = || {
        shared(
            Limit::new()
                .window(Window::per(secs(1), 3.0))
                .window(Window::per(secs(3600), 5.0)),
        )
    };
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    let mut total = 0;
    for _ in 0..10 {
        for _ in 0..4 {
            total += u32::from(allowed(&t.vault, "two", 1).await);
        }
        t.clock.advance(secs(2));
    }
    // Three a second at most, five an hour at most (20 s refill less than
    // a token): the second's window refuses the fourth of the first round
    // and takes nothing from the hour's, which then allows two more.
    assert_eq!(total, 5);
    t.vault.close().await.unwrap();
}

async fn in_memory_buckets_are_written_behind_and_read_back(backend: Backend) {
    let config =
        || LimitsConfig::empty().limit("l", Limit::new().window(Window::per(secs(3600), 10.0)));
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    for _ in 0..7 {
        assert!(allowed(&t.vault, "mem", 1).await);
    }
    t.vault.close().await.unwrap();
    let vault = t.reopen_with(|o| o.limits(config())).await;
    let mut more = 0;
    while allowed(&vault, "mem", 1).await {
        more += 1;
        assert!(more < 100);
    }
    assert_eq!(more, 3, "the written-behind state was read back");
    vault.close().await.unwrap();
}

async fn violations_reset_and_sweep(backend: Backend) {
    let config = || {
        shared(Limit::new().window(Window::per(secs(60), 2.0)))
            .violation_retention(secs(3600))
            .idle_bucket_retention(secs(3600))
    };
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    let client = ClientInfo {
        ip: Some("198.51.100.9"),
        user_agent: Some("bot/1.0"),
    };
    for _ in 0..3 {
        t.vault.limits().check("v", "l", 1, &client).await.unwrap();
    }
    let violations = t.vault.limits().violations_of("v").await.unwrap();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].limit, "l");
    assert_eq!(violations[0].occurred_at, t.vault.now());
    assert!(violations[0].penalty_until.is_some());
    let reset = t.vault.limits().reset("v").await.unwrap();
    assert_eq!((reset.buckets, reset.violations), (1, 1));
    assert!(
        t.vault
            .limits()
            .violations_of("v")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        allowed(&t.vault, "v", 2).await,
        "a reset subject starts full"
    );

    for _ in 0..3 {
        t.vault.limits().check("w", "l", 1, &client).await.unwrap();
    }
    t.clock.advance(secs(3601));
    let swept = t.vault.limits().sweep().await.unwrap();
    assert_eq!(swept.violations, 1);
    assert_eq!(swept.buckets, 2, "both subjects' buckets were idle");
    assert!(
        t.vault
            .limits()
            .violations_of("w")
            .await
            .unwrap()
            .is_empty()
    );
    t.vault.close().await.unwrap();
}

/// A reset on one instance reaches another that holds the subject's
/// buckets in memory (an in-memory limit): its next check starts full. The
/// test waits for the event with a timeout; the vault's clock stands still.
async fn a_reset_reaches_another_instance(backend: Backend) {
    let config =
        || LimitsConfig::empty().limit("l", Limit::new().window(Window::per(secs(3600), 3.0)));
    let Some(t) = backend.open(|o| o.limits(config())).await else {
        return;
    };
    let other = t.another().await;
    for _ in 0..3 {
        assert!(allowed(&other, "r", 1).await);
    }
    assert!(
        !allowed(&other, "r", 1).await,
        "spent, in the other's memory"
    );
    t.vault.limits().reset("r").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !allowed(&other, "r", 1).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the other instance never forgot the reset subject");
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

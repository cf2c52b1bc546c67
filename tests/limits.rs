//! Rate limits: refill, windows, penalties, persistence across restarts,
//! shared mode across handles, concurrency. Time only from a FakeClock.

mod common;

use std::time::Duration;

use statevault::{ClientInfo, Clock, Error, FakeClock, Limit, LimitsConfig, Vault, Window};

const NONE: ClientInfo<'static> = ClientInfo {
    ip: None,
    user_agent: None,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn open(dir: &std::path::Path, config: LimitsConfig) -> (Vault, FakeClock) {
    let (options, clock) = common::options(dir, "vault.db");
    (Vault::open(options.limits(config)).await.unwrap(), clock)
}

async fn open_with_clock(dir: &std::path::Path, config: LimitsConfig, clock: &FakeClock) -> Vault {
    let options = statevault::VaultOptions::new(dir.join("vault.db"))
        .clock(clock.clone())
        .limits(config);
    Vault::open(options).await.unwrap()
}

/// Checks until refused; returns how many were allowed.
async fn drain(vault: &Vault, subject: &str, limit: &str) -> u32 {
    let mut allowed = 0;
    while vault
        .limits()
        .check(subject, limit, 1, &NONE)
        .await
        .unwrap()
        .allowed
    {
        allowed += 1;
        assert!(allowed < 10_000, "never refused");
    }
    allowed
}

#[tokio::test]
async fn defaults_follow_the_seeds() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    // api_calls: 100/min + burst 20 = 120 at once.
    assert_eq!(drain(&vault, "u", "api_calls").await, 120);
    assert_eq!(drain(&vault, "u", "search_queries").await, 25);
    assert_eq!(drain(&vault, "u", "playlist_ops").await, 13);
    assert_eq!(drain(&vault, "u", "auth_attempts").await, 5);
    let config = LimitsConfig::default();
    assert!(config.limits()["auth_attempts"].windows()[0].burst == 0.0);
    assert_eq!(config.limits()["api_calls"].windows().len(), 2);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn refill_follows_the_clock_exactly() {
    let dir = common::tempdir();
    let config = LimitsConfig::empty().limit("l", Limit::new().window(Window::per(secs(60), 6.0)));
    let (vault, clock) = open(dir.path(), config).await;
    assert_eq!(drain(&vault, "s", "l").await, 6);
    // The refusal started a penalty of one base window (60 s); after it a
    // full window has refilled too.
    let refused = vault.limits().check("s", "l", 1, &NONE).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, secs(60), "penalty running");
    clock.advance(secs(60));
    let d = vault.limits().check("s", "l", 6, &NONE).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    // One token per 10 s, to the millisecond.
    clock.advance(Duration::from_millis(9_999));
    let limits = vault.limits();
    let status = limits.status("s").await.unwrap();
    assert!(
        (status[0].windows[0].tokens - 0.9999).abs() < 1e-9,
        "{status:?}"
    );
    clock.advance(Duration::from_millis(1));
    assert!(limits.check("s", "l", 1, &NONE).await.unwrap().allowed);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn every_window_must_fit() {
    let dir = common::tempdir();
    let config = LimitsConfig::empty().limit(
        "l",
        Limit::new()
            .window(Window::per(secs(1), 10.0))
            .window(Window::per(secs(3600), 15.0)),
    );
    let (vault, clock) = open(dir.path(), config).await;
    assert_eq!(drain(&vault, "s", "l").await, 10);
    clock.advance(secs(10)); // past the 1 s penalty; the second refills fully
    let d = vault.limits().check("s", "l", 5, &NONE).await.unwrap();
    assert!(d.allowed);
    assert_eq!(
        d.remaining, 0,
        "hour window: 15 − 10 − 5 (+ a little refill)"
    );
    clock.advance(secs(10));
    let d = vault.limits().check("s", "l", 1, &NONE).await.unwrap();
    assert!(!d.allowed, "the hour window is empty: {d:?}");
    // The hour window refills one token per 240 s.
    assert!(d.retry_after >= secs(200), "{d:?}");
    vault.close().await.unwrap();
}

/// Checks until a refusal that is a new violation (its penalty starts
/// now), waiting out running penalties; returns that refusal.
async fn violate(vault: &Vault, clock: &FakeClock, subject: &str) -> statevault::Decision {
    loop {
        let d = vault.limits().check(subject, "l", 1, &NONE).await.unwrap();
        if d.allowed {
            continue;
        }
        let p = d.penalty.expect("a refusal carries its penalty");
        if p.until.duration_since(clock.now()) == p.duration {
            return d;
        }
        clock.advance(d.retry_after);
    }
}

#[tokio::test]
async fn penalties_escalate_and_cap_at_64x() {
    let dir = common::tempdir();
    // Base window 10 s: 10, 20, …, 640 (64×) and no further.
    let config = LimitsConfig::empty().limit("l", Limit::new().window(Window::per(secs(10), 1.0)));
    let (vault, clock) = open(dir.path(), config).await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let d = violate(&vault, &clock, "s").await;
        seen.push((d.recent_violations, d.penalty.unwrap().duration.as_secs()));
        // While penalised, every check is refused with the penalty's wait,
        // and those refusals are not new violations.
        clock.advance(d.retry_after - Duration::from_millis(1));
        let again = vault.limits().check("s", "l", 1, &NONE).await.unwrap();
        assert!(!again.allowed);
        assert_eq!(again.retry_after, Duration::from_millis(1));
        assert_eq!(again.recent_violations, d.recent_violations);
        clock.advance(Duration::from_millis(1));
    }
    let expected: Vec<(u32, u64)> = vec![
        (1, 10),
        (2, 20),
        (3, 40),
        (4, 80),
        (5, 160),
        (6, 320),
        (7, 640),
        (8, 640),
    ];
    assert_eq!(seen, expected);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn penalty_caps_at_one_hour() {
    let dir = common::tempdir();
    let config =
        LimitsConfig::empty().limit("l", Limit::new().window(Window::per(secs(1000), 1.0)));
    let (vault, clock) = open(dir.path(), config).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = violate(&vault, &clock, "s").await;
        seen.push(d.penalty.unwrap().duration.as_secs());
        clock.advance(d.retry_after);
    }
    assert_eq!(seen, [1000, 2000, 3600]);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn violations_store_client_info_as_keyed_hashes() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let client = ClientInfo::none().ip("203.0.113.7").user_agent("curl/8.0");
    for _ in 0..5 {
        vault
            .limits()
            .check("alice", "auth_attempts", 1, &client)
            .await
            .unwrap();
    }
    let d = vault
        .limits()
        .check("alice", "auth_attempts", 1, &client)
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.penalty.unwrap().duration, secs(900));
    // Strict: already in the file, no flush needed.
    let rows = vault
        .query_read_only("SELECT client_info, limit_name, cost FROM violations")
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 1);
    let info = rows.rows[0][0].as_str().unwrap().to_owned();
    assert!(
        !info.contains("203.0.113.7") && !info.contains("curl"),
        "{info}"
    );
    let hex: String = vault
        .keyed_hash("ip", b"203.0.113.7")
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(json["ip"], hex);
    assert!(json["user_agent"].is_string());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn strict_limits_are_in_the_file_before_check_returns() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    for _ in 0..3 {
        assert!(
            vault
                .limits()
                .check("mallory", "auth_attempts", 1, &NONE)
                .await
                .unwrap()
                .allowed
        );
    }
    // A second handle (another process, or this one after a crash) sees the
    // spent attempts without any flush or close of the first.
    let other = open_with_clock(dir.path(), LimitsConfig::default(), &clock).await;
    assert_eq!(drain(&other, "mallory", "auth_attempts").await, 2);
    other.close().await.unwrap();
    vault.close().await.unwrap();
}

#[tokio::test]
async fn restart_mid_window_keeps_spent_tokens() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    for _ in 0..100 {
        assert!(
            vault
                .limits()
                .check("bob", "api_calls", 1, &NONE)
                .await
                .unwrap()
                .allowed
        );
    }
    // Not strict: not in the file until a flush.
    let peek = open_with_clock(dir.path(), LimitsConfig::default(), &clock).await;
    assert_eq!(drain(&peek, "bob", "api_calls").await, 120);
    peek.close().await.unwrap();
    // (peek's close flushed its own drained bucket; start bob over.)
    vault.limits().reset("bob").await.unwrap();
    for _ in 0..100 {
        assert!(
            vault
                .limits()
                .check("bob", "api_calls", 1, &NONE)
                .await
                .unwrap()
                .allowed
        );
    }
    vault.close().await.unwrap(); // flushes
    clock.advance(secs(6)); // 10 tokens back in the minute window
    let vault = open_with_clock(dir.path(), LimitsConfig::default(), &clock).await;
    assert_eq!(drain(&vault, "bob", "api_calls").await, 30);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn flush_writes_dirty_buckets_and_violations_in_one_go() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    for i in 0..250 {
        vault
            .limits()
            .check(&format!("user{i}"), "playlist_ops", 13, &NONE)
            .await
            .unwrap();
        vault
            .limits()
            .check(&format!("user{i}"), "playlist_ops", 1, &NONE)
            .await
            .unwrap();
    }
    let count = |sql: &'static str| {
        let vault = vault.clone();
        async move {
            vault.query_read_only(sql).await.unwrap().rows[0][0]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM token_buckets").await, 0);
    vault.flush().await.unwrap();
    assert_eq!(count("SELECT count(*) FROM token_buckets").await, 500);
    assert_eq!(count("SELECT count(*) FROM violations").await, 250);
    vault.flush().await.unwrap(); // nothing left: no write
    assert_eq!(count("SELECT count(*) FROM violations").await, 250);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn two_handles_in_shared_mode_share_one_budget() {
    let dir = common::tempdir();
    let config = LimitsConfig::default().shared(true);
    let (a, clock) = open(dir.path(), config.clone()).await;
    let b = open_with_clock(dir.path(), config, &clock).await;
    let mut tasks = Vec::new();
    for (i, vault) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..4 {
            let vault = vault.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..50 {
                    let d = vault
                        .limits()
                        .check("shared", "api_calls", 1, &NONE)
                        .await
                        .unwrap();
                    allowed += u32::from(d.allowed);
                }
                let _ = (i, t);
                allowed
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 120, "400 checks from two handles, budget 120");
    // Violations and penalties are shared too.
    let d = b
        .limits()
        .check("shared", "api_calls", 1, &NONE)
        .await
        .unwrap();
    assert!(!d.allowed && d.penalty.is_some() && d.recent_violations >= 1);
    clock.advance(secs(3600));
    let d = a
        .limits()
        .check("shared", "api_calls", 7, &NONE)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 113);
    let status = b.limits().status("shared").await.unwrap();
    let api = status.iter().find(|s| s.limit == "api_calls").unwrap();
    assert!(api.shared);
    assert!((api.windows[0].tokens - 113.0).abs() < 1e-9);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn shared_and_in_memory_agree_on_the_math() {
    let dir = common::tempdir();
    let limit = || {
        Limit::new()
            .window(Window::per(secs(7), 3.0).burst(1.5))
            .window(Window::per(secs(61), 11.0))
    };
    let config = LimitsConfig::empty()
        .limit("mem", limit())
        .limit("sh", limit().shared(true));
    let (vault, clock) = open(dir.path(), config).await;
    for step in 0..200u64 {
        let cost = 1 + (step % 3) as u32;
        let m = vault.limits().check("s", "mem", cost, &NONE).await.unwrap();
        let s = vault.limits().check("s", "sh", cost, &NONE).await.unwrap();
        assert_eq!(
            (m.allowed, m.remaining, m.retry_after, m.reset_at, m.penalty),
            (s.allowed, s.remaining, s.retry_after, s.reset_at, s.penalty),
            "step {step}"
        );
        clock.advance(Duration::from_millis(137 * (step % 17)));
    }
    vault.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_one_subject_never_exceed_capacity() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed = (0, 0);
            for _ in 0..40 {
                let l = vault.limits();
                allowed.0 +=
                    u32::from(l.check("hot", "api_calls", 1, &NONE).await.unwrap().allowed);
                allowed.1 += u32::from(
                    l.check("hot", "auth_attempts", 1, &NONE)
                        .await
                        .unwrap()
                        .allowed,
                );
            }
            allowed
        }));
    }
    let (mut api, mut auth) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        api += a;
        auth += b;
    }
    assert_eq!((api, auth), (120, 5));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn bad_configuration_and_requests_are_typed_errors() {
    let dir = common::tempdir();
    let bad = |w: Window| LimitsConfig::empty().limit("l", Limit::new().window(w));
    for (config, field) in [
        (bad(Window::per(secs(60), f64::NAN)), "tokens"),
        (bad(Window::per(secs(60), -1.0)), "tokens"),
        (bad(Window::per(secs(60), 0.0)), "tokens"),
        (bad(Window::per(secs(60), 5.0).burst(f64::NAN)), "burst"),
        (bad(Window::per(secs(60), 5.0).burst(-1.0)), "burst"),
        (bad(Window::per(secs(0), 5.0)), "period"),
        (bad(Window::per(Duration::from_millis(1500), 5.0)), "period"),
        (LimitsConfig::empty().limit("l", Limit::new()), "windows"),
    ] {
        let (options, _) = common::options(dir.path(), "bad.db");
        match Vault::open(options.limits(config)).await {
            Err(Error::InvalidLimit {
                limit, field: f, ..
            }) => {
                assert_eq!((limit.as_str(), f), ("l", field));
            }
            other => panic!("expected InvalidLimit({field}), got {other:?}"),
        }
    }
    assert!(
        !dir.path().join("bad.db").exists(),
        "refused before creating the file"
    );

    let (vault, _clock) = common::vault(dir.path()).await;
    let limits = vault.limits();
    assert!(matches!(
        limits.check("s", "nope", 1, &NONE).await,
        Err(Error::UnknownLimit { name }) if name == "nope"
    ));
    assert!(matches!(
        limits.check("s", "api_calls", 0, &NONE).await,
        Err(Error::InvalidInput { what: "cost", .. })
    ));
    // 121 > 120: never, not "not yet".
    assert!(matches!(
        limits.check("s", "api_calls", 121, &NONE).await,
        Err(Error::NeverFits { cost: 121, .. })
    ));
    assert!(
        limits
            .check("s", "api_calls", 120, &NONE)
            .await
            .unwrap()
            .allowed
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn status_and_reset() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let limits = vault.limits();
    limits
        .check("carol", "search_queries", 5, &NONE)
        .await
        .unwrap();
    drain(&vault, "carol", "auth_attempts").await;
    let status = limits.status("carol").await.unwrap();
    let names: Vec<&str> = status.iter().map(|s| s.limit.as_str()).collect();
    assert_eq!(
        names,
        [
            "api_calls",
            "auth_attempts",
            "playlist_ops",
            "search_queries"
        ]
    );
    let search = &status[3];
    assert_eq!(search.windows[0].tokens, 20.0);
    assert_eq!(search.windows[1].tokens, 195.0);
    let auth = &status[1];
    assert!(auth.strict);
    assert_eq!(auth.recent_violations, 1);
    assert!(auth.penalty_until.is_some());
    vault.flush().await.unwrap();
    let counts = limits.reset("carol").await.unwrap();
    assert_eq!((counts.buckets, counts.violations), (3, 1));
    let status = limits.status("carol").await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.recent_violations == 0 && s.penalty_until.is_none())
    );
    assert_eq!(drain(&vault, "carol", "auth_attempts").await, 5);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn sweep_purges_old_violations_and_idle_buckets_in_batches() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    for i in 0..600 {
        vault
            .limits()
            .check(&format!("u{i}"), "auth_attempts", 5, &NONE)
            .await
            .unwrap();
        vault
            .limits()
            .check(&format!("u{i}"), "auth_attempts", 1, &NONE)
            .await
            .unwrap();
    }
    clock.advance(secs(8 * 86_400));
    vault
        .limits()
        .check("fresh", "auth_attempts", 5, &NONE)
        .await
        .unwrap();
    vault
        .limits()
        .check("fresh", "auth_attempts", 1, &NONE)
        .await
        .unwrap();
    let counts = vault.limits().sweep().await.unwrap();
    assert_eq!((counts.violations, counts.buckets), (600, 0));
    assert_eq!(
        counts.evicted, 600,
        "the old, full, flushed entries leave memory"
    );
    clock.advance(secs(23 * 86_400));
    let counts = vault.limits().sweep().await.unwrap();
    assert_eq!((counts.violations, counts.buckets), (1, 600));
    let rows = vault
        .query_read_only("SELECT subject FROM token_buckets")
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 1);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn cli_limits_status_and_reset() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    drain(&vault, "dave", "auth_attempts").await;
    vault
        .limits()
        .check("dave", "api_calls", 20, &NONE)
        .await
        .unwrap();
    vault.close().await.unwrap();

    // The CLI runs on the real clock, which is far past the fake one: the
    // buckets have refilled, the violation is no longer recent; but the
    // rows are there.
    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "limits", "status", "dave", "--json"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["subject"], "dave");
    let limits = json["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 4);
    assert_eq!(limits[0]["limit"], "api_calls");
    assert_eq!(limits[0]["windows"][0]["capacity"], 120.0);
    assert_eq!(limits[1]["strict"], true);

    let out = common::run(
        dir.path(),
        &["--db", "vault.db", "limits", "status", "dave"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stdout(&out).contains("auth_attempts"));

    let out = common::run(dir.path(), &["--db", "vault.db", "limits", "reset", "dave"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("3 bucket(s), 1 violation(s)"),
        "{}",
        common::stdout(&out)
    );
    let raw = common::raw_connection(&dir.path().join("vault.db"));
    let n: i64 = raw
        .query_row(
            "SELECT count(*) FROM token_buckets WHERE subject = 'dave'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);

    let out = common::run(dir.path(), &["--db", "missing.db", "limits", "status", "x"]);
    common::assert_one_error_line(&out);
}

#[tokio::test]
async fn a_failed_flush_loses_nothing() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.busy_timeout(Duration::from_millis(50)))
        .await
        .unwrap();
    for i in 0..10 {
        let subject = format!("u{i}");
        vault
            .limits()
            .check(&subject, "playlist_ops", 13, &NONE)
            .await
            .unwrap();
        vault
            .limits()
            .check(&subject, "playlist_ops", 1, &NONE)
            .await
            .unwrap();
    }
    // Another process holds the write lock: the flush fails before taking
    // anything…
    let raw = common::raw_connection(&dir.path().join("vault.db"));
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(vault.flush().await.is_err());
    raw.execute_batch("COMMIT").unwrap();
    // …or a statement fails after the buckets were taken from memory.
    raw.execute_batch(
        "CREATE TRIGGER injected BEFORE INSERT ON violations
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    let err = vault.flush().await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    // Meanwhile more checks arrive.
    vault
        .limits()
        .check("late", "playlist_ops", 2, &NONE)
        .await
        .unwrap();
    raw.execute_batch("DROP TRIGGER injected").unwrap();
    vault.flush().await.unwrap();
    let count = |sql: &str| -> i64 { raw.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM token_buckets"), 22);
    assert_eq!(count("SELECT count(*) FROM violations"), 10);
    assert_eq!(
        count("SELECT count(*) FROM token_buckets WHERE subject = 'u3' AND tokens = 0"),
        1,
        "the minute window was spent"
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_clock_stepping_back_refills_nothing_twice_in_either_mode() {
    let dir = common::tempdir();
    let limit = || Limit::new().window(Window::per(secs(10), 10.0));
    let config = LimitsConfig::empty()
        .limit("mem", limit())
        .limit("sh", limit().shared(true));
    let (vault, clock) = open(dir.path(), config).await;
    let t0 = clock.now();
    for name in ["mem", "sh"] {
        clock.set(t0);
        assert!(
            vault
                .limits()
                .check("s", name, 5, &NONE)
                .await
                .unwrap()
                .allowed
        );
        clock.set(statevault::Timestamp::from_millis(t0.as_millis() - 5_000));
        let d = vault.limits().check("s", name, 1, &NONE).await.unwrap();
        assert!(d.allowed && d.remaining == 4, "{name}: {d:?}");
        // 2 s after t0: 4 + 2 tokens, not 4 + 7.
        clock.set(statevault::Timestamp::from_millis(t0.as_millis() + 2_000));
        let d = vault.limits().check("s", name, 7, &NONE).await.unwrap();
        assert!(!d.allowed, "{name}: {d:?}");
        assert_eq!(d.penalty.unwrap().duration, secs(10), "{name}");
    }
    vault.close().await.unwrap();
}

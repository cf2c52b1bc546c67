//! The main job: `statevault demo` runs the workload through every facet,
//! two demos on one file at once both succeed, and the demo is a guest in a
//! real file: it stores no time later than the real clock and removes
//! nothing it did not make.

mod common;

use common::{cli, stderr, tempdir};

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn demo_drives_every_facet_and_reports() {
    let dir = tempdir();
    let out = cli(dir.path())
        .args(["demo", "--users", "12", "--requests", "1500", "--json"])
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(r["counts"]["requests"], 1500);
    assert_eq!(r["audit_chain_ok"], true);
    assert!(r["counts"]["logins"].as_u64().unwrap() > 0);
    assert!(r["counts"]["sessions_rotated"].as_u64().unwrap() > 0, "{r}");
    assert!(r["counts"]["rate_limited"].as_u64().unwrap() > 0, "{r}");
    assert!(r["violations"].as_i64().unwrap() > 0, "{r}");
    assert!(
        r["latency_by_endpoint"]["demo.search"]["p99_us"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(r["erased_rows"]["sessions"].is_u64());
    assert!(
        r["simulated_hours"].as_f64().unwrap() > 0.5,
        "the fake clock moved: {r}"
    );
    assert_eq!(r["encrypted"], true);
    assert!(r["cache"]["l1"]["hits"].as_u64().unwrap() > 0, "{r}");
    assert!(r["erased_rows"]["cache_entries"].is_u64(), "{r}");
    assert!(r["backup_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(
        dir.path().join(r["backup"].as_str().unwrap()).exists(),
        "{r}"
    );
    assert!(dir.path().join("statevault.db.key").exists());

    // Every request is counted once, under one endpoint, and recorded once
    // in the metrics (the rows used to miss failed logins and expired
    // sessions, and the first metric interval).
    let rows: u64 = r["latency_by_endpoint"]
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 1500, "{r}");
    assert_eq!(stored_requests(dir.path()), 1500);
    assert!(r["swept"].is_object(), "a file the demo made is swept: {r}");
}

/// The demo's requests as the metrics table holds them.
fn stored_requests(dir: &std::path::Path) -> i64 {
    common::raw_connection(&dir.join("statevault.db"))
        .query_row(
            "SELECT sum(count) FROM metrics WHERE name = 'api_request_duration'
             AND json_extract(labels, '$.endpoint') LIKE 'demo.%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

/// The latest time stored in each column that records when something
/// happened (not the deadlines: expiry, penalties), as RFC 3339 text.
fn latest_times(dir: &std::path::Path) -> Vec<(String, String)> {
    let conn = common::raw_connection(&dir.join("statevault.db"));
    [
        ("audit_events", "occurred_at"),
        ("sessions", "created_at"),
        ("sessions", "last_seen_at"),
        ("violations", "occurred_at"),
        ("token_buckets", "updated_at"),
        ("token_buckets", "last_refill_at"),
        ("cache_entries", "created_at"),
        ("cache_entries", "last_access_at"),
        ("metrics", "interval_start"),
        ("preferences", "updated_at"),
        ("vault_meta", "updated_at"),
    ]
    .into_iter()
    .filter_map(|(table, column)| {
        let latest: Option<String> = conn
            .query_row(&format!("SELECT max({column}) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap();
        latest.map(|t| (format!("{table}.{column}"), t))
    })
    .collect()
}

/// A file a service already uses: its rows, a recent backup and one named
/// as if made in October (which the default retention would delete). Four
/// demos run on it, two with thousands of requests (hours of simulated
/// time, all in the future before the fix). Afterwards every operator row
/// and backup is still there, no stored time is later than the real clock,
/// `health` sees no burst of violations, and the demo kept only its newest
/// three backups.
#[test]
fn the_demo_is_a_guest_in_a_real_file() {
    let dir = tempdir();
    let run = |args: &[&str]| {
        let out = cli(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    run(&["init"]);
    run(&["prefs", "set", "alice", r#"{"theme": "dark"}"#]);
    run(&["backup"]);
    let backups = dir.path().join("backups");
    let recent: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recent.len(), 1);
    let old = backups.join("statevault.20261001T000000000Z.backup.db");
    std::fs::copy(&recent[0], &old).unwrap();

    for requests in ["400", "4000", "4000", "400"] {
        let out = run(&["demo", "--users", "10", "--requests", requests, "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(r["swept"].is_null(), "retention is the owner's: {r}");
    }
    let now = statevault::Clock::now(&statevault::SystemClock).to_rfc3339();
    for (column, latest) in latest_times(dir.path()) {
        assert!(latest <= now, "{column} holds {latest}, later than {now}");
    }
    assert!(recent[0].exists() && old.exists(), "operator backups kept");
    let demo_backups = std::fs::read_dir(&backups)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("statevault.demo.")
        })
        .count();
    assert_eq!(demo_backups, 3, "the demo keeps its newest three");
    let prefs = run(&["prefs", "get", "alice"]);
    assert!(common::stdout(&prefs).contains("dark"));
    // The demo's violations are in the past, and so no alarm (the other
    // components depend on the machine: its free disk space).
    let health = common::stdout(&cli(dir.path()).arg("health").output().unwrap());
    let violations = health
        .lines()
        .find(|l| l.trim_start().starts_with("violations"))
        .unwrap_or_default();
    assert!(violations.contains("healthy"), "{health}");
}

/// Five demos on one file at once (the same users: each erases one that
/// the others are using, evicts others' sessions at the user's cap, prunes
/// the backups the others made): every one succeeds and the file checks.
#[test]
fn demos_on_one_file_at_once_all_succeed() {
    let dir = tempdir();
    let spawn = || {
        cli(dir.path())
            .args(["demo", "--users", "8", "--requests", "800", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..5).map(|_| spawn()).collect();
    // Every one waited for before any assertion, so a failure leaves no
    // demo running on.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert_eq!(report(out)["audit_chain_ok"], true);
    }
    let out = cli(dir.path()).args(["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

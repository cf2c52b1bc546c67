//! The `statevault-bench` binary (`statevault bench`): a quick run reports
//! every workload beside its baseline and leaves nothing behind.

use std::path::Path;
use std::process::Output;

/// Runs `statevault-bench` with `args` in `cwd`.
fn run(cwd: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_statevault-bench"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run statevault-bench")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn bench_quick_reports_open_ms_and_leaves_no_files() {
    let dir = tempdir();
    let out = run(dir.path(), &["--quick", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["open_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["open_ms_rusqlite"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    for workload in [
        "session_create",
        "session_validate",
        "audit_append",
        "ratelimit_check",
        "ratelimit_check_shared",
        "cache_l1_get",
        "cache_l2_get",
        "cache_set",
        "sweep_expired",
    ] {
        let w = &report["workloads"][workload];
        assert!(
            w["ops_per_sec"].as_f64().unwrap() > 0.0,
            "{workload}: {report}"
        );
        assert!(
            w["baseline_ops_per_sec"].as_f64().unwrap() > 0.0,
            "{workload}: {report}"
        );
        assert!(w["ratio"].as_f64().unwrap() > 0.0, "{workload}: {report}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench writes nothing in the current directory"
    );
}

/// A name that is no workload is refused before anything runs, with the
/// names that are.
#[test]
fn an_unknown_workload_is_refused_with_the_known_ones() {
    let dir = tempdir();
    let out = run(dir.path(), &["--only", "open,nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("\"nope\"") && err.contains("session_create"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// `--concurrency`: every selected workload at every level, each side with
/// its figures, and Redis either measured or skipped out loud (a failure
/// under `STATEVAULT_REQUIRE_TOOLS=1`). Nothing about speed is asserted.
#[test]
fn concurrency_reports_each_side_at_each_level() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &[
            "--quick",
            "--json",
            "--concurrency",
            "1,2",
            "--only",
            "session_create,session_validate,cache_set",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &report["concurrency"];
    assert_eq!(c["levels"], serde_json::json!([1, 2]), "{report}");
    let workloads = c["workloads"].as_object().unwrap();
    let names: Vec<&str> = workloads.keys().map(String::as_str).collect();
    assert_eq!(names, ["session_create", "session_validate", "cache_set"]);
    let redis_missing = c["redis"]["server"]
        .as_str()
        .unwrap()
        .starts_with("skipped");
    if redis_missing {
        eprintln!(
            "*** SKIPPED: the Redis columns ({}) ***",
            c["redis"]["server"]
        );
        assert!(
            !std::env::var("STATEVAULT_REQUIRE_TOOLS").is_ok_and(|v| v == "1"),
            "STATEVAULT_REQUIRE_TOOLS=1 and Redis is missing"
        );
    }
    for (name, w) in workloads {
        for side in ["statevault", "rusqlite", "redis"] {
            assert!(w[side].as_str().is_some_and(|s| !s.is_empty()), "{name}");
        }
        let levels = w["levels"].as_array().unwrap();
        assert_eq!(levels.len(), 2, "{name}");
        for level in levels {
            for side in ["statevault", "rusqlite"] {
                let f = &level[side];
                assert!(f["ops_per_sec"].as_f64().unwrap() > 0.0, "{name}: {f}");
                assert!(f["p99_us"].as_f64().unwrap() >= f["p50_us"].as_f64().unwrap());
            }
            let redis = &level["redis"];
            if redis_missing {
                assert!(redis["skipped"].is_string(), "{name}: {redis}");
            } else {
                assert!(
                    redis["ops_per_sec"].as_f64().unwrap() > 0.0,
                    "{name}: {redis}"
                );
            }
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `--concurrency` knows its own workloads, and refuses the others.
#[test]
fn concurrency_refuses_a_workload_it_does_not_run() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["--concurrency", "1", "--only", "cache_l1_get"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("session_rotate"),
        "{err}"
    );
}

/// `--db postgres://…` (feature `postgres`): the workloads that run on
/// PostgreSQL beside raw sqlx, in a database the bench makes and drops.
/// Needs `STATEVAULT_TEST_POSTGRES` (`.ci/run` starts a server).
#[cfg(feature = "postgres")]
#[test]
fn concurrency_on_postgres_reports_statevault_beside_raw_sqlx() {
    let Ok(url) = std::env::var("STATEVAULT_TEST_POSTGRES") else {
        eprintln!(
            "\n*** SKIPPED: external tool PostgreSQL server is missing (set \
             STATEVAULT_TEST_POSTGRES); this test did not run ***\n"
        );
        assert!(
            !std::env::var("STATEVAULT_REQUIRE_TOOLS").is_ok_and(|v| v == "1"),
            "STATEVAULT_REQUIRE_TOOLS=1 and no PostgreSQL server"
        );
        return;
    };
    let dir = tempdir();
    let out = run(
        dir.path(),
        &[
            "--db",
            &url,
            "--concurrency",
            "1,2",
            "--quick",
            "--only",
            "session_create,ratelimit_check_shared",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &report["concurrency"];
    assert!(
        c["statevault"].as_str().unwrap().contains("PostgreSQL"),
        "{c}"
    );
    let workloads = c["workloads"].as_object().unwrap();
    let names: Vec<&str> = workloads.keys().map(String::as_str).collect();
    assert_eq!(names, ["session_create", "ratelimit_check_shared"]);
    for (name, w) in workloads {
        assert!(
            w["raw_sqlx"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        for level in w["levels"].as_array().unwrap() {
            for side in ["statevault", "raw_sqlx"] {
                let f = &level[side];
                assert!(f["ops_per_sec"].as_f64().unwrap() > 0.0, "{name}: {f}");
            }
        }
    }
    let on_file = run(dir.path(), &["--db", &url, "--only", "session_create"]);
    assert!(!on_file.status.success());
    assert!(
        stderr(&on_file).contains("--concurrency"),
        "{}",
        stderr(&on_file)
    );
}

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

//! The main job: `statevault demo` runs the workload through every facet,
//! and two demos on one file at once both succeed.

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
        r["latency_by_endpoint"]["search"]["p99_us"]
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
}

#[test]
fn two_demos_on_one_file_both_succeed() {
    let dir = tempdir();
    let spawn = || {
        cli(dir.path())
            .args(["demo", "--users", "8", "--requests", "800", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let r = report(&child.wait_with_output().unwrap());
        assert_eq!(r["audit_chain_ok"], true);
    }
    let out = cli(dir.path()).args(["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

//! `benches/service.sh` keeps working: the example service over an
//! encrypted and a plain file, and the Redis-wired one, each serve two
//! seconds of `wrk` load with every request answered 2xx. Nothing about
//! speed is asserted (the figures come from a full run, by hand).

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_service_benchmark_runs() {
    let (Some(_), Some(_)) = (common::tool("wrk"), common::tool("redis-server")) else {
        return;
    };
    // `cargo test` builds the examples beside the test binaries.
    let exe = std::env::current_exe().unwrap();
    let service: PathBuf = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/service");
    assert!(
        service.is_file(),
        "{} was not built (needs --features tower)",
        service.display()
    );
    let dir = common::tempdir();
    let out = dir.path().join("service-bench.json");
    let run = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/service.sh"))
        .env("DURATION", "2")
        .env("CONNECTIONS", "4")
        .env("USERS", "8")
        .env("QUERIES", "10")
        .env("PROFILE", "debug")
        .env("SERVICE_BIN", &service)
        .env("OUT", &out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let services: Vec<&str> = runs
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["encrypted", "plain", "redis"]);
    for run in runs {
        let figures = &run["figures"];
        assert!(figures["requests"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(figures["non_2xx"], 0, "{run}");
        assert!(run["peak_rss_kib"].as_u64().unwrap() > 0, "{run}");
    }
}

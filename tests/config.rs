//! `statevault.toml`: found beside the database or given with `--config`,
//! applied to every facet, overridden by flags and the environment, and
//! refused with the key named when it has a key or value it does not know.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_one_error_line, cli, run, stdout, tempdir};
use statevault::{Config, Error};

fn write(path: &Path, text: &str) {
    fs::write(path, text).expect("write config");
}

fn config_error(text: &str) -> String {
    match Config::parse(text) {
        Err(e @ Error::Config { .. }) => e.to_string(),
        other => panic!("expected a config error for {text:?}, got {other:?}"),
    }
}

#[test]
fn every_section_parses_and_defaults_fill_the_rest() {
    let config = Config::parse(
        r#"
        [storage_paths]
        database = "data/state.db"
        encryption = true
        backups = "snapshots"

        [storage]
        synchronous = "full"
        readers = 2
        page_cache_mb = 16
        busy_timeout_ms = 2000
        flush_interval_ms = 500
        feed_retention_seconds = 300

        [session_management]
        idle_timeout_minutes = 30
        absolute_lifetime_hours = 48
        rotation_interval_hours = 12
        max_per_user = 5
        when_full = "refuse"
        retention_days = 14
        memory_entries = 100
        memory_ttl_ms = 250
        feed_check_interval_ms = 2
        max_data_kb = 8

        [caching]
        default_ttl_seconds = 600
        max_ttl_seconds = 86400
        max_value_kb = 1024
        compression_level = 5
        feed_check_interval_ms = 3
        l1_cache = { enabled = true, max_size = 50, max_size_mb = 10 }
        l2_cache = { max_size_mb = 20 }
        ttl_seconds = { search = 60, lyrics = 7200 }

        [rate_limiting]
        shared = false
        violation_retention_days = 3
        idle_bucket_retention_days = 10
        [rate_limiting.limits.exports]
        per_hour = 10
        per_day = 50
        burst_allowance = 2
        strict = true

        [audit_logging]
        retention_days = 30
        max_details_kb = 16

        [metrics_collection]
        collection_interval_seconds = 30
        retention_days = 14
        downsample_after_days = 2

        [user_preferences]
        allow_unknown_keys = false
        [user_preferences.defaults]
        theme = "dark"
        search = { limit = 20 }

        [cleanup]
        enabled = true
        interval_seconds = 600

        [backup]
        retention_days = 3
        recover_on_open = true

        [health]
        key_rotation_days = 30
        disk_warning_free_percent = 15
        disk_critical_free_percent = 5
        wal_warning_mb = 32
        wal_critical_mb = 512
        violation_window_minutes = 10
        violation_warning = 5
        violation_critical = 50
        cache_hit_ratio_warning = 0.3
        cache_min_lookups = 100
        "#,
    )
    .expect("a full config parses");
    let debug = format!("{:?}", config.options().expect("options"));
    for shown in [
        "state.db",
        "synchronous: Full",
        "readers: 2",
        "page_cache_budget: 16777216",
        "idle_timeout: 1800s",
        "when_full: Refuse",
        "max_data_bytes: 8192",
        "recover_on_open: true",
        "snapshots",
        "retention: 259200s",
        "feed_retention: 300s",
        "feed_check_interval: 2ms",
        "feed_check_interval: 3ms",
    ] {
        assert!(debug.contains(shown), "{shown:?} missing from {debug}");
    }
    assert!(Config::parse("").is_ok(), "an empty file is all defaults");
}

/// `page_cache_budget_mb` is the whole vault's; `page_cache_mb`, its old
/// name from when it sized each connection, still sets the same budget.
#[test]
fn the_page_cache_budget_has_one_value_under_either_name() {
    for text in [
        "[storage]\npage_cache_budget_mb = 8",
        "[storage]\npage_cache_mb = 8",
    ] {
        let options = Config::parse(text).unwrap().options().unwrap();
        let debug = format!("{options:?}");
        assert!(
            debug.contains("page_cache_budget: 8388608"),
            "{text}: {debug}"
        );
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    for (text, key) in [
        ("colour = 1", "colour"),
        ("[caching]\nl1_size = 5", "caching"),
        ("[caching.l1_cache]\nmax_entries = 5", "caching.l1_cache"),
        ("[sessions]\nidle = 1", "sessions"),
        (
            "[session_management]\nidle_timeout_minutes = -5",
            "session_management.idle_timeout_minutes",
        ),
        (
            "[session_management]\nidle_timeout_minutes = \"soon\"",
            "session_management.idle_timeout_minutes",
        ),
        ("[storage]\nreaders = 0", "storage.readers"),
        (
            "[storage]\npage_cache_budget_mb = 0",
            "storage.page_cache_budget_mb",
        ),
        (
            "[storage]\npage_cache_mb = 8\npage_cache_budget_mb = 8",
            "storage.page_cache_mb",
        ),
        ("[storage]\nsynchronous = \"off\"", "storage.synchronous"),
        (
            "[rate_limiting.limits.api_calls]\nper_minute = nan",
            "rate_limiting.limits.api_calls.per_minute",
        ),
        (
            "[rate_limiting.limits.api_calls]\nper_minute = -1.0",
            "rate_limiting.limits.api_calls.per_minute",
        ),
        (
            "[rate_limiting.limits.api_calls]\nburst_allowance = 3.0",
            "rate_limiting.limits.api_calls",
        ),
        (
            "[rate_limiting.limits.api_calls]\nper_fortnight = 3",
            "rate_limiting.limits.api_calls",
        ),
        (
            "[health]\ncache_hit_ratio_warning = 1.5",
            "health.cache_hit_ratio_warning",
        ),
        (
            "[caching]\ncompression_level = 40",
            "caching.compression_level",
        ),
        ("[cleanup\nenabled = true", "line 1"),
    ] {
        let message = config_error(text);
        assert!(
            message.contains(key),
            "{text:?}: {message:?} should name {key:?}"
        );
    }
}

#[test]
fn cli_finds_the_config_beside_the_database_and_applies_it() {
    let dir = tempdir();
    write(
        &dir.path().join("statevault.toml"),
        r#"
        [rate_limiting.limits.exports]
        per_hour = 10
        strict = true

        [user_preferences.defaults]
        theme = "dark"
        "#,
    );
    assert!(run(dir.path(), &["init"]).status.success());

    let limits = stdout(&run(dir.path(), &["limits", "status", "alice", "--json"]));
    assert!(limits.contains("\"exports\""), "{limits}");
    assert!(limits.contains("\"api_calls\""), "defaults stay: {limits}");

    let prefs = stdout(&run(dir.path(), &["prefs", "get", "alice"]));
    assert!(prefs.contains("\"dark\""), "{prefs}");
    let out = run(dir.path(), &["prefs", "set", "alice", r#"{"theme": 5}"#]);
    assert!(assert_one_error_line(&out).contains("theme"));
    let out = run(dir.path(), &["prefs", "set", "alice", r#"{"font": "big"}"#]);
    assert!(assert_one_error_line(&out).contains("font"));
}

#[test]
fn database_path_comes_from_the_config_unless_flag_or_env_say_otherwise() {
    let dir = tempdir();
    let config = dir.path().join("conf.toml");
    write(
        &config,
        "[storage_paths]\ndatabase = \"data/state.db\"\nbackups = \"snapshots\"\n[backup]\nretention_days = 1\n",
    );
    fs::create_dir(dir.path().join("data")).unwrap();
    let conf = config.to_str().unwrap();

    assert!(
        run(dir.path(), &["--config", conf, "init"])
            .status
            .success()
    );
    assert!(
        dir.path().join("data/state.db").exists(),
        "relative to the config's folder"
    );
    assert!(dir.path().join("data/state.db.key").exists());

    let out = run(dir.path(), &["--config", conf, "backup"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let backups: Vec<_> = fs::read_dir(dir.path().join("snapshots"))
        .expect("backups in the configured folder")
        .collect();
    assert_eq!(backups.len(), 1);

    let out = cli(dir.path())
        .env("STATEVAULT_DB", "other.db")
        .args(["--config", conf, "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("other.db").exists(), "STATEVAULT_DB wins");

    assert!(
        run(dir.path(), &["--config", conf, "--db", "flag.db", "init"])
            .status
            .success()
    );
    assert!(dir.path().join("flag.db").exists(), "--db wins");
}

#[test]
fn encryption_off_in_the_config_makes_a_plain_file() {
    let dir = tempdir();
    write(
        &dir.path().join("statevault.toml"),
        "[storage_paths]\nencryption = false\n",
    );
    assert!(run(dir.path(), &["init"]).status.success());
    let info = stdout(&run(dir.path(), &["info", "--json"]));
    assert!(info.contains("\"encrypted\": false"), "{info}");
    assert!(!dir.path().join("statevault.db.key").exists());
}

#[test]
fn a_bad_config_is_one_error_line_naming_the_key() {
    let dir = tempdir();
    let config = dir.path().join("bad.toml");
    write(&config, "[caching]\nl1_cache = { max_size = -1 }\n");
    let out = run(dir.path(), &["--config", config.to_str().unwrap(), "init"]);
    let line = assert_one_error_line(&out);
    assert!(line.contains("caching.l1_cache.max_size"), "{line}");
    assert!(line.contains("bad.toml"), "{line}");
    assert!(
        !dir.path().join("statevault.db").exists(),
        "nothing created"
    );

    let out = run(dir.path(), &["--config", "missing.toml", "info"]);
    assert!(assert_one_error_line(&out).contains("missing.toml"));
}

//! The `statevault` binary: init, info, sql, migrate, check, the bench launcher, and how
//! every failure looks (one `error:` line, non-zero exit, never a panic).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{assert_one_error_line, cli, init, run, stderr, stdout, tempdir};

#[test]
fn init_is_idempotent_and_makes_a_private_encrypted_file() {
    let dir = tempdir();
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created, encrypted"),
        "{}",
        stdout(&out)
    );
    let db = dir.path().join("statevault.db");
    let key = std::fs::read(dir.path().join("statevault.db.key")).unwrap();
    assert!(!std::fs::read(&db).unwrap().starts_with(b"SQLite format 3"));
    assert_eq!(common::file_mode(&db), 0o600);

    let out = run(dir.path(), &["init"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("exists, schema up to date"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(dir.path().join("statevault.db.key")).unwrap(),
        key
    );
}

#[test]
fn info_json_has_the_documented_keys() {
    let dir = tempdir();
    init(dir.path());
    let out = run(dir.path(), &["info", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "path",
        "file_bytes",
        "encrypted",
        "journal_mode",
        "schema_version",
        "tables",
    ] {
        assert!(info.get(key).is_some(), "missing {key} in {info}");
    }
    assert_eq!(info["encrypted"], true);
    assert_eq!(info["journal_mode"], "wal");
    assert!(info["file_bytes"].as_u64().unwrap() > 0);
    for table in common::SPEC_TABLES {
        assert!(info["tables"][table].is_i64(), "table {table} in {info}");
    }
    let text = stdout(&run(dir.path(), &["info"]));
    assert!(text.contains("SQLCipher 4."), "{text}");
}

#[test]
fn db_path_and_key_come_from_flags_or_the_environment() {
    let dir = tempdir();
    let key = format!("x'{}'", "4f".repeat(32));
    let out = cli(dir.path())
        .args(["init"])
        .env("STATEVAULT_DB", "from-env.db")
        .env("STATEVAULT_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("from-env.db").exists());
    assert!(
        !dir.path().join("from-env.db.key").exists(),
        "the env key is used, no key file made"
    );

    let out = run(dir.path(), &["--db", "from-env.db", "info"]);
    let err = assert_one_error_line(&out);
    assert!(err.contains("no key"), "{err}");

    let key_file = dir.path().join("k");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    common::chmod_private(&key_file);
    let out = run(
        dir.path(),
        &["--db", "from-env.db", "--key-file", "k", "info", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn wrong_key_is_one_clear_line_and_the_file_is_untouched() {
    let dir = tempdir();
    init(dir.path());
    let db = dir.path().join("statevault.db");
    let before = std::fs::read(&db).unwrap();
    let key_file = dir.path().join("wrong.key");
    std::fs::write(&key_file, format!("x'{}'\n", "00".repeat(32))).unwrap();
    common::chmod_private(&key_file);
    let out = run(dir.path(), &["--key-file", "wrong.key", "info"]);
    let err = assert_one_error_line(&out);
    assert!(err.contains("wrong key"), "{err}");
    let err = assert_one_error_line(&run(dir.path(), &["--key-file", "absent.key", "info"]));
    assert!(
        err.contains("the key file absent.key does not exist"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn bad_files_get_one_error_line_each() {
    let dir = tempdir();
    std::fs::write(dir.path().join("text.db"), "hello, I am a text file\n").unwrap();
    let err = assert_one_error_line(&run(dir.path(), &["--db", "text.db", "info"]));
    assert!(err.contains("not a database"), "{err}");
    let err = assert_one_error_line(&run(dir.path(), &["--db", "absent.db", "info"]));
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.path().join("absent.db").exists());
    let out = run(dir.path(), &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error:"), "{}", stderr(&out));
}

#[test]
fn sql_prints_rows_and_refuses_writes() {
    let dir = tempdir();
    init(dir.path());
    let out = run(
        dir.path(),
        &[
            "sql",
            "--json",
            "SELECT key, length(value) AS len FROM vault_meta ORDER BY key",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["key"], "created_at");
    assert_eq!(rows[0]["len"], 24);

    let text = stdout(&run(dir.path(), &["sql", "SELECT 1 AS one, 'two' AS two"]));
    assert!(text.starts_with("one | two\n"), "{text}");
    assert!(text.contains("(1 row)"), "{text}");

    let out = run(dir.path(), &["sql", "DELETE FROM vault_meta"]);
    assert_one_error_line(&out);
    let n = stdout(&run(
        dir.path(),
        &["sql", "--json", "SELECT count(*) AS n FROM vault_meta"],
    ));
    assert!(n.contains("\"n\": 4"), "{n}");
}

#[test]
fn migrate_status_lists_every_migration() {
    let dir = tempdir();
    init(dir.path());
    let out = run(dir.path(), &["migrate", "--status"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let count = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(text.lines().count(), count, "{text}");
    assert!(text.lines().all(|l| l.contains(" applied ")), "{text}");
    let out = run(dir.path(), &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let swept: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(swept["removed"]["sessions"], 0, "{swept}");
    let out = run(dir.path(), &["migrate"]);
    assert!(
        stdout(&out).contains("applied 0 migration(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_passes_then_names_corrupted_pages() {
    let dir = tempdir();
    init(dir.path());
    let out = run(dir.path(), &["check"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    cipher_integrity"));

    // Random bytes over the middle of the last page.
    let db = dir.path().join("statevault.db");
    let len = std::fs::metadata(&db).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(len - 2048)).unwrap();
    file.write_all(&[0xA5; 512]).unwrap();
    drop(file);

    let out = run(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("FAIL  cipher_integrity"), "{text}");
    let page = len / 4096;
    assert!(
        text.contains(&format!("page {page}")),
        "names the page: {text}"
    );
    assert!(
        stderr(&out).starts_with("error: check failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fifty_runs_exit_cleanly() {
    let dir = tempdir();
    init(dir.path());
    for i in 0..50 {
        let out = run(dir.path(), &["info", "--json"]);
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", stderr(&out));
    }
}

/// `statevault bench` runs `statevault-bench` from its own directory;
/// copied alone into another, it says what is missing and how to build it.
#[test]
fn bench_without_its_harness_says_how_to_get_it() {
    let dir = tempdir();
    let alone = dir.path().join("statevault");
    std::fs::copy(env!("CARGO_BIN_EXE_statevault"), &alone).unwrap();
    let out = std::process::Command::new(&alone)
        .current_dir(dir.path())
        .args(["bench", "--quick"])
        .output()
        .unwrap();
    let err = assert_one_error_line(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let harness = dir.path().join("statevault-bench");
    assert!(err.contains(&harness.display().to_string()), "{err}");
    assert!(
        err.contains("cargo build --release -p statevault-bench"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Through the launcher, the harness gets the arguments and the exit
/// status is its own: a report for a valid run, clap's exit 2 for a flag it
/// does not know.
#[test]
fn bench_runs_the_harness_beside_it() {
    if common::bench_harness().is_none() {
        return;
    }
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["bench", "--quick", "--json", "--only", "cache_l1_get"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workloads = report["workloads"].as_object().unwrap();
    assert_eq!(workloads.len(), 1, "{report}");
    assert!(
        workloads["cache_l1_get"]["ops_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report.get("open_ms").is_none(), "{report}");

    let out = run(dir.path(), &["bench", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn session_commands_list_and_revoke() {
    let dir = tempdir();
    init(dir.path());
    let db = dir.path().join("statevault.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens = rt.block_on(async {
        let vault = statevault::Vault::open(statevault::VaultOptions::new(&db))
            .await
            .unwrap();
        let mut tokens = Vec::new();
        for user in ["ann", "ann", "ben"] {
            let issued = vault
                .sessions()
                .create(statevault::NewSession::new(user))
                .await
                .unwrap();
            tokens.push((issued.id, issued.token));
        }
        vault.close().await.unwrap();
        tokens
    });

    let out = run(dir.path(), &["session", "list", "ann", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], tokens[0].0.as_str());
    let text = stdout(&out);
    assert!(
        !text.contains(tokens[0].1.expose()),
        "tokens are never listed"
    );

    let out = run(dir.path(), &["session", "revoke", &tokens[0].0]);
    assert!(stdout(&out).contains("revoked session"), "{}", stdout(&out));
    let out = run(dir.path(), &["session", "revoke", "--user", "ann"]);
    assert!(
        stdout(&out).contains("revoked 1 session(s) of ann"),
        "{}",
        stdout(&out)
    );
    let out = run(dir.path(), &["session", "list", "ann"]);
    assert!(
        stdout(&out).contains("ann has no live sessions"),
        "{}",
        stdout(&out)
    );
    let out = run(dir.path(), &["session", "list", "ben"]);
    assert!(stdout(&out).contains(&tokens[2].0), "{}", stdout(&out));
    let out = run(dir.path(), &["session", "revoke"]);
    assert_eq!(out.status.code(), Some(2), "an id or --user is required");
}

#[test]
fn audit_prefs_and_user_commands() {
    let dir = tempdir();
    init(dir.path());
    let db = dir.path().join("statevault.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let vault = statevault::Vault::open(statevault::VaultOptions::new(&db))
            .await
            .unwrap();
        vault
            .sessions()
            .create(statevault::NewSession::new("ann"))
            .await
            .unwrap();
        for action in ["login", "search"] {
            let event =
                statevault::AuditEvent::new(statevault::EventKind::Auth, action).user("ann");
            vault.audit().append(event).unwrap();
        }
        vault.close().await.unwrap();
    });

    let out = run(dir.path(), &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: 2 events"), "{}", stdout(&out));
    let out = run(dir.path(), &["audit", "tail", "-n", "1", "--json"]);
    let tail: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tail[0]["action"], "search");

    let out = run(
        dir.path(),
        &[
            "prefs",
            "set",
            "ann",
            r#"{"theme": "dark", "page": {"size": 10}}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(dir.path(), &["prefs", "set", "ann", r#"{"page": null}"#]);
    assert!(
        stdout(&out).contains("\"theme\": \"dark\"") && !stdout(&out).contains("page"),
        "{}",
        stdout(&out)
    );
    let out = run(dir.path(), &["prefs", "get", "ann"]);
    assert!(
        stdout(&out).contains("\"schema_version\": 1"),
        "{}",
        stdout(&out)
    );
    assert_one_error_line(&run(dir.path(), &["prefs", "set", "ann", "{not json"]));

    let out = run(dir.path(), &["user", "export", "ann", "--out", "ann.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(common::file_mode(&dir.path().join("ann.json")), 0o600);
    let export: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ann.json")).unwrap()).unwrap();
    assert_eq!(export["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(export["audit_events"].as_array().unwrap().len(), 2);
    // On standard output, the same document, as JSON a pipe can parse.
    let out = run(dir.path(), &["user", "export", "ann"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("user export printed no JSON ({e}): {}", stdout(&out)));
    assert_eq!(printed["sessions"], export["sessions"]);
    assert_eq!(printed["preferences"], export["preferences"]);

    let out = run(dir.path(), &["user", "erase", "ann"]);
    let text = stdout(&out);
    assert!(
        text.contains("sessions") && text.contains("audit_events"),
        "{text}"
    );
    let out = run(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("ok    audit_chain"),
        "{}",
        stdout(&out)
    );

    // An edit through SQL breaks the chain: audit verify and check say so.
    let conn = common::raw_connection(&db);
    conn.execute(
        "UPDATE audit_events SET action = 'forged' WHERE seq = 3",
        [],
    )
    .unwrap();
    drop(conn);
    let out = run(dir.path(), &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("BROKEN at event 3"),
        "{}",
        stdout(&out)
    );
    let out = run(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL  audit_chain"),
        "{}",
        stdout(&out)
    );
}

/// Every directory entry under `dir`, as paths relative to it.
fn entries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    found
}

/// A database URL, from `--db`, `STATEVAULT_DB` or the config file, is
/// never taken for a path: every command refuses it in one line that names
/// the scheme but not the password, and creates nothing (it used to make a
/// directory named `postgres:`).
#[test]
fn a_database_url_is_never_taken_for_a_path() {
    let url = "postgres://app:hunter2@db.internal:5432/state";
    let commands: &[&[&str]] = &[
        &["init"],
        &["migrate"],
        &["info"],
        &["sql", "SELECT 1"],
        &["check"],
        &["health"],
        &["session", "list", "alice"],
        &["session", "revoke", "--user", "alice"],
        &["audit", "verify"],
        &["prefs", "get", "alice"],
        &["prefs", "set", "alice", "{}"],
        &["user", "export", "alice"],
        &["user", "erase", "alice"],
        &["sweep"],
        &["backup"],
        &["rekey", "--new-key-file", "new.key"],
        &["demo", "--requests", "10"],
        &["limits", "status", "alice"],
        &["limits", "reset", "alice"],
        &["cache", "stats"],
        &["cache", "clear"],
        &["metrics"],
        &["import-legacy", "legacy"],
    ];
    for args in commands {
        for how in ["flag", "env", "config"] {
            let dir = tempdir();
            let mut cmd = cli(dir.path());
            match how {
                "flag" => {
                    cmd.args(["--db", url]);
                }
                "env" => {
                    cmd.env("STATEVAULT_DB", url);
                }
                _ => {
                    let config = dir.path().join("settings.toml");
                    std::fs::write(&config, format!("[storage_paths]\ndatabase = \"{url}\"\n"))
                        .unwrap();
                    cmd.arg("--config").arg(&config);
                }
            }
            let key = dir.path().join("new.key");
            std::fs::write(&key, format!("{:064x}", 7)).unwrap();
            common::chmod_private(&key);
            let out = cmd.args(*args).output().unwrap();
            // With feature `postgres`, a postgres:// URL reaches the commands
            // that work there (here they stop at the missing key) or is told
            // they do not; without it, it is refused.
            let err = if args[0] == "health" {
                // The health report names the failing component, on stdout.
                assert_eq!(out.status.code(), Some(2), "{args:?} ({how})");
                stdout(&out)
            } else {
                assert_one_error_line(&out)
            };
            assert!(
                err.contains("postgres://") && err.contains("PostgreSQL"),
                "{args:?} ({how}): {err}"
            );
            assert!(
                !err.contains("hunter2"),
                "{args:?} ({how}) leaked the password: {err}"
            );
            let mut left = entries(dir.path());
            left.retain(|e| e != "settings.toml" && e != "new.key");
            assert!(left.is_empty(), "{args:?} ({how}) created {left:?}");
        }
    }
}

#[tokio::test]
async fn the_library_refuses_a_url_as_well() {
    for (url, says) in [
        ("postgresql://localhost/state", "PostgreSQL"),
        ("sqlite://state.db", "not a file path"),
    ] {
        let e = statevault::Vault::open(statevault::VaultOptions::new(url))
            .await
            .unwrap_err();
        if cfg!(feature = "postgres") && url.starts_with("postgresql") {
            // Taken as a database, which needs its key named.
            assert!(matches!(&e, statevault::Error::InvalidKey { .. }), "{e:?}");
        } else {
            assert!(
                matches!(&e, statevault::Error::InvalidInput { what: "path", .. }),
                "{e:?}"
            );
        }
        assert!(e.to_string().contains(says), "{e}");
        let scheme = url.split_once("//").unwrap().0;
        assert!(!Path::new(scheme).exists(), "{scheme} was created");
    }
}

//! PostgreSQL so far (feature `postgres`): `statevault init`, `migrate` and
//! `info` on a real server, the key check, and the commands that are not
//! on PostgreSQL yet. Needs `STATEVAULT_TEST_POSTGRES` (`.ci/run` starts a
//! throwaway server); each test makes a database of its own.

#![cfg(feature = "postgres")]

mod common;

use std::path::Path;
use std::process::Output;

use common::{PgDatabase, assert_one_error_line, cli, file_mode, stderr, stdout, tempdir};
use statevault::postgres::Database;
use statevault::{Error, Key, KeySource};

/// `statevault --db URL --key-file KEY args…` in `dir`.
fn run(dir: &Path, db: &PgDatabase, key: &str, args: &[&str]) -> Output {
    cli(dir)
        .args(["--db", &db.url, "--key-file", key])
        .args(args)
        .output()
        .unwrap()
}

/// A key file with a new random raw key, `dir/name`.
fn new_key_file(dir: &Path, name: &str) {
    Key::generate()
        .unwrap()
        .write_new_file(&dir.join(name))
        .unwrap();
}

/// Options for a vault on `db` with its key in `dir/vault.key`.
fn options_on(db: &PgDatabase, dir: &Path) -> statevault::VaultOptions {
    statevault::VaultOptions::new(&db.url).key_source(KeySource::File(dir.join("vault.key")))
}

/// Waits, 10 s at most, until `vault` refuses `token` as revoked: the event
/// a change-feed test waits for (the vault's clock does not move).
async fn until_revoked(vault: &statevault::Vault, token: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !matches!(
            vault.sessions().validate(token, None).await.unwrap(),
            statevault::Validation::Revoked { .. }
        ) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the revocation never reached the other instance");
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
}

fn migrations() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count()
}

#[test]
fn init_makes_the_schema_and_a_private_key_file_once_and_info_and_migrate_read_it() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let first = ok(&run(dir.path(), &db, "vault.key", &["init"]));
    assert!(first.contains("(schema statevault): created"), "{first}");
    assert_eq!(file_mode(&dir.path().join("vault.key")), 0o600);
    let again = ok(&run(dir.path(), &db, "vault.key", &["init"]));
    assert!(again.contains("exists, schema up to date"), "{again}");

    let info: serde_json::Value =
        serde_json::from_str(&ok(&run(dir.path(), &db, "vault.key", &["info", "--json"]))).unwrap();
    assert_eq!(info["schema"], "statevault");
    assert_eq!(info["schema_version"], info["latest_schema_version"]);
    assert_eq!(info["tables"]["_sqlx_migrations"], migrations());
    assert_eq!(info["tables"]["sessions"], 0);
    assert_eq!(info["tables"]["audit_head"], 1);
    assert!(!info["url"].as_str().unwrap().contains("password"));

    let status = ok(&run(dir.path(), &db, "vault.key", &["migrate", "--status"]));
    assert_eq!(
        status.matches(" applied ").count(),
        migrations(),
        "{status}"
    );
    let migrate = ok(&run(dir.path(), &db, "vault.key", &["migrate"]));
    assert!(migrate.contains("applied 0 migration(s)"), "{migrate}");

    // Stock sqlx-cli agrees: nothing pending.
    if let Some(sqlx) = common::tool("sqlx") {
        let out = std::process::Command::new(sqlx)
            .args(["migrate", "info", "--source"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .args(["--database-url", &db.url_in_schema("statevault")])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let text = ok(&out);
        assert_eq!(text.matches("installed").count(), migrations(), "{text}");
        assert!(!text.contains("pending"), "{text}");
    }
}

#[test]
fn another_key_is_refused_and_writes_nothing() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    ok(&run(dir.path(), &db, "a.key", &["init"]));
    // The newest migration undone, as if this build were newer than the
    // database: init with another key must not apply it.
    db.psql(
        "DROP TABLE statevault.changes; DELETE FROM statevault._sqlx_migrations \
         WHERE version = (SELECT max(version) FROM statevault._sqlx_migrations)",
    );
    let before = db.psql("SELECT key, value FROM statevault.vault_meta ORDER BY key");
    new_key_file(dir.path(), "b.key");
    for args in [&["info"][..], &["migrate"], &["init"]] {
        let out = run(dir.path(), &db, "b.key", args);
        let err = assert_one_error_line(&out);
        assert!(err.contains("wrong key"), "{args:?}: {err}");
    }
    let after = db.psql("SELECT key, value FROM statevault.vault_meta ORDER BY key");
    assert_eq!(before, after);
    let changes = db.psql("SELECT to_regclass('statevault.changes') IS NULL");
    assert_eq!(changes.trim(), "t", "a migration ran under another key");
    // The right key applies it.
    let migrated = ok(&run(dir.path(), &db, "a.key", &["migrate"]));
    assert!(migrated.contains("applied 1 migration(s)"), "{migrated}");
}

#[test]
fn a_passphrase_from_the_environment_opens_what_it_sealed_and_no_other_does() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let with = |passphrase: &str, args: &[&str]| {
        cli(dir.path())
            .args(["--db", &db.url])
            .args(args)
            .env("STATEVAULT_KEY", passphrase)
            .output()
            .unwrap()
    };
    ok(&with("correct horse battery staple", &["init"]));
    ok(&with("correct horse battery staple", &["info"]));
    let err = assert_one_error_line(&with("correct horse battery stapler", &["info"]));
    assert!(
        err.contains("wrong key") && err.contains("passphrase"),
        "{err}"
    );
    // No key at all: there is no key file beside a URL.
    let out = cli(dir.path())
        .args(["--db", &db.url, "info"])
        .output()
        .unwrap();
    let err = assert_one_error_line(&out);
    assert!(err.contains("--key-file or STATEVAULT_KEY"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written here"
    );
}

#[test]
fn a_database_without_init_is_missing_and_other_commands_say_what_works() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    for args in [
        &["info"][..],
        &["session", "list", "alice"],
        &["prefs", "get", "alice"],
    ] {
        let err = assert_one_error_line(&run(dir.path(), &db, "vault.key", args));
        assert!(
            err.contains("does not exist (run `statevault init`"),
            "{args:?}: {err}"
        );
    }
    ok(&run(dir.path(), &db, "vault.key", &["init"]));
    let err = assert_one_error_line(&run(dir.path(), &db, "vault.key", &["sql", "SELECT 1"]));
    assert!(err.contains("use psql"), "{err}");
    let err = assert_one_error_line(&run(dir.path(), &db, "vault.key", &["import-legacy", "x"]));
    assert!(err.contains("SQLite file only"), "{err}");
    for args in [&["backup"][..], &["restore", "x.db"]] {
        let err = assert_one_error_line(&run(dir.path(), &db, "vault.key", args));
        assert!(err.contains("pg_dump"), "{args:?}: {err}");
    }
    assert_eq!(
        db.psql("SELECT count(*) FROM statevault.sessions").trim(),
        "0"
    );
}

/// `session`, `prefs`, `limits`, `audit`, `cache`, `sweep`, `metrics` and
/// `health` take a URL: what one command writes the next reads, through
/// the database.
#[test]
fn the_facets_commands_work_on_a_url() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    ok(&run(dir.path(), &db, "vault.key", &["init"]));
    let health = ok(&run(dir.path(), &db, "vault.key", &["health"]));
    assert!(health.starts_with("healthy"), "{health}");
    assert!(health.contains("database"), "{health}");
    let set = ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["prefs", "set", "alice", r#"{"theme": "dark"}"#],
    ));
    assert!(set.contains("dark"), "{set}");
    let get = ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["prefs", "get", "alice"],
    ));
    assert!(get.contains("dark"), "{get}");
    let list = ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["session", "list", "alice"],
    ));
    assert!(list.contains("alice has no live sessions"), "{list}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["cache", "stats", "--json"],
    )))
    .unwrap();
    assert_eq!(stats["l2"]["entries"], 0, "{stats}");
    let cleared = ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["cache", "invalidate", "--tag", "t"],
    ));
    assert!(
        cleared.contains("invalidated 0 entries tagged"),
        "{cleared}"
    );
    let err = assert_one_error_line(&run(
        dir.path(),
        &db,
        "other.key",
        &["prefs", "get", "alice"],
    ));
    assert!(err.contains("key"), "another key is refused: {err}");
}

#[test]
fn three_inits_at_once_all_succeed_and_migrate_once() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    let children: Vec<_> = (0..3)
        .map(|_| {
            cli(dir.path())
                .args(["--db", &db.url, "--key-file", "vault.key", "init"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = 0;
    for child in children {
        let text = ok(&child.wait_with_output().unwrap());
        created += usize::from(text.contains(": created"));
    }
    assert_eq!(created, 1, "exactly one of them made the database");
    let applied = db.psql("SELECT count(*) FROM statevault._sqlx_migrations WHERE success");
    assert_eq!(applied.trim(), migrations().to_string());
    assert_eq!(
        db.psql("SELECT count(*) FROM statevault.vault_meta WHERE key LIKE 'seal_%'")
            .trim(),
        "2",
        "one salt and one key check"
    );
}

#[tokio::test]
async fn the_library_prepares_and_opens_a_database() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let key = KeySource::Key(Key::generate().unwrap());
    let missing = Database::open(&db.url, &key).await.unwrap_err();
    assert!(matches!(missing, Error::Missing { .. }), "{missing:?}");
    let (made, created) = Database::init(&db.url, &key).await.unwrap();
    assert!(created);
    assert!(!format!("{made:?}").contains("Key"));
    made.close().await;
    let opened = Database::open(&db.url, &key).await.unwrap();
    let info = opened.info().await.unwrap();
    assert_eq!(info.schema_version, info.latest_schema_version);
    assert!(
        opened
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    opened.close().await;
    let other = KeySource::Key(Key::generate().unwrap());
    let wrong = Database::open(&db.url, &other).await.unwrap_err();
    assert!(matches!(wrong, Error::WrongKey { .. }), "{wrong:?}");
}

/// A server that is down fails at once with what the driver said and the
/// URL without its password (a pool would have retried for its whole
/// acquire timeout, then said only that it timed out).
#[test]
fn an_unreachable_server_fails_at_once_naming_it_without_the_password() {
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    let out = cli(dir.path())
        .args([
            "--db",
            "postgres://app:hunter2@127.0.0.1:1/state",
            "--key-file",
            "vault.key",
            "init",
        ])
        .output()
        .unwrap();
    let err = assert_one_error_line(&out);
    assert!(
        err.contains("cannot connect to postgres://app@127.0.0.1:1/state"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // The driver's own answer, not a pool's timeout after retrying.
    assert!(err.contains("Connection refused"), "{err}");
}

/// A server that answers but has no such database says so, in its words.
#[test]
fn a_missing_database_is_named_in_the_servers_words() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    let url = db
        .url
        .replacen(&format!("/{}?", db.name), "/no_such_db?", 1);
    assert_ne!(url, db.url);
    let out = cli(dir.path())
        .args(["--db", &url, "--key-file", "vault.key", "info"])
        .output()
        .unwrap();
    let err = assert_one_error_line(&out);
    assert!(
        err.trim_end()
            .ends_with("database \"no_such_db\" does not exist"),
        "{err}"
    );
}

/// As on the file: a schema a newer build migrated, or one whose applied
/// migration differs from this build's, is refused by every command before
/// it reads or writes, not only by `migrate`.
#[test]
fn a_schema_this_build_does_not_know_is_refused_by_every_command() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    let run = |args: &[&str]| run(dir.path(), &db, "vault.key", args);
    assert!(run(&["init"]).status.success());
    let commands: &[&[&str]] = &[
        &["info"],
        &["check"],
        &["prefs", "set", "ann", r#"{"theme": "dark"}"#],
        &["user", "erase", "ann"],
        &["session", "list", "ann"],
        &["migrate"],
    ];
    let refused_by_all = |what: &str| {
        for args in commands {
            let err = assert_one_error_line(&run(args));
            assert!(err.contains(what), "{args:?}: {err}");
        }
    };
    db.psql(
        "INSERT INTO statevault._sqlx_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES (20991231000000, 'from a newer build', true, '\\x00', 1)",
    );
    refused_by_all("newer than this build");
    db.psql("DELETE FROM statevault._sqlx_migrations WHERE version = 20991231000000");
    db.psql(
        "UPDATE statevault._sqlx_migrations SET checksum = '\\x00' \
         WHERE version = (SELECT min(version) FROM statevault._sqlx_migrations)",
    );
    refused_by_all("checksum differs");
    assert_eq!(
        db.psql("SELECT count(*) FROM statevault.preferences")
            .trim(),
        "0"
    );
}

/// A database whose key check was deleted still holds values sealed under
/// its key: `init` with another key refuses instead of writing a check that
/// would lock the right key out, and every command says the check is
/// missing rather than that the key is wrong.
#[test]
fn a_missing_key_check_is_named_and_never_replaced() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    new_key_file(dir.path(), "other.key");
    let run = |key: &str, args: &[&str]| run(dir.path(), &db, key, args);
    for args in [
        &["init"][..],
        &["prefs", "set", "ann", r#"{"theme": "dark"}"#],
    ] {
        let out = run("vault.key", args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    db.psql("DELETE FROM statevault.vault_meta WHERE key = 'seal_check'");
    for (key, args) in [
        ("other.key", &["init"][..]),
        ("vault.key", &["init"]),
        ("vault.key", &["info"]),
        ("other.key", &["prefs", "get", "ann"]),
    ] {
        let err = assert_one_error_line(&run(key, args));
        assert!(
            err.contains("the key check is missing"),
            "{key} {args:?}: {err}"
        );
    }
    let checks = "SELECT count(*) FROM statevault.vault_meta WHERE key = 'seal_check'";
    assert_eq!(db.psql(checks).trim(), "0", "nothing was written");
}

/// A table dropped by hand: `check` fails that table's check in the
/// server's words (without sqlx's "at line N" of the server's C source) and
/// still runs the others; a command reading the table says the same.
#[test]
fn a_dropped_table_fails_its_check_and_the_others_run() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    new_key_file(dir.path(), "vault.key");
    let run = |args: &[&str]| run(dir.path(), &db, "vault.key", args);
    assert!(run(&["init"]).status.success());
    db.psql("DROP TABLE statevault.preferences");
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("FAIL  sealed_preferences"), "{text}");
    assert!(
        text.contains("relation \"preferences\" does not exist (42P01)"),
        "{text}"
    );
    assert!(text.contains("ok    sealed_sessions"), "{text}");
    assert!(text.contains("ok    audit_chain"), "{text}");
    let err = assert_one_error_line(&run(&["prefs", "get", "ann"]));
    assert!(
        err.trim_end()
            .ends_with("relation \"preferences\" does not exist (42P01)"),
        "{err}"
    );
}

/// What a database administrator or a `pg_dump` sees: the rows (user ids
/// are not secret), and none of the session data, client metadata,
/// preference documents, audit details, tokens, IPs, user agents or device
/// fingerprints (of sessions, audit events and rate-limit violations).
#[tokio::test]
async fn a_pg_dump_shows_no_plaintext() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let Some(pg_dump) = common::tool("pg_dump") else {
        return;
    };
    let dir = tempdir();
    let vault = statevault::Vault::open(options_on(&db, dir.path()).preferences(
        statevault::PreferencesConfig::new(serde_json::json!({})).allow_unknown_keys(true),
    ))
    .await
    .unwrap();
    let issued = vault
        .sessions()
        .create(
            statevault::NewSession::new("alice")
                .client_meta("route", "PLAINTEXT-META")
                .client_ip("203.0.113.77")
                .user_agent("PLAINTEXT-AGENT")
                .device_fingerprint("PLAINTEXT-DEVICE")
                .data(&serde_json::json!({"note": "PLAINTEXT-DATA"}))
                .unwrap(),
        )
        .await
        .unwrap();
    vault
        .preferences()
        .patch(
            "alice",
            &serde_json::json!({"secret": "PLAINTEXT-PREFERENCE"}),
        )
        .await
        .unwrap();
    let cached = statevault::CacheKey::new("search", "alice").unwrap();
    vault
        .cache()
        .set(&cached, b"PLAINTEXT-CACHED-VALUE")
        .await
        .unwrap();
    vault.close().await.unwrap();

    let out = std::process::Command::new(pg_dump)
        .args(["--data-only", "-d", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("alice"), "the dump holds the rows");
    assert!(dump.contains("search:alice"), "and the cache's");
    for secret in [
        "PLAINTEXT",
        "203.0.113.77",
        issued.token.expose(),
        issued.csrf_token.expose(),
    ] {
        assert!(!dump.contains(secret), "{secret} is in the dump");
    }
    // Nor in its hex (bytea is dumped as hex).
    let hex: String = b"PLAINTEXT".iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dump.contains(&hex), "hex plaintext in the dump");
}

/// Set for the child processes of [`three_processes_share_one_state`]: the
/// database's URL.
const INSTANCE_URL: &str = "STATEVAULT_TEST_INSTANCE_URL";
/// Set for them too: the key file.
const INSTANCE_KEY: &str = "STATEVAULT_TEST_INSTANCE_KEY";

/// Options every instance of [`three_processes_share_one_state`] opens with:
/// a shared budget of 50 a day, at most 5 sessions a user (refusing more).
fn instance_options(url: &str, key: &Path) -> statevault::VaultOptions {
    let mut sessions = statevault::SessionConfig::default();
    sessions.max_per_user = 5;
    sessions.when_full = statevault::WhenFull::Refuse;
    statevault::VaultOptions::new(url)
        .key_source(KeySource::File(key.to_owned()))
        .sessions(sessions)
        .limits(
            statevault::LimitsConfig::empty().limit(
                "l",
                statevault::Limit::new()
                    .window(statevault::Window::per(
                        std::time::Duration::from_secs(86_400),
                        50.0,
                    ))
                    .shared(true),
            ),
        )
}

/// Three child processes, each running only the test `test` of this
/// binary (an instance of a service) on the database at `url` with the key
/// file `key`, and `env` besides; their output piped.
fn instances(
    test: &str,
    url: &str,
    key: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> Vec<std::process::Child> {
    (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads", "1"])
                .env(INSTANCE_URL, url)
                .env(INSTANCE_KEY, key)
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// One instance of a service (run by [`three_processes_share_one_state`] in
/// a process of its own; on its own it does nothing): 40 shared-budget
/// checks, 8 session creates for one user and 30 audit appends, as fast as
/// it can. It prints how many checks were allowed and sessions created.
#[tokio::test]
async fn instance() {
    let (Ok(url), Ok(key)) = (std::env::var(INSTANCE_URL), std::env::var(INSTANCE_KEY)) else {
        return;
    };
    let vault = statevault::Vault::open(instance_options(&url, Path::new(&key)))
        .await
        .unwrap();
    let none = statevault::ClientInfo {
        ip: None,
        user_agent: None,
    };
    let (mut allowed, mut created) = (0, 0);
    for i in 0..40 {
        allowed += u32::from(
            vault
                .limits()
                .check("subject", "l", 1, &none)
                .await
                .unwrap()
                .allowed,
        );
        if i % 5 == 0 {
            match vault
                .sessions()
                .create(statevault::NewSession::new("capped"))
                .await
            {
                Ok(_) => created += 1,
                Err(Error::SessionLimit { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        vault
            .audit()
            .append(statevault::AuditEvent::new(
                statevault::EventKind::ApiCall,
                "check",
            ))
            .unwrap();
        if i % 10 == 0 {
            vault.flush().await.unwrap();
        }
    }
    vault.close().await.unwrap();
    println!("RESULT allowed={allowed} created={created}");
}

/// Three processes on one database at once: the shared budget is exact,
/// the per-user session cap holds, and the audit chain they all appended
/// to verifies with every event and no fork.
#[tokio::test]
async fn three_processes_share_one_state() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let key = dir.path().join("vault.key");
    Database::init(&db.url, &KeySource::File(key.clone()))
        .await
        .unwrap()
        .0
        .close()
        .await;
    let children = instances("instance", &db.url, &key, &[]);
    let (mut allowed, mut created) = (0, 0);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        // The harness prints `test instance ... ` before it on the line.
        let line = text
            .split_once("RESULT ")
            .and_then(|(_, rest)| rest.lines().next())
            .unwrap_or_else(|| panic!("no result: {text}"));
        let number = |name: &str| -> u32 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .parse()
                .unwrap()
        };
        allowed += number("allowed");
        created += number("created");
    }
    assert_eq!(allowed, 50, "3 × 40 checks of a budget of 50");
    assert_eq!(created, 5, "3 × 8 creates under a cap of 5");
    let vault = statevault::Vault::open(instance_options(&db.url, &key))
        .await
        .unwrap();
    let report = vault.audit().verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 3 * 40);
    assert_eq!(vault.sessions().list("capped").await.unwrap().len(), 5);
    vault.close().await.unwrap();
}

/// Set for the children of [`a_tag_invalidation_reaches_every_instance_l1`]:
/// the directory where each says it holds the entry in memory.
const INSTANCE_DIR: &str = "STATEVAULT_TEST_INSTANCE_DIR";

/// The entry [`a_tag_invalidation_reaches_every_instance_l1`] invalidates.
fn shared_entry() -> statevault::CacheKey {
    statevault::CacheKey::new("playlists", "7").unwrap()
}

/// One instance of [`a_tag_invalidation_reaches_every_instance_l1`] (on its
/// own it does nothing): reads the shared entry into L1, says so with a
/// file, then reads it until the invalidation made elsewhere reaches its
/// memory (a timeout of 30 s fails it).
#[tokio::test]
async fn cache_instance() {
    let (Ok(url), Ok(key), Ok(dir)) = (
        std::env::var(INSTANCE_URL),
        std::env::var(INSTANCE_KEY),
        std::env::var(INSTANCE_DIR),
    ) else {
        return;
    };
    let vault = statevault::Vault::open(instance_options(&url, Path::new(&key)))
        .await
        .unwrap();
    let entry = shared_entry();
    for _ in 0..2 {
        assert_eq!(
            &*vault.cache().get(&entry).await.unwrap().unwrap(),
            b"tracks"
        );
    }
    assert_eq!(vault.cache().stats().await.unwrap().l1.hits, 1, "in L1");
    std::fs::write(
        Path::new(&dir).join(format!("ready-{}", std::process::id())),
        "",
    )
    .unwrap();
    common::until_gone(&vault, &[&entry], std::time::Duration::from_secs(30)).await;
    vault.close().await.unwrap();
}

/// Three processes hold one entry in L1; a tag invalidation on a fourth
/// instance reaches each one's memory, and none serves the entry again.
#[tokio::test]
async fn a_tag_invalidation_reaches_every_instance_l1() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let key = dir.path().join("vault.key");
    let vault = statevault::Vault::open(instance_options(&db.url, &key))
        .await
        .unwrap();
    vault
        .cache()
        .set_with(
            &shared_entry(),
            b"tracks",
            &statevault::SetOptions::new().tag("playlist:7"),
        )
        .await
        .unwrap();
    vault.flush().await.unwrap();
    let children = instances(
        "cache_instance",
        &db.url,
        &key,
        &[(INSTANCE_DIR, dir.path().as_os_str())],
    );
    let ready = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ready-")
            })
            .count()
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while ready() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the instances never read the entry");
    assert_eq!(vault.cache().invalidate_tag("playlist:7").await.unwrap(), 1);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("1 passed"), "{}", stdout(&out));
    }
    vault.close().await.unwrap();
}

/// `check` opens every sealed value with the vault's key, and names the row
/// whose value does not open: here a session whose data was copied from
/// another row (it was sealed for that row).
#[tokio::test]
async fn check_opens_every_sealed_value_and_names_a_moved_one() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let key = dir.path().join("vault.key");
    let vault = statevault::Vault::open(options_on(&db, dir.path()))
        .await
        .unwrap();
    let a = vault
        .sessions()
        .create(statevault::NewSession::new("alice"))
        .await
        .unwrap();
    let b = vault
        .sessions()
        .create(statevault::NewSession::new("bob"))
        .await
        .unwrap();
    let client = statevault::ClientInfo {
        ip: Some("198.51.100.1"),
        user_agent: None,
    };
    for _ in 0..6 {
        vault
            .limits()
            .check("alice", "auth_attempts", 1, &client)
            .await
            .unwrap();
    }
    vault
        .audit()
        .append_durable(statevault::AuditEvent::new(
            statevault::EventKind::Auth,
            "login",
        ))
        .await
        .unwrap();
    let report = vault.check().await.unwrap();
    assert!(report.ok(), "{report:?}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "sealed_sessions",
            "sealed_preferences",
            "sealed_audit",
            "sealed_violations",
            "sealed_cache_values"
        ]
    );
    vault.close().await.unwrap();

    let key = key.to_str().unwrap();
    let out = run(dir.path(), &db, key, &["check"]);
    let text = ok(&out);
    assert!(text.contains("ok    sealed_sessions"), "{text}");
    assert!(text.contains("ok    audit_chain"), "{text}");

    db.psql(&format!(
        "UPDATE statevault.sessions SET data = (SELECT data FROM statevault.sessions WHERE id = '{}') \
         WHERE id = '{}'",
        b.id, a.id
    ));
    let out = run(dir.path(), &db, key, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL  sealed_sessions"), "{text}");
    assert!(
        text.contains(&format!("session {}: data does not open", a.id)),
        "{text}"
    );
    assert!(!text.contains(&b.id), "only the moved value fails: {text}");
    assert!(stderr(&out).contains("check failed: sealed_sessions"));
}

/// When an instance's listener loses its connection, it reconnects and
/// reads what it missed from `changes`: a revocation made meanwhile still
/// reaches it.
#[tokio::test]
async fn a_listener_that_lost_its_connection_reads_what_it_missed() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let clock = statevault::FakeClock::default();
    let options = options_on(&db, dir.path()).clock(clock.clone());
    let a = statevault::Vault::open(options.clone()).await.unwrap();
    let b = statevault::Vault::open(options).await.unwrap();
    let issued = a
        .sessions()
        .create(statevault::NewSession::new("alice"))
        .await
        .unwrap();
    let token = issued.token.expose();
    assert!(matches!(
        b.sessions().validate(token, None).await.unwrap(),
        statevault::Validation::Valid(_)
    ));
    let killed = db.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    );
    assert_ne!(killed.trim(), "0", "no listener to cut off");
    a.sessions().revoke(&issued.id).await.unwrap();
    until_revoked(&b, token).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A cached value copied onto another key does not open there: `check`
/// names the key, and a read reports it as corrupt and drops it, as the
/// file does with a blob that does not decode.
#[tokio::test]
async fn a_cached_value_moved_to_another_key_is_corrupt_and_dropped() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let vault = statevault::Vault::open(options_on(&db, dir.path()))
        .await
        .unwrap();
    let (a, b) = (
        statevault::CacheKey::new("search", "a").unwrap(),
        statevault::CacheKey::new("search", "b").unwrap(),
    );
    vault.cache().set(&a, b"value of a").await.unwrap();
    vault.cache().set(&b, b"value of b").await.unwrap();
    vault.close().await.unwrap();
    db.psql(
        "UPDATE statevault.cache_entries SET value = \
         (SELECT value FROM statevault.cache_entries WHERE key = 'search:a') WHERE key = 'search:b'",
    );
    let vault = statevault::Vault::open(options_on(&db, dir.path()))
        .await
        .unwrap();
    let report = vault.check().await.unwrap();
    let cache = report
        .checks
        .iter()
        .find(|c| c.name == "sealed_cache_values")
        .unwrap();
    assert_eq!(
        cache.problems,
        ["cache entry \"search:b\": the value does not open"]
    );
    assert_eq!(
        &*vault.cache().get(&a).await.unwrap().unwrap(),
        b"value of a"
    );
    match vault.cache().get(&b).await {
        Err(Error::CacheCorrupt { key, .. }) => assert_eq!(key, "search:b"),
        other => panic!("expected CacheCorrupt, got {other:?}"),
    }
    assert!(vault.cache().get(&b).await.unwrap().is_none(), "dropped");
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
}

/// A change whose transaction took its place in the feed before another's
/// but commits after it still reaches every instance (`seq`s are taken in
/// order, commits are not): here a revocation written by hand, held open
/// while the vault publishes a later one.
#[tokio::test]
async fn a_change_committed_after_a_later_one_still_arrives() {
    use sqlx::Connection as _;
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let clock = statevault::FakeClock::default();
    let options = options_on(&db, dir.path()).clock(clock.clone());
    let a = statevault::Vault::open(options.clone()).await.unwrap();
    let b = statevault::Vault::open(options).await.unwrap();
    let early = a
        .sessions()
        .create(statevault::NewSession::new("alice"))
        .await
        .unwrap();
    let later = a
        .sessions()
        .create(statevault::NewSession::new("bob"))
        .await
        .unwrap();
    for issued in [&early, &later] {
        assert!(matches!(
            b.sessions()
                .validate(issued.token.expose(), None)
                .await
                .unwrap(),
            statevault::Validation::Valid(_)
        ));
    }
    let mut held = sqlx::PgConnection::connect(&db.url_in_schema("statevault"))
        .await
        .unwrap();
    let mut tx = held.begin().await.unwrap();
    let hash: Vec<u8> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'revoked' WHERE id = $1
         RETURNING token_hash",
    )
    .bind(&early.id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO changes (origin, at, facet, kind, target)
         VALUES (1, now(), 'sessions', 'token', $1)",
    )
    .bind(&hash[..])
    .execute(&mut *tx)
    .await
    .unwrap();
    a.sessions().revoke(&later.id).await.unwrap();
    until_revoked(&b, later.token.expose()).await;
    // Not committed yet: still live for the other instance.
    assert!(matches!(
        b.sessions()
            .validate(early.token.expose(), None)
            .await
            .unwrap(),
        statevault::Validation::Valid(_)
    ));
    sqlx::query("SELECT pg_notify('statevault_changes', '')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    until_revoked(&b, early.token.expose()).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// `demo` on a URL drives every facet, as on a file, and reports what the
/// database holds of its users; it makes no backup (the database's are its
/// owner's) and sweeps only the schema it created. Two demos at once on one
/// database both succeed, and `check` passes afterwards.
#[test]
fn demos_run_on_a_url_two_at_once_and_check_passes() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let demo = |requests: &str| {
        cli(dir.path())
            .args(["--db", &db.url, "--key-file", "vault.key"])
            .args(["demo", "--users", "8", "--requests", requests, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let report = |child: std::process::Child| -> serde_json::Value {
        let out = child.wait_with_output().unwrap();
        serde_json::from_str(&ok(&out)).unwrap()
    };
    let first = report(demo("1500"));
    assert_eq!(first["counts"]["requests"], 1500);
    assert_eq!(first["audit_chain_ok"], true);
    assert!(
        first["counts"]["sessions_rotated"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert!(
        first["cache"]["l1"]["hits"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert!(
        first["erased_rows"]["audit_events"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert!(first["swept"].is_object(), "it made the schema: {first}");
    assert!(
        first["backup"].is_null() && first["file_bytes"].is_null(),
        "{first}"
    );
    assert!(!first["path"].as_str().unwrap().contains("password"));

    let (a, b) = (demo("800"), demo("800"));
    for r in [report(a), report(b)] {
        assert_eq!(r["audit_chain_ok"], true, "{r}");
        assert!(r["swept"].is_null(), "retention is the owner's: {r}");
    }
    let text = ok(&run(dir.path(), &db, "vault.key", &["check"]));
    assert!(text.contains("ok    audit_chain"), "{text}");
    assert!(text.contains("ok    sealed_cache_values"), "{text}");
}

/// `rekey` on a URL re-seals every value under the new key: the old key is
/// refused afterwards, the new one opens everything (`check` passes, each
/// facet reads what it stored). It refuses while another instance is
/// connected, and refuses a database with a value that does not open,
/// naming it and changing nothing.
#[tokio::test]
async fn rekey_reseals_every_value_under_the_new_key() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let open = |key: &str| {
        statevault::Vault::open(
            statevault::VaultOptions::new(&db.url)
                .key_source(KeySource::File(dir.path().join(key)))
                .create_if_missing(key == "vault.key"),
        )
    };
    let vault = open("vault.key").await.unwrap();
    let issued = vault
        .sessions()
        .create(
            statevault::NewSession::new("alice")
                .data(&serde_json::json!({"cart": 3}))
                .unwrap(),
        )
        .await
        .unwrap();
    vault
        .preferences()
        .patch("alice", &serde_json::json!({"audio_quality": "LOW"}))
        .await
        .unwrap();
    let client = statevault::ClientInfo {
        ip: Some("198.51.100.1"),
        user_agent: None,
    };
    for _ in 0..6 {
        vault
            .limits()
            .check("alice", "auth_attempts", 1, &client)
            .await
            .unwrap();
    }
    let cached = statevault::CacheKey::new("search", "q").unwrap();
    vault.cache().set(&cached, b"results").await.unwrap();
    vault
        .audit()
        .append(statevault::AuditEvent::new(statevault::EventKind::Auth, "login").user("alice"))
        .unwrap();
    new_key_file(dir.path(), "new.key");

    // Another instance is connected: refused, nothing changed.
    let out = run(
        dir.path(),
        &db,
        "vault.key",
        &["rekey", "--new-key-file", "new.key"],
    );
    let err = assert_one_error_line(&out);
    assert!(err.contains("is open in another process"), "{err}");
    vault.close().await.unwrap();

    // A value that does not open: refused, naming it, nothing changed.
    db.psql(
        "INSERT INTO statevault.cache_entries (key, namespace, codec, size, stored_size, \
         created_at, last_access_at, value) SELECT 'search:moved', namespace, codec, size, \
         stored_size, created_at, last_access_at, value FROM statevault.cache_entries \
         WHERE key = 'search:q'",
    );
    let out = run(
        dir.path(),
        &db,
        "vault.key",
        &["rekey", "--new-key-file", "new.key"],
    );
    let err = assert_one_error_line(&out);
    assert!(
        err.contains("\"search:moved\": value does not open"),
        "{err}"
    );
    let vault = open("vault.key").await.unwrap();
    assert_eq!(
        &*vault.cache().get(&cached).await.unwrap().unwrap(),
        b"results",
        "still under the old key"
    );
    vault.close().await.unwrap();
    db.psql("DELETE FROM statevault.cache_entries WHERE key = 'search:moved'");

    let text = ok(&run(
        dir.path(),
        &db,
        "vault.key",
        &["rekey", "--new-key-file", "new.key"],
    ));
    assert!(text.contains("re-sealed every value"), "{text}");
    let err = assert_one_error_line(&run(
        dir.path(),
        &db,
        "vault.key",
        &["prefs", "get", "alice"],
    ));
    assert!(err.contains("wrong key"), "the old key is refused: {err}");
    let checked = ok(&run(dir.path(), &db, "new.key", &["check"]));
    assert!(!checked.contains("FAIL"), "{checked}");

    let vault = open("new.key").await.unwrap();
    let session = vault
        .sessions()
        .validate(issued.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .expect("the session survives the rekey");
    assert_eq!(session.data::<serde_json::Value>().unwrap()["cart"], 3);
    assert_eq!(
        vault.preferences().get("alice").await.unwrap()["audio_quality"],
        "LOW"
    );
    assert_eq!(
        &*vault.cache().get(&cached).await.unwrap().unwrap(),
        b"results"
    );
    assert!(
        !vault
            .limits()
            .violations_of("alice")
            .await
            .unwrap()
            .is_empty()
    );
    let report = vault.audit().verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    let events = vault.export_user("alice").await.unwrap().audit_events;
    assert_eq!(events.len(), 1);
    let rotated = vault
        .audit()
        .query(&statevault::AuditQuery {
            action: Some("key.rotate".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rotated.len(), 1);
    vault.close().await.unwrap();
}

/// Two instances doing everything at once to the same users (cache sets,
/// flushes and tag invalidations, multi-window limit checks and resets,
/// in-memory limits and last-seen times of shared sessions written behind,
/// session creates and logouts, erasures), with the change feed trimmed
/// inside their transactions: no statement deadlocks (each once did, or
/// could: trims deleting the same rows, buckets and sessions locked in
/// different orders, write-behind flushes of many rows in a hash map's
/// order).
#[tokio::test]
async fn two_instances_working_on_the_same_users_never_deadlock() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let limit = statevault::Limit::new()
        .window(statevault::Window::per(
            std::time::Duration::from_secs(60),
            1e9,
        ))
        .window(statevault::Window::per(
            std::time::Duration::from_secs(3600),
            1e9,
        ))
        .shared(true);
    // Records older than a second are trimmed by the next publisher once a
    // second of the clock, which moves two seconds an iteration.
    let clock = statevault::FakeClock::default();
    let local = statevault::Limit::new()
        .window(statevault::Window::per(
            std::time::Duration::from_secs(60),
            1e9,
        ))
        .window(statevault::Window::per(
            std::time::Duration::from_secs(3600),
            1e9,
        ));
    let options = options_on(&db, dir.path())
        .clock(clock.clone())
        .feed_retention(std::time::Duration::from_secs(1))
        .limits(
            statevault::LimitsConfig::empty()
                .limit("two", limit)
                .limit("local", local),
        );
    let a = statevault::Vault::open(options.clone()).await.unwrap();
    let b = statevault::Vault::open(options).await.unwrap();
    // Sessions both instances validate (each touch is written behind).
    let mut tokens = Vec::new();
    for n in 0..16 {
        let issued = a
            .sessions()
            .create(statevault::NewSession::new(format!("reader{n}")))
            .await
            .unwrap();
        tokens.push(issued.token.expose().to_owned());
    }
    let work = |vault: statevault::Vault, me: u64| {
        let clock = clock.clone();
        let tokens = tokens.clone();
        async move {
            let none = statevault::ClientInfo {
                ip: None,
                user_agent: None,
            };
            for i in 0..150u64 {
                clock.advance(std::time::Duration::from_secs(2));
                for n in 0..16 {
                    let subject = format!("s{n}");
                    vault
                        .limits()
                        .check(&subject, "local", 1, &none)
                        .await
                        .unwrap();
                }
                for token in &tokens {
                    let validation = vault.sessions().validate(token, None).await.unwrap();
                    assert!(validation.valid().is_some());
                }
                let user = format!("u{}", (i + me) % 4);
                let tag = format!("t{}", i % 3);
                for k in 0..4 {
                    let key =
                        statevault::CacheKey::new("shared", &format!("k{}", (k * 7 + i) % 12))
                            .unwrap()
                            .for_user(&user)
                            .unwrap();
                    let tagged = statevault::SetOptions::new().tag(tag.clone());
                    vault.cache().set_with(&key, b"v", &tagged).await.unwrap();
                }
                vault.flush().await.unwrap();
                vault.cache().invalidate_tag(&tag).await.unwrap();
                vault.limits().check(&user, "two", 1, &none).await.unwrap();
                vault
                    .sessions()
                    .create(statevault::NewSession::new(user.clone()))
                    .await
                    .unwrap();
                match i % 10 {
                    3 => drop(vault.sessions().revoke_user(&user).await.unwrap()),
                    6 => drop(vault.limits().reset(&user).await.unwrap()),
                    9 => drop(vault.erase_user(&user).await.unwrap()),
                    _ => {}
                }
            }
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(work(a.clone(), 0)),
        tokio::spawn(work(b.clone(), 1))
    );
    ra.unwrap();
    rb.unwrap();
    assert!(a.audit().verify().await.unwrap().ok);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// An instance that only hears its own writes for longer than the change
/// feed keeps them, then hears another's, keeps its memory: its own records
/// count as read (their notifications name them), so their trimming is
/// not taken for records it lost (which would empty its L1 and sessions).
#[tokio::test]
async fn an_instance_writing_alone_past_the_feed_retention_keeps_its_memory() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let dir = tempdir();
    let clock = statevault::FakeClock::default();
    let options = options_on(&db, dir.path())
        .clock(clock.clone())
        .feed_retention(std::time::Duration::from_secs(1));
    let a = statevault::Vault::open(options.clone()).await.unwrap();
    let b = statevault::Vault::open(options).await.unwrap();
    let key = statevault::CacheKey::new("search", "kept").unwrap();
    a.cache()
        .set_with(&key, b"v", &statevault::SetOptions::new().never_expires())
        .await
        .unwrap();
    a.flush().await.unwrap();
    // A writes alone (each write published), past the retention, so its
    // later publishes trim its earlier records.
    for i in 0..5 {
        a.sessions()
            .create(statevault::NewSession::new(format!("alone-{i}")))
            .await
            .unwrap();
        clock.advance(std::time::Duration::from_secs(2));
    }
    // Another writer: A reads the feed again.
    let issued = b
        .sessions()
        .create(statevault::NewSession::new("other"))
        .await
        .unwrap();
    // A holds the session in memory: only the feed tells it of the revocation.
    let token = issued.token.expose();
    assert!(matches!(
        a.sessions().validate(token, None).await.unwrap(),
        statevault::Validation::Valid(_)
    ));
    b.sessions().revoke(&issued.id).await.unwrap();
    until_revoked(&a, token).await;
    let before = a.cache().stats().await.unwrap().l1.hits;
    assert!(a.cache().get(&key).await.unwrap().is_some());
    assert_eq!(
        a.cache().stats().await.unwrap().l1.hits,
        before + 1,
        "A's L1 still held its own entry"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

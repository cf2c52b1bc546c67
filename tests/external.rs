//! Real external clients against statevault files: stock `sqlite3` (must
//! fail on an encrypted file), a SQLCipher 4 client (Python `sqlcipher3`),
//! and stock `sqlx-cli` on plain files. Each skips loudly when its tool is
//! missing, and fails instead under STATEVAULT_REQUIRE_TOOLS=1 (CI).

mod common;

use std::path::Path;
use std::process::Command;

use common::{key_text, run, stderr, stdout, tempdir};
use statevault::{Vault, VaultOptions};

fn init(dir: &Path, args: &[&str]) {
    let mut all = args.to_vec();
    all.push("init");
    let out = run(dir, &all);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn stock_sqlite3_cannot_read_an_encrypted_vault() {
    let Some(sqlite3) = common::tool("sqlite3") else {
        return;
    };
    let dir = tempdir();
    init(dir.path(), &[]);
    let out = Command::new(sqlite3)
        .arg(dir.path().join("statevault.db"))
        .arg("SELECT count(*) FROM sessions;")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "sqlite3 read an encrypted file: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("not a database"), "{}", stderr(&out));
}

#[test]
fn stock_sqlite3_reads_a_plain_vault() {
    let Some(sqlite3) = common::tool("sqlite3") else {
        return;
    };
    let dir = tempdir();
    init(dir.path(), &["--no-encryption"]);
    let out = Command::new(sqlite3)
        .arg(dir.path().join("statevault.db"))
        .arg("PRAGMA journal_mode; SELECT count(*) FROM _sqlx_migrations;")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("wal\n"), "{text}");
}

#[test]
fn sqlcipher4_client_reads_every_table_with_the_key() {
    let Some(python) = common::sqlcipher_python() else {
        return;
    };
    let dir = tempdir();
    init(dir.path(), &[]);
    let db = dir.path().join("statevault.db");
    let script = r#"
import sys, sqlcipher3
db, key, tables = sys.argv[1], sys.argv[2], sys.argv[3:]
conn = sqlcipher3.connect(db)
conn.execute('PRAGMA key = "%s"' % key)
print("cipher", conn.execute("PRAGMA cipher_version").fetchone()[0])
print("journal", conn.execute("PRAGMA journal_mode").fetchone()[0])
for t in tables:
    print("table", t, conn.execute('SELECT count(*) FROM "%s"' % t).fetchone()[0])
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&db)
        .arg(key_text(&db))
        .args(common::SPEC_TABLES)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("cipher 4."), "{text}");
    assert!(text.contains("journal wal"), "{text}");
    for table in common::SPEC_TABLES {
        assert!(
            text.contains(&format!("table {table} ")),
            "{table} unread: {text}"
        );
    }
    assert!(text.contains("table vault_meta 4"), "{text}");
}

#[test]
fn sqlcipher4_client_with_a_wrong_key_fails() {
    let Some(python) = common::sqlcipher_python() else {
        return;
    };
    let dir = tempdir();
    init(dir.path(), &[]);
    let script = r#"
import sys, sqlcipher3
conn = sqlcipher3.connect(sys.argv[1])
conn.execute("PRAGMA key = \"x'%s'\"" % ("00" * 32))
conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(dir.path().join("statevault.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a database"), "{}", stderr(&out));
}

fn sqlx_cli(dir: &Path, db: &str, args: &[&str]) -> Option<std::process::Output> {
    let sqlx = common::tool("sqlx")?;
    Some(
        Command::new(sqlx)
            .args(args)
            .args(if args[0] == "migrate" {
                &[
                    "--source",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"),
                ][..]
            } else {
                &[]
            })
            .env("DATABASE_URL", format!("sqlite:{}", dir.join(db).display()))
            .output()
            .unwrap(),
    )
}

#[test]
fn sqlx_cli_sees_nothing_pending_on_a_statevault_plain_file() {
    let dir = tempdir();
    init(dir.path(), &["--no-encryption"]);
    let Some(out) = sqlx_cli(dir.path(), "statevault.db", &["migrate", "info"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let count = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(text.matches("installed").count(), count, "{text}");
    assert!(!text.contains("pending"), "{text}");
}

#[tokio::test]
async fn a_file_migrated_by_sqlx_cli_opens_with_nothing_rerun() {
    let dir = tempdir();
    let Some(out) = sqlx_cli(dir.path(), "cli.db", &["database", "create"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sqlx_cli(dir.path(), "cli.db", &["migrate", "run"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let path = dir.path().join("cli.db");
    let vault = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap();
    let rows = vault
        .query_read_only("SELECT version, installed_on FROM _sqlx_migrations ORDER BY version")
        .await
        .unwrap()
        .rows;
    assert!(
        vault
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    assert_eq!(vault.info().await.unwrap().journal_mode, "wal");
    vault.close().await.unwrap();

    // What sqlx-cli installed is what is there: same versions, same times.
    let vault = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap();
    let again = vault
        .query_read_only("SELECT version, installed_on FROM _sqlx_migrations ORDER BY version")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows, again);
    vault.close().await.unwrap();
    let out = sqlx_cli(dir.path(), "cli.db", &["migrate", "info"]).unwrap();
    assert!(!stdout(&out).contains("pending"), "{}", stdout(&out));
}

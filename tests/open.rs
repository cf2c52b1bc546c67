//! Opening a vault: the file it makes, the keys it takes, and the files it
//! refuses (each with its own typed error, the file left byte-for-byte as it was).

mod common;

use std::path::Path;

use common::{file_mode, raw_connection, tempdir};
use statevault::{Error, Key, Synchronous, Vault, VaultOptions, default_key_file};

async fn scalar(vault: &Vault, sql: &str) -> serde_json::Value {
    vault.query_read_only(sql).await.unwrap().rows[0][0].clone()
}

fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

fn shm_path(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-shm");
    p.into()
}

#[tokio::test]
async fn new_vault_is_encrypted_private_wal_and_migrated() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let db = vault.path().to_owned();

    let head = std::fs::read(&db).unwrap();
    assert!(
        !head.starts_with(b"SQLite format 3"),
        "the header must be encrypted"
    );
    for path in [
        db.clone(),
        default_key_file(&db),
        wal_path(&db),
        shm_path(&db),
    ] {
        assert!(path.exists(), "{} exists while open", path.display());
        assert_eq!(file_mode(&path), 0o600, "{}", path.display());
    }
    let key = std::fs::read_to_string(default_key_file(&db)).unwrap();
    assert!(
        key.starts_with("x'") && key.trim_end().len() == 67,
        "a raw key file"
    );

    assert_eq!(scalar(&vault, "PRAGMA journal_mode").await, "wal");
    assert_eq!(scalar(&vault, "PRAGMA auto_vacuum").await, 2, "INCREMENTAL");
    assert_eq!(scalar(&vault, "PRAGMA synchronous").await, 1, "NORMAL");
    assert_eq!(scalar(&vault, "PRAGMA foreign_keys").await, 1);
    assert_eq!(
        scalar(&vault, "PRAGMA cache_size").await,
        -256,
        "a sqlx reader's share of the 8 MiB budget: an eighth, between 4 readers"
    );
    let version = scalar(&vault, "PRAGMA cipher_version").await;
    assert!(version.as_str().unwrap().starts_with("4."), "{version}");

    let info = vault.info().await.unwrap();
    for table in common::SPEC_TABLES {
        assert!(info.tables.contains_key(table), "table {table} missing");
    }
    assert_eq!(info.schema_version, info.latest_schema_version);
    assert!(info.encrypted && info.created_at.is_some() && info.key_created_at.is_some());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn creation_time_comes_from_the_injected_clock() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let created = vault.info().await.unwrap().created_at.unwrap();
    assert_eq!(created, clock.now_text());
    vault.close().await.unwrap();
}

trait NowText {
    fn now_text(&self) -> String;
}

impl NowText for statevault::FakeClock {
    fn now_text(&self) -> String {
        use statevault::Clock;
        self.now().to_rfc3339()
    }
}

#[tokio::test]
async fn reopening_runs_nothing_again() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let path = vault.path().to_owned();
    let first = vault
        .query_read_only("SELECT version, installed_on FROM _sqlx_migrations ORDER BY version")
        .await
        .unwrap()
        .rows;
    let created = vault.info().await.unwrap().created_at;
    vault.close().await.unwrap();

    clock.advance(std::time::Duration::from_secs(3600));
    let vault = Vault::open(
        VaultOptions::new(&path)
            .clock(clock)
            .create_if_missing(false),
    )
    .await
    .unwrap();
    let again = vault
        .query_read_only("SELECT version, installed_on FROM _sqlx_migrations ORDER BY version")
        .await
        .unwrap()
        .rows;
    assert_eq!(first, again);
    assert_eq!(vault.info().await.unwrap().created_at, created);
    assert!(
        vault
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn synchronous_full_is_applied_to_every_connection() {
    let dir = tempdir();
    let (options, _) = common::options(dir.path(), "full.db");
    let vault = Vault::open(options.synchronous(Synchronous::Full))
        .await
        .unwrap();
    assert_eq!(scalar(&vault, "PRAGMA synchronous").await, 2, "FULL");
    vault.close().await.unwrap();
}

/// Creates a vault, closes it, and returns its path and bytes.
async fn closed_vault(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let (vault, _) = common::vault(dir).await;
    let path = vault.path().to_owned();
    vault.close().await.unwrap();
    assert!(
        !wal_path(&path).exists(),
        "close checkpoints and removes the WAL"
    );
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[tokio::test]
async fn wrong_key_is_refused_and_the_file_untouched() {
    let dir = tempdir();
    let (path, before) = closed_vault(dir.path()).await;
    let err = Vault::open(VaultOptions::new(&path).key(Key::raw([7; 32])))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
    assert!(err.to_string().contains("key"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let err = Vault::open(VaultOptions::new(&path).key(Key::passphrase("guess").unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn encrypted_file_without_a_key_is_refused() {
    let dir = tempdir();
    let (path, before) = closed_vault(dir.path()).await;
    let err = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyRequired { .. }), "{err:?}");
    std::fs::remove_file(default_key_file(&path)).unwrap();
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    assert!(matches!(err, Error::KeyMissing { .. }), "{err:?}");
    assert!(
        !default_key_file(&path).exists(),
        "no new key is made for an existing file"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn text_file_is_not_a_database() {
    let dir = tempdir();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "[server]\nport = 8080\n".repeat(300)).unwrap();
    let before = std::fs::read(&path).unwrap();
    for options in [
        VaultOptions::new(&path).key(Key::raw([1; 32])),
        VaultOptions::new(&path),
    ] {
        let err = Vault::open(options).await.unwrap_err();
        assert!(matches!(err, Error::NotADatabase { .. }), "{err:?}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!default_key_file(&path).exists());
}

#[tokio::test]
async fn truncated_file_is_refused() {
    let dir = tempdir();
    let (path, before) = closed_vault(dir.path()).await;
    let cut = &before[..before.len() / 2 + 1000];
    std::fs::write(&path, cut).unwrap();
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), cut);
}

/// Cut at a page boundary, an encrypted file's length proves nothing: it
/// was reported as "corrupt: database disk image is malformed". The
/// decrypted header still counts the pages it had.
#[tokio::test]
async fn an_encrypted_file_cut_at_a_page_boundary_is_truncated_not_corrupt() {
    let dir = tempdir();
    let (path, before) = closed_vault(dir.path()).await;
    let cut = &before[..(before.len() / 4096 / 2) * 4096];
    std::fs::write(&path, cut).unwrap();
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    match &err {
        Error::Truncated { len, page_size, .. } => {
            assert_eq!((*len, *page_size), (cut.len() as u64, 4096));
            let message = err.to_string();
            assert!(
                message.contains(&format!("the header counts {} pages", before.len() / 4096)),
                "{message}"
            );
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), cut);
}

/// The same with a passphrase: the header is read with the key SQLCipher
/// derives from it.
#[tokio::test]
async fn a_passphrase_file_cut_at_a_page_boundary_is_truncated() {
    let dir = tempdir();
    let path = dir.path().join("pass.db");
    let options = || VaultOptions::new(&path).key(Key::passphrase("correct horse").unwrap());
    Vault::open(options()).await.unwrap().close().await.unwrap();
    let before = std::fs::read(&path).unwrap();
    std::fs::write(&path, &before[..4096 * 3]).unwrap();
    let err = Vault::open(options()).await.unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
}

#[tokio::test]
async fn truncated_plain_file_is_refused_by_its_header() {
    let dir = tempdir();
    let path = dir.path().join("plain.db");
    let vault = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap();
    vault.close().await.unwrap();
    let whole = std::fs::read(&path).unwrap();
    assert!(whole.starts_with(b"SQLite format 3\0"));
    let cut = &whole[..whole.len() - 4096];
    std::fs::write(&path, cut).unwrap();
    let err = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), cut);
}

#[tokio::test]
async fn schema_from_the_future_is_refused_untouched() {
    let dir = tempdir();
    let (path, _) = closed_vault(dir.path()).await;
    {
        let conn = raw_connection(&path);
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (29991231000000, 'from the future', 1, x'00', 0)",
            [],
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    match err {
        Error::SchemaTooNew { found, supported } => {
            assert_eq!(found, 29991231000000);
            assert!(supported < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn changed_migration_is_refused() {
    let dir = tempdir();
    let (path, _) = closed_vault(dir.path()).await;
    raw_connection(&path)
        .execute("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = (SELECT min(version) FROM _sqlx_migrations)", [])
        .unwrap();
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    assert!(matches!(err, Error::MigrationMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn plain_file_needs_no_encryption_flag() {
    let dir = tempdir();
    let path = dir.path().join("plain.db");
    let vault = Vault::open(VaultOptions::new(&path).no_encryption())
        .await
        .unwrap();
    assert!(!vault.is_encrypted());
    vault.close().await.unwrap();
    assert!(!default_key_file(&path).exists());
    assert!(
        std::fs::read(&path)
            .unwrap()
            .starts_with(b"SQLite format 3\0")
    );
    let err = Vault::open(VaultOptions::new(&path)).await.unwrap_err();
    assert!(matches!(err, Error::NotEncrypted { .. }), "{err:?}");
}

#[tokio::test]
async fn passphrase_and_explicit_keys_work() {
    let dir = tempdir();
    let path = dir.path().join("pass.db");
    let key = || Key::passphrase("correct horse battery staple").unwrap();
    let vault = Vault::open(VaultOptions::new(&path).key(key()))
        .await
        .unwrap();
    vault.close().await.unwrap();
    assert!(
        !default_key_file(&path).exists(),
        "an explicit key makes no key file"
    );
    let vault = Vault::open(VaultOptions::new(&path).key(key()).create_if_missing(false))
        .await
        .unwrap();
    assert!(vault.is_encrypted());
    vault.close().await.unwrap();

    let key_file = dir.path().join("elsewhere.key");
    Key::generate().unwrap().write_new_file(&key_file).unwrap();
    assert_eq!(file_mode(&key_file), 0o600);
    let other = dir.path().join("other.db");
    let vault = Vault::open(VaultOptions::new(&other).key_file(&key_file))
        .await
        .unwrap();
    vault.close().await.unwrap();
    assert!(!default_key_file(&other).exists());
}

#[tokio::test]
async fn key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let key_file = dir.path().join("loose.key");
    Key::generate().unwrap().write_new_file(&key_file).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Vault::open(VaultOptions::new(dir.path().join("x.db")).key_file(&key_file))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn missing_file_is_not_created_when_told_not_to() {
    let dir = tempdir();
    let path = dir.path().join("absent.db");
    let err = Vault::open(VaultOptions::new(&path).create_if_missing(false))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert!(!path.exists() && !default_key_file(&path).exists());
}

#[tokio::test]
#[allow(deprecated)] // page_cache_bytes: the old name is still checked
async fn absurd_options_are_typed_errors() {
    let dir = tempdir();
    let path = dir.path().join("x.db");
    for options in [
        VaultOptions::new(&path).readers(0),
        VaultOptions::new(&path).readers(1000),
        VaultOptions::new(&path).page_cache_bytes(10),
        VaultOptions::new(&path).page_cache_budget(0),
        VaultOptions::new(&path).page_cache_budget((1 << 20) - 1),
        VaultOptions::new(&path).busy_timeout(std::time::Duration::from_secs(86_400)),
        VaultOptions::new(""),
    ] {
        let err = Vault::open(options).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    assert!(!path.exists());
}

/// The page cache budget is split across the connections: the sqlx
/// readers' share is what `PRAGMA cache_size` shows to a read-only query
/// (the split of every kind is tested in src/store/page_cache.rs).
#[tokio::test]
async fn the_page_cache_budget_reaches_the_connections() {
    let dir = tempdir();
    let path = dir.path().join("x.db");
    let options = VaultOptions::new(&path)
        .readers(2)
        .page_cache_budget(64 << 20);
    let vault = Vault::open(options).await.unwrap();
    let rows = vault.query_read_only("PRAGMA cache_size").await.unwrap();
    // An eighth of the budget between two readers: 4 MiB, in KiB.
    assert_eq!(rows.rows[0][0].as_i64(), Some(-4096));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn closed_vault_says_so() {
    let dir = tempdir();
    let (vault, _) = common::vault(dir.path()).await;
    let clone = vault.clone();
    vault.close().await.unwrap();
    vault.close().await.unwrap();
    assert!(matches!(clone.info().await, Err(Error::Closed)));
    assert!(matches!(clone.migration_status().await, Err(Error::Closed)));
    assert!(matches!(
        clone.query_read_only("SELECT 1").await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn read_only_sql_cannot_write() {
    let dir = tempdir();
    let (vault, _) = common::vault(dir.path()).await;
    // Refused by the text, and (a WITH that writes) by SQLite: one error.
    for sql in [
        "DELETE FROM vault_meta",
        "WITH x AS (SELECT 1) DELETE FROM vault_meta",
    ] {
        let err = vault.query_read_only(sql).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { what: "sql", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    let n = scalar(&vault, "SELECT count(*) FROM vault_meta").await;
    assert_eq!(n, 4);
    vault.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_can_create_the_same_vault_at_once() {
    for round in 0..5 {
        let dir = tempdir();
        let path = dir.path().join(format!("race-{round}.db"));
        let (a, b) = tokio::join!(
            Vault::open(VaultOptions::new(&path)),
            Vault::open(VaultOptions::new(&path))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.migration_status()
                .await
                .unwrap()
                .iter()
                .all(|m| m.applied)
        );
        assert_eq!(
            b.query_read_only("SELECT count(*) FROM _sqlx_migrations")
                .await
                .unwrap()
                .rows[0][0],
            a.migration_status().await.unwrap().len()
        );
        a.close().await.unwrap();
        b.close().await.unwrap();
    }
}

#[tokio::test]
async fn check_passes_on_a_healthy_file() {
    let dir = tempdir();
    let (vault, _) = common::vault(dir.path()).await;
    let report = vault.check().await.unwrap();
    assert!(report.ok(), "{report:?}");
    let names: Vec<_> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, ["cipher_integrity", "integrity", "foreign_keys"]);
    vault.close().await.unwrap();
}

/// A write that waits past the busy timeout for another connection's write
/// lock is `Error::Busy`, writes nothing, and works once the lock is gone.
#[tokio::test]
async fn a_write_lock_held_past_the_busy_timeout_is_busy() {
    use statevault::{AuditEvent, EventKind};
    let dir = tempdir();
    let path = dir.path().join("busy.db");
    let options = VaultOptions::new(&path).busy_timeout(std::time::Duration::from_millis(50));
    let vault = Vault::open(options).await.unwrap();
    let other = raw_connection(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = vault
        .audit()
        .append_durable(AuditEvent::new(EventKind::Admin, "busy.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("busy"), "{err}");
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        scalar(
            &vault,
            "SELECT count(*) FROM audit_events WHERE action = 'busy.test'"
        )
        .await,
        0
    );
    vault
        .audit()
        .append_durable(AuditEvent::new(EventKind::Admin, "busy.test"))
        .await
        .unwrap();
    drop(other);
    vault.close().await.unwrap();
}

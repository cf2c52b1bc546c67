//! Backup, verify, restore and rekey.

mod common;

use std::time::Duration;

use common::{file_mode, tempdir};
use statevault::{
    AuditEvent, Error, EventKind, Key, NewSession, Vault, VaultOptions, default_key_file,
};

async fn with_data(dir: &std::path::Path) -> Vault {
    let (vault, _clock) = common::vault(dir).await;
    for i in 0..5 {
        vault
            .sessions()
            .create(NewSession::new(format!("u{i}")))
            .await
            .unwrap();
        vault
            .audit()
            .append(AuditEvent::new(EventKind::Auth, "login").user(format!("u{i}")))
            .unwrap();
    }
    vault
}

async fn count(vault: &Vault, table: &str) -> i64 {
    vault
        .query_read_only(&format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap()
        .rows[0][0]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn a_backup_is_encrypted_private_and_verifies() {
    let dir = tempdir();
    let vault = with_data(dir.path()).await;
    let out = dir.path().join("copy.db");
    let written = vault.backup(Some(&out)).await.unwrap();
    assert_eq!(written.path, out);
    assert_eq!(file_mode(&out), 0o600);
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        !bytes.starts_with(b"SQLite format 3"),
        "the backup is encrypted"
    );
    assert_eq!(bytes.len() as u64, written.bytes);

    let verified = vault.verify_backup(&out).await.unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.tables["sessions"], 5);
    assert_eq!(verified.tables["audit_events"], 5);
    assert_eq!(verified.chain.as_ref().unwrap().events, 5);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        bytes,
        "verifying changes nothing"
    );

    assert!(
        matches!(
            vault.backup(Some(&out)).await,
            Err(Error::InvalidInput { .. })
        ),
        "never overwrites"
    );
    vault.close().await.unwrap();

    // Another key, or garbage, is refused with the usual errors.
    let other = Vault::open(VaultOptions::new(dir.path().join("other.db")))
        .await
        .unwrap();
    assert!(matches!(
        other.verify_backup(&out).await,
        Err(Error::WrongKey { .. })
    ));
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a backup at all\n").unwrap();
    assert!(matches!(
        other.verify_backup(&junk).await,
        Err(Error::NotADatabase { .. })
    ));
    other.close().await.unwrap();
}

#[tokio::test]
async fn default_backups_roll_over_after_a_week() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let first = vault.backup(None).await.unwrap();
    assert!(
        first.path.starts_with(dir.path().join("backups")),
        "{:?}",
        first.path
    );
    clock.advance(Duration::from_secs(3 * 24 * 3600));
    let second = vault.backup(None).await.unwrap();
    assert!(second.removed.is_empty());
    clock.advance(Duration::from_secs(5 * 24 * 3600));
    let third = vault.backup(None).await.unwrap();
    assert_eq!(third.removed, std::slice::from_ref(&first.path));
    assert!(!first.path.exists() && second.path.exists() && third.path.exists());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn restore_brings_the_backup_back_and_refuses_while_open() {
    let dir = tempdir();
    let vault = with_data(dir.path()).await;
    let path = vault.path().to_owned();
    let backup = dir.path().join("b.db");
    vault.backup(Some(&backup)).await.unwrap();
    vault
        .sessions()
        .create(NewSession::new("after-backup"))
        .await
        .unwrap();

    let options = VaultOptions::new(&path);
    let before = std::fs::read(&path).unwrap();
    let err = Vault::restore(&options, &backup, |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyOpen {
                operation: "restore",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is open in another process"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "refused: nothing changed"
    );
    vault.close().await.unwrap();

    let verified = Vault::restore(&options, &backup, move |done, total| {
        assert!(done <= total, "{done} of {total}");
    })
    .await
    .unwrap();
    assert!(verified.ok);
    let vault = Vault::open(options).await.unwrap();
    assert_eq!(
        count(&vault, "sessions").await,
        5,
        "the session made after the backup is gone"
    );
    assert!(vault.audit().verify().await.unwrap().ok);
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn rekey_makes_the_old_key_useless() {
    let dir = tempdir();
    let vault = with_data(dir.path()).await;
    let path = vault.path().to_owned();
    let old = Key::read_file(&default_key_file(&path)).unwrap();
    let new = Key::generate().unwrap();
    let key_before = vault.info().await.unwrap().key_created_at;
    vault.rekey(&new).await.unwrap();

    let err = Vault::open(VaultOptions::new(&path).key(old))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
    let vault = Vault::open(VaultOptions::new(&path).key(new))
        .await
        .unwrap();
    assert_eq!(count(&vault, "sessions").await, 5);
    let info = vault.info().await.unwrap();
    assert!(info.key_created_at.is_some());
    assert_eq!(
        info.key_created_at, key_before,
        "the fake clock did not move"
    );
    let chain = vault.audit().verify().await.unwrap();
    assert!(chain.ok);
    let last = vault.audit().tail(1).await.unwrap().remove(0);
    assert_eq!(last.action, "key.rotate");
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn rekey_refuses_while_another_handle_has_the_file() {
    let dir = tempdir();
    let vault = with_data(dir.path()).await;
    let other = Vault::open(VaultOptions::new(vault.path())).await.unwrap();
    other.info().await.unwrap();
    let err = vault.rekey(&Key::generate().unwrap()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyOpen {
                operation: "rekey",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is open in another process"),
        "{err}"
    );
    assert_eq!(
        count(&other, "sessions").await,
        5,
        "the old key still works"
    );
    let rotations = other
        .audit()
        .tail(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "key.rotate")
        .count();
    assert_eq!(rotations, 0, "a refused rekey records no rotation");
    other.close().await.unwrap();
}

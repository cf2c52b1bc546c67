//! Recovery on open (opt-in): a damaged file is moved aside and the newest
//! backup that verifies takes its place; without the opt-in, or with a
//! wrong key, or with no good backup, nothing changes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_one_error_line, run, stderr, tempdir};
use statevault::{AuditEvent, BackupConfig, Error, EventKind, FakeClock, Key, Vault, VaultOptions};

fn recovering(path: &Path, clock: &FakeClock) -> VaultOptions {
    let mut backups = BackupConfig::default();
    backups.recover_on_open = true;
    VaultOptions::new(path)
        .clock(clock.clone())
        .backups(backups)
}

/// A vault with `events` audit events and a backup taken after them; one
/// more event is written after the backup. Returns the db path and backup.
async fn vault_with_backup(dir: &Path, clock: &FakeClock) -> (PathBuf, PathBuf) {
    let path = dir.join("vault.db");
    let vault = Vault::open(VaultOptions::new(&path).clock(clock.clone()))
        .await
        .unwrap();
    for i in 0..3 {
        vault
            .audit()
            .append(AuditEvent::new(
                EventKind::DataAccess,
                format!("before-{i}"),
            ))
            .unwrap();
    }
    let backup = vault.backup(None).await.unwrap().path;
    vault
        .audit()
        .append(AuditEvent::new(EventKind::DataAccess, "after"))
        .unwrap();
    vault.close().await.unwrap();
    (path, backup)
}

fn truncate(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let cut = bytes[..bytes.len() / 2 + 100].to_vec();
    fs::write(path, &cut).unwrap();
    cut
}

async fn actions(vault: &Vault) -> Vec<String> {
    vault
        .query_read_only("SELECT action FROM audit_events ORDER BY seq")
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_damaged_file_falls_back_to_the_newest_good_backup() {
    let dir = tempdir();
    let clock = FakeClock::default();
    let (path, first) = vault_with_backup(dir.path(), &clock).await;
    // A newer backup that is garbage is skipped for the older good one.
    clock.advance(std::time::Duration::from_secs(60));
    let bad = first.with_file_name("vault.20991231T000000000Z.backup.db");
    fs::write(&bad, b"not a backup at all").unwrap();
    let damaged = truncate(&path);

    let vault = Vault::open(recovering(&path, &clock)).await.unwrap();
    let recovery = vault.recovery().expect("recovered").clone();
    assert_eq!(recovery.backup, first);
    assert!(recovery.reason.contains("truncated"), "{}", recovery.reason);
    assert_eq!(
        fs::read(&recovery.damaged_file).unwrap(),
        damaged,
        "kept aside"
    );
    assert_eq!(common::file_mode(&path), 0o600);

    let seen = actions(&vault).await;
    assert_eq!(&seen[..3], ["before-0", "before-1", "before-2"]);
    assert!(
        !seen.contains(&"after".to_owned()),
        "written after the backup"
    );
    assert_eq!(
        seen.last().unwrap(),
        "vault.recover",
        "recorded in the audit log"
    );
    assert!(vault.check().await.unwrap().ok());
    assert!(vault.audit().verify().await.unwrap().ok);
    vault.close().await.unwrap();

    let again = Vault::open(recovering(&path, &clock)).await.unwrap();
    assert!(again.recovery().is_none(), "a sound file opens as it is");
    again.close().await.unwrap();
}

#[tokio::test]
async fn without_the_opt_in_a_damaged_file_is_an_error_and_untouched() {
    let dir = tempdir();
    let clock = FakeClock::default();
    let (path, _) = vault_with_backup(dir.path(), &clock).await;
    let damaged = truncate(&path);
    let err = Vault::open(VaultOptions::new(&path).clock(clock))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), damaged);
}

#[tokio::test]
async fn no_good_backup_means_an_error_and_nothing_moved() {
    let dir = tempdir();
    let clock = FakeClock::default();
    let (path, backup) = vault_with_backup(dir.path(), &clock).await;
    fs::write(&backup, b"garbage").unwrap();
    fs::write(&path, "this is a text file now\n".repeat(300)).unwrap();
    let before = fs::read(&path).unwrap();
    let err = Vault::open(recovering(&path, &clock)).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("no backup"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("damaged")), "{names:?}");
}

#[tokio::test]
async fn a_wrong_key_is_not_damage() {
    let dir = tempdir();
    let clock = FakeClock::default();
    let (path, _) = vault_with_backup(dir.path(), &clock).await;
    let before = fs::read(&path).unwrap();
    let wrong = Key::passphrase("not the key").unwrap();
    let err = Vault::open(recovering(&path, &clock).key(wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn the_cli_recovers_when_the_config_says_so_and_says_it_did() {
    let dir = tempdir();
    let clock = FakeClock::default();
    let (path, _) = vault_with_backup(dir.path(), &clock).await;
    truncate(&path);
    let out = run(dir.path(), &["--db", "vault.db", "info"]);
    assert!(assert_one_error_line(&out).contains("truncated"));

    fs::write(
        dir.path().join("statevault.toml"),
        "[backup]\nrecover_on_open = true\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--db", "vault.db", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("warning: ") && err.contains("backup"),
        "{err}"
    );
    assert!(
        run(dir.path(), &["--db", "vault.db", "check"])
            .status
            .success()
    );
}

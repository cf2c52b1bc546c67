//! Hostile files that open but are not what they seem (SPEC §8), beside
//! the ones refused at open in tests/open.rs: random bytes over pages in the
//! middle of the file, and a backup made with another vault's key. Each is a
//! typed error, one `error:` line from the CLI, and the live file is left
//! byte-for-byte as it was.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{assert_one_error_line, raw_connection, run, tempdir};
use serde_json::json;
use statevault::{Error, NewSession, Vault, VaultOptions};

const PAGE: u64 = 4096;

/// A closed vault whose sessions fill a few dozen pages.
async fn vault_with_sessions(dir: &Path) -> std::path::PathBuf {
    let (vault, _clock) = common::vault(dir).await;
    for i in 0..300 {
        let session = NewSession::new(format!("u{i}"))
            .data(&json!({"pad": "x".repeat(500)}))
            .unwrap();
        vault.sessions().create(session).await.unwrap();
    }
    let path = vault.path().to_owned();
    vault.close().await.unwrap();
    path
}

/// Writes random bytes over the middle of three of the sessions table's
/// leaf pages (found with `dbstat`); returns their numbers.
fn damage_sessions_pages(db: &Path) -> Vec<u64> {
    let pages: Vec<u64> = {
        let conn = raw_connection(db);
        let mut stmt = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = 'sessions' AND pagetype = 'leaf' ORDER BY pageno")
            .unwrap();
        stmt.query_map([], |row| row.get::<_, u32>(0).map(u64::from))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert!(pages.len() >= 10, "{pages:?}");
    let mut chosen: Vec<u64> = (0..3)
        .map(|_| pages[getrandom::u32().unwrap() as usize % pages.len()])
        .collect();
    chosen.sort_unstable();
    chosen.dedup();
    let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    for page in &chosen {
        let mut noise = [0u8; 1024];
        getrandom::fill(&mut noise).unwrap();
        // Pages are numbered from 1.
        file.seek(SeekFrom::Start((page - 1) * PAGE + 1024))
            .unwrap();
        file.write_all(&noise).unwrap();
    }
    chosen
}

#[tokio::test]
async fn damaged_pages_in_the_middle_are_a_typed_error_and_stay_as_they_are() {
    let dir = tempdir();
    let db = vault_with_sessions(dir.path()).await;
    let damaged = damage_sessions_pages(&db);
    let before = std::fs::read(&db).unwrap();

    // Page 1 and the schema are intact: the vault opens, and reading the
    // damaged rows says what is wrong.
    let vault = Vault::open(VaultOptions::new(&db)).await.unwrap();
    let err = vault
        .query_read_only("SELECT count(*), sum(length(data)) FROM sessions")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { path: None, .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("the vault file is corrupt: "),
        "{err}"
    );
    let report = vault.check().await.unwrap();
    assert!(!report.ok());
    let cipher = &report.checks[0];
    assert_eq!(cipher.name, "cipher_integrity");
    let named: Vec<_> = damaged
        .iter()
        .map(|p| format!("HMAC verification failed for page {p}"))
        .collect();
    assert_eq!(cipher.problems, named, "names exactly the damaged pages");
    vault.close().await.unwrap();
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the vault changed nothing"
    );

    // The CLI: one line, no panic, nothing changed.
    let out = run(
        dir.path(),
        &[
            "--db",
            "vault.db",
            "sql",
            "SELECT count(*), sum(length(data)) FROM sessions",
        ],
    );
    let err = assert_one_error_line(&out);
    assert!(
        err.starts_with("error: the vault file is corrupt: database disk image is malformed"),
        "{err}"
    );
    let out = run(dir.path(), &["--db", "vault.db", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stdout(&out).contains(&named[0]),
        "{}",
        common::stdout(&out)
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the CLI changed nothing"
    );
}

#[tokio::test]
async fn a_backup_made_with_another_key_is_refused_and_the_live_file_untouched() {
    let dir = tempdir();
    let ours = vault_with_sessions(dir.path()).await;
    let theirs_dir = tempdir();
    let (theirs, _clock) = common::vault(theirs_dir.path()).await;
    let backup = dir.path().join("theirs.backup.db");
    theirs.backup(Some(&backup)).await.unwrap();
    theirs.close().await.unwrap();
    let before = std::fs::read(&ours).unwrap();

    let err = Vault::restore(&VaultOptions::new(&ours), &backup, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
    assert_eq!(std::fs::read(&ours).unwrap(), before);

    for args in [
        &["--db", "vault.db", "backup", "verify", "theirs.backup.db"][..],
        &["--db", "vault.db", "restore", "theirs.backup.db"],
    ] {
        let err = assert_one_error_line(&run(dir.path(), args));
        assert!(err.starts_with("error: wrong key: "), "{args:?}: {err}");
        assert!(err.contains("theirs.backup.db"), "names the backup: {err}");
        assert_eq!(std::fs::read(&ours).unwrap(), before, "{args:?}");
    }

    // The vault itself, by its name or through a link, is no backup of it
    // (restoring it onto itself never finished).
    std::os::unix::fs::symlink(&ours, dir.path().join("link.db")).unwrap();
    for backup in ["vault.db", "link.db"] {
        let out = run(dir.path(), &["--db", "vault.db", "restore", backup]);
        let err = assert_one_error_line(&out);
        assert!(err.contains("is the vault itself"), "{backup}: {err}");
        assert_eq!(std::fs::read(&ours).unwrap(), before, "{backup}");
    }

    let vault = Vault::open(VaultOptions::new(&ours)).await.unwrap();
    let rows = vault
        .query_read_only("SELECT count(*) FROM sessions")
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], 300, "still our sessions");
    vault.close().await.unwrap();
}

//! Secrets (SPEC §8): keys and session tokens never reach logs or `Debug`
//! output, at any tracing level, from any thread (sqlx's worker threads
//! included); key material and tokens wipe themselves on drop; every file
//! statevault writes is readable by its owner only.
//!
//! One test installs a global TRACE subscriber (spans printed with their
//! fields when they close) and runs every operation that has a span; the others in this file may
//! log into it too, which only widens what it searches.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{file_mode, run, tempdir};
use statevault::{Key, NewSession, Secret, Validation, Vault, VaultOptions};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hex of a key file's raw key.
fn key_hex(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim()
        .trim_start_matches("x'")
        .trim_end_matches('\'')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_never_reach_logs_or_debug() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .init();
    let dir = tempdir();
    let mut secrets: Vec<String> = Vec::new();
    let mut shown = String::new();

    // A passphrase key.
    let passphrase = "p4ss-phrase-that-must-not-leak";
    secrets.push(passphrase.into());
    let options =
        VaultOptions::new(dir.path().join("pass.db")).key(Key::passphrase(passphrase).unwrap());
    shown += &format!("{options:?}");
    let vault = Vault::open(options).await.unwrap();
    vault.info().await.unwrap();
    vault
        .query_read_only("SELECT * FROM vault_meta")
        .await
        .unwrap();
    shown += &format!("{vault:?}");
    vault.close().await.unwrap();

    // A raw key from a key file, sessions and their tokens, a backup, a rekey.
    let (vault, _) = common::vault(dir.path()).await;
    let path = vault.path().to_owned();
    secrets.push(key_hex(&statevault::default_key_file(&path)));
    let fingerprint = "device-fingerprint-that-must-not-leak";
    let new = NewSession::new("alice").device_fingerprint(fingerprint);
    shown += &format!("{new:?}");
    let issued = vault.sessions().create(new).await.unwrap();
    let validation = vault
        .sessions()
        .validate(issued.token.expose(), Some(fingerprint))
        .await
        .unwrap();
    assert!(matches!(validation, Validation::Valid(_)));
    let rotated = vault
        .sessions()
        .rotate(issued.token.expose(), Some(fingerprint))
        .await
        .unwrap();
    shown += &format!("{issued:?} {validation:?} {rotated:?}");
    for secret in [
        &issued.token,
        &issued.csrf_token,
        &rotated.token,
        &rotated.csrf_token,
    ] {
        secrets.push(secret.expose().to_owned());
    }
    secrets.push(fingerprint.into());
    vault.flush().await.unwrap();
    let backup = vault
        .backup(Some(&dir.path().join("copy.db")))
        .await
        .unwrap();
    let verified = vault.verify_backup(&backup.path).await.unwrap();
    shown += &format!("{backup:?} {verified:?}");
    let new_key_file = dir.path().join("new.key");
    Key::generate()
        .unwrap()
        .write_new_file(&new_key_file)
        .unwrap();
    secrets.push(key_hex(&new_key_file));
    let new_key = Key::read_file(&new_key_file).unwrap();
    shown += &format!("{new_key:?}");
    vault.rekey(&new_key).await.unwrap();
    let vault = Vault::open(VaultOptions::new(&path).key_file(&new_key_file))
        .await
        .unwrap();
    let session = vault
        .sessions()
        .validate(rotated.token.expose(), Some(fingerprint))
        .await
        .unwrap();
    shown += &format!("{session:?}");
    vault.close().await.unwrap();

    // Every operation's span, with the fields it opens and closes with.
    secrets.extend(common::every_operation(dir.path()).await);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("opening vault"),
        "the subscriber captured statevault's events: {logs}"
    );
    assert!(
        logs.contains("cache.get{") && logs.contains("time.busy"),
        "the subscriber captured statevault's spans: {logs}"
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        assert!(
            !shown.contains(secret.as_str()),
            "a secret reached Debug output: {shown}"
        );
    }
    assert!(shown.contains("<redacted>"), "{shown}");
}

/// Compiles only if the type wipes itself when dropped.
fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}

#[test]
fn key_material_and_tokens_are_zeroized_on_drop() {
    wiped_on_drop::<Key>();
    wiped_on_drop::<Secret>();
}

#[test]
fn every_file_written_is_private() {
    let dir = tempdir();
    let cwd = dir.path();
    let ok = |args: &[&str]| {
        let out = run(cwd, args);
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    };
    ok(&["init"]);
    ok(&["prefs", "set", "ann", r#"{"theme": "dark"}"#]);
    ok(&["backup"]);
    ok(&["backup", "--out", "copy.db"]);
    ok(&["user", "export", "ann", "--out", "ann.json"]);
    Key::generate()
        .unwrap()
        .write_new_file(&cwd.join("new.key"))
        .unwrap();
    ok(&["rekey", "--new-key-file", "new.key"]);
    ok(&["backup", "--out", "after-rekey.db"]);
    ok(&["restore", "after-rekey.db"]);

    // While a vault has it open: the -wal and -shm files too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = cwd.join("statevault.db");
    let vault = runtime
        .block_on(Vault::open(VaultOptions::new(&db)))
        .unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![cwd.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let mode = file_mode(&path);
                files.push((path, mode));
            }
        }
    }
    runtime.block_on(vault.close()).unwrap();

    let names: Vec<_> = files
        .iter()
        .map(|(p, _)| p.strip_prefix(cwd).unwrap().display().to_string())
        .collect();
    for name in [
        "statevault.db",
        "statevault.db-wal",
        "statevault.db-shm",
        "statevault.db.key",
        "copy.db",
        "after-rekey.db",
        "ann.json",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("backups/")), "{names:?}");
    for (file, mode) in &files {
        assert_eq!(*mode, 0o600, "{}", file.display());
    }
}

/// `ExportedSession` and `UserExport` derived `Debug` and printed the
/// session data, the preferences and the audit details that `Session`'s
/// own `Debug` keeps out.
#[tokio::test]
async fn a_users_export_debug_shows_no_personal_data() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    vault
        .sessions()
        .create(
            NewSession::new("ann")
                .data(&serde_json::json!({"upstream": "upstream-token-123"}))
                .unwrap(),
        )
        .await
        .unwrap();
    vault
        .preferences()
        .patch("ann", &serde_json::json!({"home": "12 Private Road"}))
        .await
        .unwrap();
    vault
        .audit()
        .append(
            statevault::AuditEvent::new(statevault::EventKind::Auth, "login")
                .user("ann")
                .details(serde_json::json!({"ip_note": "secret-detail"})),
        )
        .unwrap();
    let export = vault.export_user("ann").await.unwrap();
    let shown = format!("{export:?} {:?}", export.sessions[0]);
    for private in ["upstream-token-123", "12 Private Road", "secret-detail"] {
        assert!(!shown.contains(private), "{private} in {shown}");
    }
    assert!(shown.contains("ann"), "{shown}");
    vault.close().await.unwrap();
}

/// `Secret` compares in constant time (SHA-256 of both, then every byte);
/// equal secrets are equal, different ones are not.
#[tokio::test]
async fn secrets_compare_by_value() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let a = vault.sessions().create(NewSession::new("a")).await.unwrap();
    let b = vault.sessions().create(NewSession::new("b")).await.unwrap();
    assert_eq!(a.token, a.token.clone());
    assert_ne!(a.token, b.token);
    assert_ne!(a.token, a.csrf_token);
    vault.close().await.unwrap();
}

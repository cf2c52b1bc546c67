//! Keys never reach logs or `Debug` output, at any tracing level, from any
//! thread (sqlx's worker threads included). This file installs a global
//! subscriber, so it holds this one test only.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use statevault::{Key, Vault, VaultOptions};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_logs_or_debug() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let dir = common::tempdir();
    let passphrase = "p4ss-phrase-that-must-not-leak";
    let options =
        VaultOptions::new(dir.path().join("pass.db")).key(Key::passphrase(passphrase).unwrap());
    let shown = format!("{options:?}");
    let vault = Vault::open(options).await.unwrap();
    vault.info().await.unwrap();
    vault
        .query_read_only("SELECT * FROM vault_meta")
        .await
        .unwrap();
    let shown = format!("{shown} {vault:?}");
    vault.close().await.unwrap();

    // A vault with a key file: its hex must not show either.
    let (raw, _) = common::vault(dir.path()).await;
    let hex = common::key_text(raw.path());
    let hex = hex.trim_start_matches("x'").trim_end_matches('\'');
    raw.info().await.unwrap();
    raw.close().await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("opening vault"),
        "the subscriber captured statevault's events: {logs}"
    );
    for secret in [passphrase, hex] {
        assert!(!logs.contains(secret), "a key reached the logs");
        assert!(
            !shown.contains(secret),
            "a key reached Debug output: {shown}"
        );
    }
    assert!(shown.contains("<redacted>"), "{shown}");
}

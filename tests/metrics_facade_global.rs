//! Installing the vault's recorder as the process's global `metrics`
//! recorder: one call, and a typed error the second time. The `metrics`
//! crate sets the global recorder once per process, so this test is alone
//! in its binary.

#![cfg(feature = "metrics")]

mod common;

use std::time::Duration;

use statevault::Error;

#[tokio::test]
async fn install_once_then_a_typed_error() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    vault.metrics().install_recorder().unwrap();
    metrics::counter!("installed_calls", "route" => "/").increment(3);

    let again = vault.metrics().install_recorder();
    assert!(
        matches!(again, Err(Error::RecorderAlreadyInstalled)),
        "{again:?}"
    );

    vault.metrics().flush_all().await.unwrap();
    let text = vault
        .metrics()
        .prometheus(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        text.contains("installed_calls_total{route=\"/\"} 3"),
        "{text}"
    );
    vault.close().await.unwrap();
}

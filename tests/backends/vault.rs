//! What every backend's vault shares, whatever the facet.

use std::time::Duration;

use statevault::{Error, NewSession};

use crate::{Backend, contract};

contract!(a_closed_vault_says_so, the_whole_vault_sweeps);

/// After `close`, every facet on every backend answers `Error::Closed`.
async fn a_closed_vault_says_so(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    t.vault.close().await.unwrap();
    let closed = |e: Error| assert!(matches!(e, Error::Closed), "{e:?}");
    closed(t.vault.preferences().get("alice").await.unwrap_err());
    closed(
        t.vault
            .sessions()
            .create(statevault::NewSession::new("alice"))
            .await
            .unwrap_err(),
    );
    closed(t.vault.limits().status("alice").await.unwrap_err());
    closed(t.vault.audit().verify().await.unwrap_err());
    t.vault.close().await.unwrap();
}

/// `Vault::sweep` applies every facet's retention that the backend holds
/// (the background task runs it hourly).
async fn the_whole_vault_sweeps(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    t.vault
        .sessions()
        .create(NewSession::new("old").idle_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    t.vault.metrics().increment("jobs", &[], 1.0);
    t.clock.advance(Duration::from_secs(400 * 86_400));
    let report = t.vault.sweep().await.unwrap();
    assert_eq!(report.removed["sessions"], 1, "{report:?}");
    assert!(report.removed.contains_key("metrics"), "{report:?}");
    assert!(report.removed.contains_key("changes"), "{report:?}");
    t.vault.close().await.unwrap();
}

//! What every backend's vault shares, whatever the facet.

use statevault::Error;

use crate::{Backend, contract};

contract!(a_closed_vault_says_so);

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

//! Opening a vault outside a tokio runtime (another executor, or none) is a
//! typed error, not a panic in `tokio::spawn`.

use statevault::{Error, Vault, VaultOptions};

#[test]
fn opening_outside_a_tokio_runtime_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = VaultOptions::new(dir.path().join("v.db"));
    let err = futures_executor::block_on(Vault::open(options.clone())).unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(!dir.path().join("v.db").exists(), "nothing was created");
    let err = futures_executor::block_on(Vault::check_file(&options)).unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}

//! The preferences facet's contract, on every backend.

use serde_json::json;
use statevault::{Error, PreferencesConfig};

use crate::{Backend, contract};

contract!(
    defaults_patch_set_and_reset,
    a_refused_patch_leaves_the_document_as_it_was,
    concurrent_patches_from_two_instances_all_land,
    an_old_document_is_upgraded_on_read_and_write,
);

async fn defaults_patch_set_and_reset(backend: Backend) {
    let Some(t) = backend
        .open(|o| o.preferences(PreferencesConfig::seeds()))
        .await
    else {
        return;
    };
    let prefs = t.vault.preferences();
    assert_eq!(prefs.get("alice").await.unwrap()["audio_quality"], "HIGH");
    assert!(prefs.stored("alice").await.unwrap().is_none());
    let merged = prefs
        .patch("alice", &json!({"search_defaults": {"limit": 50}}))
        .await
        .unwrap();
    assert_eq!(
        merged["search_defaults"],
        json!({"limit": 50, "include_explicit": true})
    );
    let stored = prefs.stored("alice").await.unwrap().unwrap();
    assert_eq!(stored.document, json!({"search_defaults": {"limit": 50}}));
    assert_eq!(stored.updated_at, t.vault.now());

    // Another instance reads what was written; `set_as` replaces it.
    let other = t.another().await;
    assert_eq!(
        other.preferences().get("alice").await.unwrap()["search_defaults"]["limit"],
        50
    );
    other
        .preferences()
        .set_as("alice", &json!({"audio_quality": "LOW"}))
        .await
        .unwrap();
    let back = prefs.get("alice").await.unwrap();
    assert_eq!(back["audio_quality"], "LOW");
    assert_eq!(
        back["search_defaults"]["limit"], 20,
        "set_as replaced the overrides"
    );
    // A `null` deletes an override; reset deletes them all.
    prefs
        .patch("alice", &json!({"audio_quality": null}))
        .await
        .unwrap();
    assert_eq!(
        prefs.stored("alice").await.unwrap().unwrap().document,
        json!({})
    );
    assert!(prefs.reset("alice").await.unwrap());
    assert!(!prefs.reset("alice").await.unwrap());
    assert!(prefs.stored("alice").await.unwrap().is_none());
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn a_refused_patch_leaves_the_document_as_it_was(backend: Backend) {
    let Some(t) = backend
        .open(|o| o.preferences(PreferencesConfig::seeds()))
        .await
    else {
        return;
    };
    let prefs = t.vault.preferences();
    prefs
        .patch("bob", &json!({"audio_quality": "LOSSLESS"}))
        .await
        .unwrap();
    let before = prefs.stored("bob").await.unwrap();
    for bad in [
        json!({"search_defaults": {"limit": "many"}}),
        json!({"no_such_key": 1}),
        json!(["not", "an", "object"]),
    ] {
        let err = prefs.patch("bob", &bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidPreference { .. } | Error::InvalidInput { .. }
            ),
            "{bad}: {err}"
        );
        assert_eq!(prefs.stored("bob").await.unwrap(), before);
    }
    // Refused for a user with nothing stored: still nothing stored.
    assert!(
        prefs
            .patch("new", &json!({"no_such_key": 1}))
            .await
            .is_err()
    );
    assert!(prefs.stored("new").await.unwrap().is_none());
    t.vault.close().await.unwrap();
}

/// Two instances patching different keys of one user's document at once,
/// the first write included: every patch is in the final document.
async fn concurrent_patches_from_two_instances_all_land(backend: Backend) {
    let config = || PreferencesConfig::new(json!({})).allow_unknown_keys(true);
    let Some(t) = backend.open(|o| o.preferences(config())).await else {
        return;
    };
    let other = t.another().await;
    let patcher = |vault: statevault::Vault, side: &'static str| async move {
        for i in 0..20 {
            vault
                .preferences()
                .patch("carol", &json!({format!("{side}{i}"): i}))
                .await
                .unwrap();
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(patcher(t.vault.clone(), "a")),
        tokio::spawn(patcher(other.clone(), "b"))
    );
    a.unwrap();
    b.unwrap();
    let stored = t
        .vault
        .preferences()
        .stored("carol")
        .await
        .unwrap()
        .unwrap();
    let keys = stored.document.as_object().unwrap().len();
    assert_eq!(keys, 40, "{}", stored.document);
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn an_old_document_is_upgraded_on_read_and_write(backend: Backend) {
    let v1 = || PreferencesConfig::new(json!({"quality": "HIGH"}));
    let Some(t) = backend.open(|o| o.preferences(v1())).await else {
        return;
    };
    t.vault
        .preferences()
        .patch("dan", &json!({"quality": "LOW"}))
        .await
        .unwrap();
    t.vault.close().await.unwrap();
    // Version 2 renames `quality` to `audio_quality`.
    let v2 = || {
        PreferencesConfig::new(json!({"audio_quality": "HIGH"})).upgrade(|doc| {
            if let Some(q) = doc.as_object_mut().and_then(|o| o.remove("quality")) {
                doc["audio_quality"] = q;
            }
            Ok(())
        })
    };
    let vault = t.reopen_with(|o| o.preferences(v2())).await;
    let prefs = vault.preferences();
    assert_eq!(
        prefs.get("dan").await.unwrap(),
        json!({"audio_quality": "LOW"})
    );
    let stored = prefs.stored("dan").await.unwrap().unwrap();
    assert_eq!(stored.schema_version, 2);
    prefs
        .patch("dan", &json!({"audio_quality": "LOSSLESS"}))
        .await
        .unwrap();
    assert_eq!(
        prefs.stored("dan").await.unwrap().unwrap().document,
        json!({"audio_quality": "LOSSLESS"})
    );
    vault.close().await.unwrap();
}

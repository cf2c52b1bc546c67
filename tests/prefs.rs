//! Preferences: merged over defaults, merge-patched, type-checked with the
//! field named, upgraded on read.

mod common;

use serde::Deserialize;
use serde_json::json;
use statevault::{Error, PreferencesConfig, Vault, VaultOptions};

async fn open(dir: &std::path::Path, config: PreferencesConfig) -> Vault {
    let (options, _clock) = common::options(dir, "prefs.db");
    Vault::open(options.preferences(config)).await.unwrap()
}

#[derive(Debug, Deserialize, PartialEq)]
struct Search {
    limit: u32,
    include_explicit: bool,
}

#[derive(Debug, Deserialize)]
struct Prefs {
    audio_quality: String,
    search_defaults: Search,
}

#[tokio::test]
async fn defaults_patches_and_deletes() {
    let dir = common::tempdir();
    let vault = open(dir.path(), PreferencesConfig::seeds()).await;
    let prefs = vault.preferences();
    assert_eq!(
        prefs.get("alice").unwrap(),
        json!({
            "audio_quality": "HIGH",
            "search_defaults": {"limit": 20, "include_explicit": true},
            "cache_preferences": {"enable_cache": true, "cache_duration": 300},
            "privacy": {"enable_analytics": true, "share_usage_data": false},
        })
    );
    assert!(prefs.stored("alice").unwrap().is_none());

    let merged = prefs
        .patch(
            "alice",
            &json!({"audio_quality": "LOSSLESS", "search_defaults": {"limit": 50}}),
        )
        .await
        .unwrap();
    assert_eq!(
        merged["search_defaults"],
        json!({"limit": 50, "include_explicit": true})
    );
    let typed: Prefs = prefs.get_as("alice").unwrap();
    assert_eq!(typed.audio_quality, "LOSSLESS");
    assert_eq!(
        typed.search_defaults,
        Search {
            limit: 50,
            include_explicit: true
        }
    );
    assert_eq!(
        prefs.stored("alice").unwrap().unwrap().document,
        json!({"audio_quality": "LOSSLESS", "search_defaults": {"limit": 50}}),
        "only overrides are stored"
    );

    // null deletes the override: the default is back.
    let merged = prefs
        .patch("alice", &json!({"audio_quality": null}))
        .await
        .unwrap();
    assert_eq!(merged["audio_quality"], "HIGH");
    assert_eq!(
        prefs.get("bob").unwrap()["audio_quality"],
        "HIGH",
        "other users untouched"
    );
    assert!(prefs.reset("alice").await.unwrap());
    assert_eq!(prefs.get("alice").unwrap()["search_defaults"]["limit"], 20);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn wrong_types_and_unknown_keys_name_the_field_and_change_nothing() {
    let dir = common::tempdir();
    let vault = open(dir.path(), PreferencesConfig::seeds()).await;
    let prefs = vault.preferences();
    prefs
        .patch("alice", &json!({"privacy": {"enable_analytics": false}}))
        .await
        .unwrap();
    let before = prefs.stored("alice").unwrap();
    for (patch, field, words) in [
        (
            json!({"search_defaults": {"limit": "fifty"}}),
            "search_defaults.limit",
            "expected a number, found a string",
        ),
        (
            json!({"privacy": true}),
            "privacy",
            "expected an object, found a boolean",
        ),
        (json!({"colour": "red"}), "colour", "not a known preference"),
        (
            json!({"cache_preferences": {"ttl": 5}}),
            "cache_preferences.ttl",
            "not a known preference",
        ),
    ] {
        let err = prefs.patch("alice", &patch).await.unwrap_err();
        match &err {
            Error::InvalidPreference { field: f, reason } => {
                assert_eq!(f, field);
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(matches!(
        prefs.patch("alice", &json!([1])).await,
        Err(Error::InvalidPreference { .. })
    ));
    assert_eq!(prefs.stored("alice").unwrap(), before);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn old_documents_are_upgraded_on_read() {
    let dir = common::tempdir();
    let v1 = PreferencesConfig::new(json!({"page_size": 20, "theme": "dark"}));
    let vault = open(dir.path(), v1).await;
    vault
        .preferences()
        .patch("alice", &json!({"page_size": 50}))
        .await
        .unwrap();
    let path = vault.path().to_owned();
    vault.close().await.unwrap();

    let v2 = PreferencesConfig::new(json!({"limit": 20, "theme": "dark"})).upgrade(|doc| {
        if let Some(size) = doc.as_object_mut().and_then(|o| o.remove("page_size")) {
            doc["limit"] = size;
        }
        Ok(())
    });
    let vault = Vault::open(VaultOptions::new(&path).preferences(v2.clone()))
        .await
        .unwrap();
    assert_eq!(
        vault.preferences().get("alice").unwrap(),
        json!({"limit": 50, "theme": "dark"})
    );
    let stored = vault.preferences().stored("alice").unwrap().unwrap();
    assert_eq!(stored.schema_version, 2);
    vault
        .preferences()
        .patch("alice", &json!({"theme": "light"}))
        .await
        .unwrap();
    let version = vault
        .query_read_only("SELECT schema_version, document FROM preferences")
        .await
        .unwrap()
        .rows;
    assert_eq!(version[0][0], 2, "written back in the new version");
    assert_eq!(
        version[0][1],
        json!({"limit": 50, "theme": "light"}).to_string()
    );
    vault.close().await.unwrap();

    // A document from a newer application is refused, not misread.
    let vault =
        Vault::open(VaultOptions::new(&path).preferences(PreferencesConfig::new(json!({}))))
            .await
            .unwrap();
    assert!(matches!(
        vault.preferences().get("alice"),
        Err(Error::InvalidPreference { ref field, .. }) if field == "schema_version"
    ));
    vault.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_lose_nothing() {
    let dir = common::tempdir();
    let vault = open(dir.path(), PreferencesConfig::default()).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let vault = vault.clone();
            tokio::spawn(async move {
                vault
                    .preferences()
                    .patch("alice", &json!({ format!("k{i}"): i }))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let doc = vault.preferences().get("alice").unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 20, "{doc}");
    vault.close().await.unwrap();
}

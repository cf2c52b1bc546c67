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
        prefs.get("alice").await.unwrap(),
        json!({
            "audio_quality": "HIGH",
            "search_defaults": {"limit": 20, "include_explicit": true},
            "cache_preferences": {"enable_cache": true, "cache_duration": 300},
            "privacy": {"enable_analytics": true, "share_usage_data": false},
        })
    );
    assert!(prefs.stored("alice").await.unwrap().is_none());

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
    let typed: Prefs = prefs.get_as("alice").await.unwrap();
    assert_eq!(typed.audio_quality, "LOSSLESS");
    assert_eq!(
        typed.search_defaults,
        Search {
            limit: 50,
            include_explicit: true
        }
    );
    assert_eq!(
        prefs.stored("alice").await.unwrap().unwrap().document,
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
        prefs.get("bob").await.unwrap()["audio_quality"],
        "HIGH",
        "other users untouched"
    );
    assert!(prefs.reset("alice").await.unwrap());
    assert_eq!(
        prefs.get("alice").await.unwrap()["search_defaults"]["limit"],
        20
    );
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
    let before = prefs.stored("alice").await.unwrap();
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
    assert_eq!(prefs.stored("alice").await.unwrap(), before);
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
        vault.preferences().get("alice").await.unwrap(),
        json!({"limit": 50, "theme": "dark"})
    );
    let stored = vault.preferences().stored("alice").await.unwrap().unwrap();
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
        vault.preferences().get("alice").await,
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
    let doc = vault.preferences().get("alice").await.unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 20, "{doc}");
    vault.close().await.unwrap();
}

/// `set_as` replaces the overrides in one transaction: a value the defaults
/// refuse leaves the user's stored preferences as they were (it used to
/// delete them first, in a transaction of its own).
#[tokio::test]
async fn a_refused_set_as_keeps_what_was_stored() {
    let dir = common::tempdir();
    let vault = open(dir.path(), PreferencesConfig::seeds()).await;
    let prefs = vault.preferences();
    prefs
        .patch("alice", &json!({"audio_quality": "LOSSLESS"}))
        .await
        .unwrap();
    let before = prefs.stored("alice").await.unwrap().unwrap();
    let err = prefs
        .set_as("alice", &json!({"privacy": 3}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPreference { field, .. } if field == "privacy"),
        "{err:?}"
    );
    assert_eq!(prefs.stored("alice").await.unwrap().unwrap(), before);

    let replaced = prefs
        .set_as("alice", &json!({"search_defaults": {"limit": 5}}))
        .await
        .unwrap();
    assert_eq!(
        replaced["audio_quality"], "HIGH",
        "set_as replaces, not merges"
    );
    assert_eq!(
        prefs.stored("alice").await.unwrap().unwrap().document,
        json!({"search_defaults": {"limit": 5}})
    );
    vault.close().await.unwrap();
}

/// The application's defaults are recorded in the file, and a process that
/// knows none (the CLI without a config file) checks its writes against
/// them: what the service would refuse is refused at the door.
#[tokio::test]
async fn a_process_without_defaults_checks_writes_against_the_recorded_ones() {
    let dir = common::tempdir();
    let vault = open(dir.path(), PreferencesConfig::seeds()).await;
    vault.close().await.unwrap();

    let out = common::run(
        dir.path(),
        &["--db", "prefs.db", "prefs", "set", "u", r#"{"privacy": 3}"#],
    );
    let err = common::assert_one_error_line(&out);
    assert!(err.contains("privacy"), "{err}");
    let out = common::run(
        dir.path(),
        &[
            "--db",
            "prefs.db",
            "prefs",
            "set",
            "u",
            r#"{"privacy": {"enable_analytics": false}}"#,
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(
        shown["audio_quality"], "HIGH",
        "the recorded defaults apply"
    );

    // The service reads what the CLI wrote.
    let vault = open(dir.path(), PreferencesConfig::seeds()).await;
    let merged = vault.preferences().get("u").await.unwrap();
    assert_eq!(merged["privacy"]["enable_analytics"], false);
    vault.close().await.unwrap();
}

/// A tool that is not the application (the demo) does not record its
/// defaults, and an older schema version never replaces a newer one.
#[tokio::test]
async fn only_the_application_records_its_schema_and_never_an_older_one() {
    let dir = common::tempdir();
    let guest = open(dir.path(), PreferencesConfig::seeds().record_in_file(false)).await;
    guest.close().await.unwrap();
    let knows_nothing = open(dir.path(), PreferencesConfig::default()).await;
    knows_nothing
        .preferences()
        .patch("u", &json!({"privacy": 3}))
        .await
        .expect("nothing recorded: anything goes");
    knows_nothing.close().await.unwrap();

    let v2 = PreferencesConfig::new(json!({"theme": "dark"})).upgrade(|_| Ok(()));
    open(dir.path(), v2).await.close().await.unwrap();
    open(dir.path(), PreferencesConfig::new(json!({"colour": "red"})))
        .await
        .close()
        .await
        .unwrap();
    let adopted = open(dir.path(), PreferencesConfig::default()).await;
    let prefs = adopted.preferences();
    assert_eq!(prefs.get("nobody").await.unwrap(), json!({"theme": "dark"}));
    let err = prefs
        .patch("w", &json!({"colour": "blue"}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPreference { .. }), "{err:?}");
    // "u" was written at version 1 with no schema; only the application
    // knows how to upgrade it to version 2.
    let err = prefs.get("u").await.unwrap_err();
    assert!(err.to_string().contains("only the application"), "{err}");
    adopted.close().await.unwrap();
}

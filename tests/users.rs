//! Whole-user export and erasure across every facet.

mod common;

use serde_json::json;
use statevault::{
    AuditEvent, CacheKey, ClientInfo, EventKind, NewSession, PreferencesConfig, UserExport, Vault,
};

async fn populated(dir: &std::path::Path) -> Vault {
    let (options, _clock) = common::options(dir, "users.db");
    let vault = Vault::open(options.preferences(PreferencesConfig::seeds()))
        .await
        .unwrap();
    for user in ["alice", "bob"] {
        let issued = vault
            .sessions()
            .create(
                NewSession::new(user)
                    .data(&json!({"upstream": format!("{user}-token")}))
                    .unwrap(),
            )
            .await
            .unwrap();
        vault
            .sessions()
            .create(NewSession::new(user))
            .await
            .unwrap();
        vault
            .preferences()
            .patch(user, &json!({"audio_quality": "LOW"}))
            .await
            .unwrap();
        for q in ["jazz", "rock"] {
            let key = CacheKey::derive("search", "tracks", &json!({ "q": q }), Some(user)).unwrap();
            vault.cache().set(&key, b"[1, 2, 3]").await.unwrap();
        }
        for _ in 0..7 {
            // auth_attempts allows 5 per 15 minutes and is written at once.
            vault
                .limits()
                .check(user, "auth_attempts", 1, &ClientInfo::none())
                .await
                .unwrap();
        }
        for action in ["login", "search", "logout"] {
            vault
                .audit()
                .append(
                    AuditEvent::new(EventKind::Auth, action)
                        .user(user)
                        .session(issued.id.clone()),
                )
                .unwrap();
        }
    }
    vault
}

#[tokio::test]
async fn export_has_everything_and_round_trips() {
    let dir = common::tempdir();
    let vault = populated(dir.path()).await;
    let export = vault.export_user("alice").await.unwrap();
    assert_eq!(export.sessions.len(), 2);
    assert_eq!(export.sessions[0].data["upstream"], "alice-token");
    assert_eq!(export.preferences, Some(json!({"audio_quality": "LOW"})));
    assert_eq!(export.audit_events.len(), 3);
    // The sixth attempt is a violation; the seventh falls in its penalty.
    assert_eq!(export.violations.len(), 1);
    assert_eq!(export.cache_keys.len(), 2);
    assert!(
        export.cache_keys.iter().all(|k| k.ends_with(":alice")),
        "{:?}",
        export.cache_keys
    );
    assert!(
        export
            .rate_limits
            .iter()
            .any(|l| l.limit == "auth_attempts" && l.penalty_until.is_some())
    );
    assert!(
        export
            .audit_events
            .iter()
            .all(|e| e.user_id.as_deref() == Some("alice"))
    );

    let text = serde_json::to_string(&export).unwrap();
    assert!(
        !text.contains("token_hash") && !text.contains("csrf"),
        "{text}"
    );
    let back: UserExport = serde_json::from_str(&text).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&export).unwrap()
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn erase_leaves_nothing_of_the_user_and_the_chain_verifies() {
    let dir = common::tempdir();
    let vault = populated(dir.path()).await;
    let report = vault.erase_user("alice").await.unwrap();
    assert_eq!(report.rows["sessions"], 2);
    assert_eq!(report.rows["preferences"], 1);
    assert_eq!(report.rows["audit_events"], 3);
    assert_eq!(report.rows["violations"], 1);
    assert_eq!(report.rows["cache_entries"], 2);
    assert!(report.rows["token_buckets"] >= 1);

    for (table, column) in [
        ("sessions", "user_id"),
        ("preferences", "user_id"),
        ("audit_events", "user_id"),
        ("token_buckets", "subject"),
        ("violations", "subject"),
        ("cache_entries", "user_id"),
    ] {
        let n = vault
            .query_read_only(&format!(
                "SELECT count(*) FROM {table} WHERE {column} = 'alice'"
            ))
            .await
            .unwrap()
            .rows[0][0]
            .clone();
        assert_eq!(n, 0, "{table} still has alice");
    }
    let everything = vault
        .query_read_only("SELECT * FROM audit_events")
        .await
        .unwrap()
        .rows;
    assert!(!format!("{everything:?}").contains("alice"));
    assert!(vault.audit().verify().await.unwrap().ok);
    let export = vault.export_user("alice").await.unwrap();
    assert!(
        export.sessions.is_empty()
            && export.preferences.is_none()
            && export.audit_events.is_empty()
            && export.violations.is_empty()
            && export.cache_keys.is_empty()
    );
    let fresh = vault
        .limits()
        .check("alice", "auth_attempts", 1, &ClientInfo::none())
        .await
        .unwrap();
    assert!(fresh.allowed, "no penalty left in memory either");
    let bob = vault.export_user("bob").await.unwrap();
    assert_eq!(
        (bob.sessions.len(), bob.audit_events.len()),
        (2, 3),
        "bob untouched"
    );
    let secure_delete = vault
        .query_read_only("PRAGMA secure_delete")
        .await
        .unwrap()
        .rows[0][0]
        .clone();
    assert_eq!(
        secure_delete, 1,
        "SQLCipher's default: freed pages are overwritten"
    );
    vault.close().await.unwrap();
}

/// One rule for the id of a user or a rate-limit subject, in every facet:
/// 1 to 256 bytes and no control characters. `limits().status("")`,
/// `reset("")` and `cache().clear_user("")` answered as if it were an id,
/// and `"user\u{1}x"` was stored by every facet.
#[tokio::test]
async fn every_facet_refuses_the_same_user_ids() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "ids.db");
    let vault = Vault::open(options.preferences(PreferencesConfig::seeds()))
        .await
        .unwrap();
    let long = "u".repeat(257);
    for bad in ["", "user\u{1}x", "a\nb", "\u{1b}[31m", "\u{9b}x", &long] {
        let refused = |what: &str, result: Result<(), statevault::Error>| match result {
            Err(statevault::Error::InvalidInput { .. }) => {}
            other => panic!("{what}({bad:?}): {other:?}"),
        };
        let sessions = vault.sessions();
        refused(
            "create",
            sessions.create(NewSession::new(bad)).await.map(drop),
        );
        refused("list", sessions.list(bad).await.map(drop));
        refused("revoke_user", sessions.revoke_user(bad).await.map(drop));
        let prefs = vault.preferences();
        refused("patch", prefs.patch(bad, &json!({})).await.map(drop));
        refused("get", prefs.get(bad).await.map(drop));
        let limits = vault.limits();
        refused(
            "check",
            limits
                .check(bad, "auth_attempts", 1, &ClientInfo::none())
                .await
                .map(drop),
        );
        refused("status", limits.status(bad).await.map(drop));
        refused("reset", limits.reset(bad).await.map(drop));
        refused("violations_of", limits.violations_of(bad).await.map(drop));
        let cache = vault.cache();
        refused("clear_user", cache.clear_user(bad).await.map(drop));
        refused("keys_of_user", cache.keys_of_user(bad).await.map(drop));
        refused(
            "derive",
            CacheKey::derive("search", "q", &json!({}), Some(bad)).map(drop),
        );
        refused(
            "for_user",
            CacheKey::new("search", "q")
                .unwrap()
                .for_user(bad)
                .map(drop),
        );
        refused(
            "audit",
            vault
                .audit()
                .append(AuditEvent::new(EventKind::Auth, "login").user(bad))
                .map(drop),
        );
        refused("export_user", vault.export_user(bad).await.map(drop));
        refused("erase_user", vault.erase_user(bad).await.map(drop));
    }
    for good in [
        "alice",
        "ü",
        "user@example.com",
        "\u{1f600}",
        &"u".repeat(256),
    ] {
        vault
            .sessions()
            .create(NewSession::new(good))
            .await
            .unwrap();
        vault.limits().status(good).await.unwrap();
        vault.cache().clear_user(good).await.unwrap();
    }
    vault.close().await.unwrap();
}

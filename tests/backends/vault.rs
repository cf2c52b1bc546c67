//! What every backend's vault shares, whatever the facet.

use std::time::Duration;

use statevault::{Error, NewSession};

use crate::{Backend, contract};

contract!(
    a_closed_vault_says_so,
    the_whole_vault_sweeps,
    a_user_is_exported_then_erased_from_every_facet,
    an_export_reads_every_facet_in_one_snapshot,
);

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

/// A user's export reads every facet; the erasure empties every facet of
/// them in one go (the audit event buffered just before included), leaves
/// another user alone, keeps the chain verifying, and reaches another
/// instance's memory: their token and cached entry are gone there too. The
/// test waits for that with a timeout; the clock stands still.
async fn a_user_is_exported_then_erased_from_every_facet(backend: Backend) {
    let Some(t) = open_taking_any_preference(backend).await else {
        return;
    };
    let v = &t.vault;
    let profile = |user: &str| {
        statevault::CacheKey::new("profile", user)
            .unwrap()
            .for_user(user)
            .unwrap()
    };
    let mut tokens = Vec::new();
    for user in ["alice", "bob"] {
        tokens.push(v.sessions().create(NewSession::new(user)).await.unwrap());
        v.preferences()
            .patch(user, &serde_json::json!({"theme": "dark"}))
            .await
            .unwrap();
        let client = statevault::ClientInfo {
            ip: Some("198.51.100.7"),
            user_agent: None,
        };
        for _ in 0..6 {
            v.limits()
                .check(user, "auth_attempts", 1, &client)
                .await
                .unwrap();
        }
        v.cache().set(&profile(user), b"cached").await.unwrap();
        v.audit()
            .append(statevault::AuditEvent::new(statevault::EventKind::Auth, "login").user(user))
            .unwrap();
    }
    let alice_key = profile("alice");
    let other = t.another().await;
    let alice_token = tokens[0].token.expose();
    assert!(
        other
            .sessions()
            .validate(alice_token, None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    let export = v.export_user("alice").await.unwrap();
    assert_eq!(export.sessions.len(), 1);
    assert_eq!(export.preferences.unwrap()["theme"], "dark");
    assert_eq!(export.audit_events.len(), 1, "the buffered event too");
    assert!(!export.violations.is_empty());
    assert_eq!(export.cache_keys, [alice_key.as_str()]);
    assert!(other.cache().get(&alice_key).await.unwrap().is_some());

    v.audit()
        .append(statevault::AuditEvent::new(statevault::EventKind::Auth, "logout").user("alice"))
        .unwrap();
    let erased = v.erase_user("alice").await.unwrap();
    let rows = &erased.rows;
    assert_eq!(rows["sessions"], 1, "{rows:?}");
    assert_eq!(rows["preferences"], 1, "{rows:?}");
    assert_eq!(rows["cache_entries"], 1, "{rows:?}");
    assert_eq!(rows["audit_events"], 2, "{rows:?}");
    assert!(
        rows["violations"] > 0 && rows["token_buckets"] > 0,
        "{rows:?}"
    );

    let after = v.export_user("alice").await.unwrap();
    assert!(after.sessions.is_empty() && after.preferences.is_none());
    assert!(after.audit_events.is_empty() && after.violations.is_empty());
    assert!(after.cache_keys.is_empty());
    let bob = v.export_user("bob").await.unwrap();
    assert_eq!((bob.sessions.len(), bob.audit_events.len()), (1, 1));
    let report = v.audit().verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    tokio::time::timeout(Duration::from_secs(10), async {
        while other
            .sessions()
            .validate(alice_token, None)
            .await
            .unwrap()
            .valid()
            .is_some()
            || other.cache().get(&alice_key).await.unwrap().is_some()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the other instance still held the erased user after 10 s");
    assert!(v.check().await.unwrap().ok());
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

/// A user's export reads every facet in one snapshot: while another
/// instance erases the user (one transaction), each export taken meanwhile
/// holds all of the user's parts or none of them, never some.
async fn an_export_reads_every_facet_in_one_snapshot(backend: Backend) {
    let Some(t) = open_taking_any_preference(backend).await else {
        return;
    };
    let v = &t.vault;
    let other = t.another().await;
    // One reader: the snapshot holds it; nothing in the export may wait for
    // another (it once did, and hung).
    let one_reader = t.reopen_with(|o| o.readers(1)).await;
    let alone = one_reader.export_user("nobody");
    let alone = tokio::time::timeout(Duration::from_secs(10), alone).await;
    assert!(alone.expect("the export hung").unwrap().sessions.is_empty());
    one_reader.close().await.unwrap();
    for round in 0..20 {
        let user = format!("user-{round}");
        v.sessions().create(NewSession::new(&user)).await.unwrap();
        v.preferences()
            .patch(&user, &serde_json::json!({"theme": "dark"}))
            .await
            .unwrap();
        let key = statevault::CacheKey::new("profile", &user)
            .unwrap()
            .for_user(&user)
            .unwrap();
        v.cache().set(&key, b"cached").await.unwrap();
        v.audit()
            .append_durable(
                statevault::AuditEvent::new(statevault::EventKind::Auth, "login").user(&user),
            )
            .await
            .unwrap();
        v.flush().await.unwrap();
        let exports = async {
            let mut seen = Vec::new();
            loop {
                let export = v.export_user(&user).await.unwrap();
                let parts = [
                    !export.sessions.is_empty(),
                    export.preferences.is_some(),
                    !export.cache_keys.is_empty(),
                    !export.audit_events.is_empty(),
                ];
                seen.push(parts);
                if parts == [false; 4] {
                    return seen;
                }
            }
        };
        let (erased, seen) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(other.erase_user(&user), exports)
        })
        .await
        .expect("the export still showed the user 60 s after the erasure began");
        erased.unwrap();
        for parts in seen {
            assert!(
                parts == [true; 4] || parts == [false; 4],
                "round {round}: an export held only some parts (sessions, preferences, \
                 cache keys, audit events): {parts:?}"
            );
        }
    }
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

/// A vault on `backend` whose preferences take any key (no defaults).
async fn open_taking_any_preference(backend: Backend) -> Option<crate::Subject> {
    backend
        .open(|o| {
            o.preferences(
                statevault::PreferencesConfig::new(serde_json::json!({})).allow_unknown_keys(true),
            )
        })
        .await
}

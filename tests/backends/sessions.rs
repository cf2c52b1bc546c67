//! The sessions facet's contract, on every backend.

use std::time::Duration;

use serde_json::json;
use statevault::{Error, NewSession, SessionConfig, Validation, WhenFull};

use crate::{Backend, contract};

contract!(
    create_validate_revoke,
    data_and_client_meta_round_trip,
    rotate_kills_the_old_token,
    regenerate_moves_the_data_to_a_new_id,
    the_cap_evicts_the_oldest_or_refuses,
    the_cap_holds_across_instances,
    idle_and_absolute_expiry_follow_the_clock,
    revoke_user_and_list,
    last_seen_is_flushed_and_sweep_removes_idle_rows,
    device_binding,
    revocation_and_rotation_reach_another_instance,
);

fn config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.max_per_user = 3;
    config
}

async fn create_validate_revoke(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let issued = sessions.create(NewSession::new("alice")).await.unwrap();
    let session = sessions
        .validate(issued.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .expect("valid");
    assert_eq!(session.user_id, "alice");
    assert_eq!(session.id, issued.id);
    assert!(session.verify_csrf(issued.csrf_token.expose()));
    assert!(matches!(
        sessions.validate("not-a-token", None).await.unwrap(),
        Validation::Unknown
    ));
    assert!(sessions.revoke(&issued.id).await.unwrap());
    assert!(!sessions.revoke(&issued.id).await.unwrap(), "only once");
    assert!(matches!(
        sessions.validate(issued.token.expose(), None).await.unwrap(),
        Validation::Revoked { reason, .. } if reason == "revoked"
    ));
    t.vault.close().await.unwrap();
}

async fn data_and_client_meta_round_trip(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let issued = sessions
        .create(
            NewSession::new("bob")
                .client_meta("app", "cli 1.2")
                .data(&json!({"cart": [1, 2]}))
                .unwrap(),
        )
        .await
        .unwrap();
    sessions
        .set_data(
            issued.token.expose(),
            &json!({"cart": [1, 2, 3], "note": "ünïcode"}),
        )
        .await
        .unwrap();
    // Another handle reads what was written, not this one's memory.
    let other = t.another().await;
    let seen = other
        .sessions()
        .validate(issued.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(
        seen.data::<serde_json::Value>().unwrap(),
        json!({"cart": [1, 2, 3], "note": "ünïcode"})
    );
    assert_eq!(seen.client_meta["app"], "cli 1.2");
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn rotate_kills_the_old_token(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let first = sessions
        .create(NewSession::new("carol").data(&json!({"n": 1})).unwrap())
        .await
        .unwrap();
    let second = sessions.rotate(first.token.expose(), None).await.unwrap();
    assert_eq!(second.id, first.id);
    assert!(matches!(
        sessions.validate(first.token.expose(), None).await.unwrap(),
        Validation::Unknown
    ));
    let session = sessions
        .validate(second.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(
        session.data::<serde_json::Value>().unwrap(),
        json!({"n": 1})
    );
    assert!(session.verify_csrf(second.csrf_token.expose()));
    assert!(!session.verify_csrf(first.csrf_token.expose()));
    let err = sessions
        .rotate(first.token.expose(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionNotValid { .. }), "{err}");
    t.vault.close().await.unwrap();
}

async fn regenerate_moves_the_data_to_a_new_id(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let old = sessions
        .create(
            NewSession::new("dan")
                .client_meta("ua", "curl")
                .data(&json!({"step": 2}))
                .unwrap(),
        )
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(5));
    let new = sessions.regenerate(old.token.expose(), None).await.unwrap();
    assert_ne!(new.id, old.id);
    assert!(matches!(
        sessions.validate(old.token.expose(), None).await.unwrap(),
        Validation::Revoked { reason, .. } if reason == "regenerated"
    ));
    let other = t.another().await;
    let session = other
        .sessions()
        .validate(new.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.id, new.id);
    assert_eq!(
        session.data::<serde_json::Value>().unwrap(),
        json!({"step": 2})
    );
    assert_eq!(session.client_meta["ua"], "curl");
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn the_cap_evicts_the_oldest_or_refuses(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(sessions.create(NewSession::new("erin")).await.unwrap());
        t.clock.advance(Duration::from_secs(1));
    }
    let fourth = sessions.create(NewSession::new("erin")).await.unwrap();
    assert_eq!(fourth.evicted, vec![issued[0].id.clone()]);
    assert!(matches!(
        sessions.validate(issued[0].token.expose(), None).await.unwrap(),
        Validation::Revoked { reason, .. } if reason == "evicted"
    ));
    assert_eq!(sessions.list("erin").await.unwrap().len(), 3);
    t.vault.close().await.unwrap();

    let mut refuse = config();
    refuse.when_full = WhenFull::Refuse;
    let Some(t) = backend.open(|o| o.sessions(refuse)).await else {
        return;
    };
    for _ in 0..3 {
        t.vault
            .sessions()
            .create(NewSession::new("erin"))
            .await
            .unwrap();
    }
    let err = t
        .vault
        .sessions()
        .create(NewSession::new("erin"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionLimit { max: 3, .. }), "{err}");
    t.vault.close().await.unwrap();
}

/// Two handles (two instances of a service) creating one user's sessions
/// at once never leave more than the cap live.
async fn the_cap_holds_across_instances(backend: Backend) {
    let mut refuse = config();
    refuse.when_full = WhenFull::Refuse;
    refuse.max_per_user = 5;
    let Some(t) = backend.open(|o| o.sessions(refuse)).await else {
        return;
    };
    let other = t.another().await;
    let create = |vault: statevault::Vault| async move {
        let mut made = 0;
        for _ in 0..8 {
            match vault.sessions().create(NewSession::new("fay")).await {
                Ok(_) => made += 1,
                Err(Error::SessionLimit { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        made
    };
    let (a, b) = tokio::join!(
        tokio::spawn(create(t.vault.clone())),
        tokio::spawn(create(other.clone()))
    );
    assert_eq!(a.unwrap() + b.unwrap(), 5);
    assert_eq!(t.vault.sessions().list("fay").await.unwrap().len(), 5);
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn idle_and_absolute_expiry_follow_the_clock(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let idle = sessions
        .create(NewSession::new("gus").idle_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let short = sessions
        .create(
            NewSession::new("gus")
                .idle_timeout(Duration::from_secs(3600))
                .absolute_lifetime(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(50));
    assert!(matches!(
        sessions.validate(idle.token.expose(), None).await.unwrap(),
        Validation::Valid(_)
    ));
    t.clock.advance(Duration::from_secs(50));
    assert!(
        matches!(
            sessions.validate(idle.token.expose(), None).await.unwrap(),
            Validation::Valid(_)
        ),
        "seen 50 s ago: still live"
    );
    t.clock.advance(Duration::from_secs(61));
    assert!(matches!(
        sessions.validate(idle.token.expose(), None).await.unwrap(),
        Validation::Expired { .. }
    ));
    assert!(matches!(
        sessions.validate(short.token.expose(), None).await.unwrap(),
        Validation::Expired { .. }
    ));
    t.vault.close().await.unwrap();
}

async fn revoke_user_and_list(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let a = sessions
        .create(NewSession::new("hal").org("acme"))
        .await
        .unwrap();
    let b = sessions.create(NewSession::new("hal")).await.unwrap();
    let other = sessions.create(NewSession::new("ivy")).await.unwrap();
    let listed = sessions.list("hal").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()]);
    assert_eq!(listed[0].org_id.as_deref(), Some("acme"));
    assert_eq!(sessions.revoke_user("hal").await.unwrap(), 2);
    assert!(sessions.list("hal").await.unwrap().is_empty());
    for token in [&a.token, &b.token] {
        assert!(matches!(
            sessions.validate(token.expose(), None).await.unwrap(),
            Validation::Revoked { reason, .. } if reason == "logout_all"
        ));
    }
    assert!(matches!(
        sessions.validate(other.token.expose(), None).await.unwrap(),
        Validation::Valid(_)
    ));
    t.vault.close().await.unwrap();
}

async fn last_seen_is_flushed_and_sweep_removes_idle_rows(backend: Backend) {
    let mut config = config();
    config.retention = Duration::from_secs(700);
    let Some(t) = backend.open(|o| o.sessions(config)).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let busy = sessions
        .create(NewSession::new("jo").idle_timeout(Duration::from_secs(600)))
        .await
        .unwrap();
    let quiet = sessions
        .create(NewSession::new("jo").idle_timeout(Duration::from_secs(600)))
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(500));
    assert!(
        sessions
            .validate(busy.token.expose(), None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    t.vault.flush().await.unwrap();
    // Another instance sees the flushed last-seen time: 500 s on, `busy`
    // is live for it and `quiet` is not. Its own validation is flushed as
    // it closes.
    t.clock.advance(Duration::from_secs(500));
    let other = t.another().await;
    assert!(matches!(
        other
            .sessions()
            .validate(busy.token.expose(), None)
            .await
            .unwrap(),
        Validation::Valid(_)
    ));
    assert!(matches!(
        other
            .sessions()
            .validate(quiet.token.expose(), None)
            .await
            .unwrap(),
        Validation::Expired { .. }
    ));
    other.close().await.unwrap();
    // Last seen more than the retention (700 s) ago: `quiet` only.
    let swept = sessions.sweep(100).await.unwrap();
    assert_eq!(swept, 1);
    assert!(matches!(
        sessions.validate(quiet.token.expose(), None).await.unwrap(),
        Validation::Unknown
    ));
    t.vault.close().await.unwrap();
}

async fn device_binding(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let sessions = t.vault.sessions();
    let bound = sessions
        .create(NewSession::new("kim").device_fingerprint("laptop-1"))
        .await
        .unwrap();
    assert!(matches!(
        sessions.validate(bound.token.expose(), Some("laptop-1")).await.unwrap(),
        Validation::Valid(s) if s.device_bound
    ));
    assert!(matches!(
        sessions
            .validate(bound.token.expose(), Some("phone"))
            .await
            .unwrap(),
        Validation::FingerprintMismatch { .. }
    ));
    t.vault.close().await.unwrap();
}

/// Another instance holding a session in memory drops it when the change
/// arrives (at its next validation on the file; one notification round trip
/// on PostgreSQL), with the vault's clock standing still, so that its
/// memory never expires. The test waits for the event, with a timeout.
async fn revocation_and_rotation_reach_another_instance(backend: Backend) {
    let Some(t) = backend.open(|o| o.sessions(config())).await else {
        return;
    };
    let other = t.another().await;
    let sessions = t.vault.sessions();
    let revoked = sessions.create(NewSession::new("lee")).await.unwrap();
    let rotated = sessions.create(NewSession::new("lee")).await.unwrap();
    for issued in [&revoked, &rotated] {
        assert!(matches!(
            other
                .sessions()
                .validate(issued.token.expose(), None)
                .await
                .unwrap(),
            Validation::Valid(_)
        ));
    }
    sessions.revoke(&revoked.id).await.unwrap();
    sessions.rotate(rotated.token.expose(), None).await.unwrap();
    let wait = |token: String, want: fn(&Validation) -> bool| {
        let other = other.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let seen = other.sessions().validate(&token, None).await.unwrap();
                    if want(&seen) {
                        return;
                    }
                    assert!(matches!(seen, Validation::Valid(_)), "{seen:?}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
            .expect("the other instance still took the token after 10 s")
        }
    };
    wait(revoked.token.expose().to_owned(), |v| {
        matches!(v, Validation::Revoked { .. })
    })
    .await;
    wait(rotated.token.expose().to_owned(), |v| {
        matches!(v, Validation::Unknown)
    })
    .await;
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

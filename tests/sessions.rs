//! Sessions: every expiry and rotation case on a fake clock, the cap under
//! concurrency, device binding, CSRF, and what a copy of the file is worth.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::tempdir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use statevault::{
    Error, ExpiryReason, FakeClock, NewSession, SessionConfig, Validation, Vault, VaultOptions,
    WhenFull,
};

const HOUR: Duration = Duration::from_secs(3600);

async fn open(dir: &std::path::Path, config: SessionConfig) -> (Vault, FakeClock) {
    let (options, clock) = common::options(dir, "sessions.db");
    (Vault::open(options.sessions(config)).await.unwrap(), clock)
}

/// Whether `token` validates (without a device fingerprint) as a live session.
async fn is_live(vault: &Vault, token: &str) -> bool {
    vault
        .sessions()
        .validate(token, None)
        .await
        .unwrap()
        .valid()
        .is_some()
}

fn config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.idle_timeout = 2 * HOUR;
    config.absolute_lifetime = 48 * HOUR;
    config.rotation_interval = 24 * HOUR;
    config
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Upstream {
    access_token: String,
    refresh_token: String,
    country: String,
}

fn upstream() -> Upstream {
    Upstream {
        access_token: "upstream-access".into(),
        refresh_token: "upstream-refresh".into(),
        country: "NO".into(),
    }
}

#[tokio::test]
async fn create_returns_a_token_once_and_validate_accepts_it() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(
            NewSession::new("alice")
                .org("acme")
                .client_meta("route", "/mcp")
                .client_ip("203.0.113.7")
                .data(&upstream())
                .unwrap(),
        )
        .await
        .unwrap();
    let token = issued.token.expose();
    assert_eq!(
        token.len(),
        76,
        "the issue time (48 bits), then 256 random bits, in hex"
    );
    let issued_ms = u64::from_str_radix(&token[..12], 16).unwrap();
    assert_eq!(issued_ms as i64, vault.now().as_millis());
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "URL-safe");
    assert_ne!(issued.token, issued.csrf_token);

    let session = vault
        .sessions()
        .validate(token, None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.id, issued.id);
    assert_eq!(session.user_id, "alice");
    assert_eq!(session.org_id.as_deref(), Some("acme"));
    assert_eq!(session.client_meta["route"], "/mcp");
    assert_eq!(session.data::<Upstream>().unwrap(), upstream());
    assert!(!session.rotation_due && !session.device_bound);
    assert!(session.verify_csrf(issued.csrf_token.expose()));
    assert!(!session.verify_csrf(token));
    assert!(!session.verify_csrf(""));

    assert!(matches!(
        vault
            .sessions()
            .validate("not-a-token", None)
            .await
            .unwrap(),
        Validation::Unknown
    ));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn secrets_are_not_in_the_file_nor_in_debug_output() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(
            NewSession::new("bob")
                .client_ip("198.51.100.23")
                .user_agent("curl/8")
                .data(&upstream())
                .unwrap(),
        )
        .await
        .unwrap();
    let shown = format!("{issued:?}");
    let session = vault
        .sessions()
        .validate(issued.token.expose(), None)
        .await
        .unwrap();
    let shown = format!("{shown} {session:?}");
    for secret in [
        issued.token.expose(),
        issued.csrf_token.expose(),
        "upstream-access",
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }

    let rows = vault
        .query_read_only(
            "SELECT token_hash, csrf_hash, ip_hash, user_agent_hash, client_meta FROM sessions",
        )
        .await
        .unwrap()
        .rows;
    // The token's issue time (its first 12 hex digits), then the first 26
    // bytes of its SHA-256: never the random part.
    let token = issued.token.expose();
    let digest: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        rows[0][0],
        format!("x'{}{}'", &token[..12], &digest[..52]),
        "only the issue time and the token's SHA-256 are stored"
    );
    assert!(!format!("{:?}", rows[0][0]).contains(&token[12..20]));
    let dump = format!("{rows:?}");
    for plain in [
        issued.token.expose(),
        issued.csrf_token.expose(),
        "198.51.100.23",
        "curl/8",
    ] {
        assert!(!dump.contains(plain), "{plain} stored in the clear: {dump}");
    }
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_copy_of_the_file_and_key_yields_no_usable_token() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("carol"))
        .await
        .unwrap();
    let db = vault.path().to_owned();
    vault.close().await.unwrap();

    let copy = dir.path().join("stolen.db");
    std::fs::copy(&db, &copy).unwrap();
    std::fs::copy(
        statevault::default_key_file(&db),
        statevault::default_key_file(&copy),
    )
    .unwrap();
    let (options, _) = common::options(dir.path(), "stolen.db");
    let thief = Vault::open(options).await.unwrap();
    let stored = thief
        .query_read_only("SELECT id, hex(token_hash), hex(csrf_hash) FROM sessions")
        .await
        .unwrap()
        .rows;
    for value in &stored[0] {
        let guess = value.as_str().unwrap();
        for attempt in [guess.to_owned(), guess.to_lowercase()] {
            let outcome = thief.sessions().validate(&attempt, None).await.unwrap();
            assert!(
                matches!(outcome, Validation::Unknown),
                "{attempt} -> {outcome:?}"
            );
        }
    }
    // The real token still works on the copy: the row is intact, just not reversible.
    assert!(is_live(&thief, issued.token.expose()).await);
    thief.close().await.unwrap();
}

#[tokio::test]
async fn idle_expiry_is_exact_and_use_extends_it() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let token = vault
        .sessions()
        .create(NewSession::new("dave"))
        .await
        .unwrap()
        .token;
    let sessions = vault.sessions();

    clock.advance(2 * HOUR - Duration::from_millis(1));
    assert!(
        sessions
            .validate(token.expose(), None)
            .await
            .unwrap()
            .valid()
            .is_some(),
        "1 ms before idle expiry"
    );
    // That use moved the idle deadline.
    clock.advance(2 * HOUR - Duration::from_millis(1));
    assert!(
        sessions
            .validate(token.expose(), None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    clock.advance(2 * HOUR);
    match sessions.validate(token.expose(), None).await.unwrap() {
        Validation::Expired { reason, .. } => assert_eq!(reason, ExpiryReason::Idle),
        other => panic!("expected idle expiry, got {other:?}"),
    }
    vault.close().await.unwrap();
}

#[tokio::test]
async fn absolute_expiry_ends_even_a_busy_session() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let token = vault
        .sessions()
        .create(NewSession::new("erin"))
        .await
        .unwrap()
        .token;
    for _ in 0..47 {
        clock.advance(HOUR);
        assert!(is_live(&vault, token.expose()).await);
    }
    clock.advance(HOUR);
    match vault
        .sessions()
        .validate(token.expose(), None)
        .await
        .unwrap()
    {
        Validation::Expired { reason, .. } => assert_eq!(reason, ExpiryReason::Absolute),
        other => panic!("expected absolute expiry, got {other:?}"),
    }
    vault.close().await.unwrap();
}

#[tokio::test]
async fn per_session_lifetimes_override_the_config() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let token = vault
        .sessions()
        .create(NewSession::new("frank").idle_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .token;
    clock.advance(Duration::from_secs(61));
    assert!(matches!(
        vault
            .sessions()
            .validate(token.expose(), None)
            .await
            .unwrap(),
        Validation::Expired {
            reason: ExpiryReason::Idle,
            ..
        }
    ));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn last_seen_is_buffered_then_flushed_and_survives_reopening() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let token = vault
        .sessions()
        .create(NewSession::new("gina"))
        .await
        .unwrap()
        .token;
    let stored = || async {
        vault
            .query_read_only("SELECT last_seen_at FROM sessions")
            .await
            .unwrap()
            .rows[0][0]
            .clone()
    };
    let created = stored().await;
    clock.advance(HOUR);
    for _ in 0..100 {
        assert!(is_live(&vault, token.expose()).await);
    }
    assert_eq!(
        stored().await,
        created,
        "validation writes nothing by itself"
    );
    vault.flush().await.unwrap();
    let touched = stored().await;
    assert_eq!(touched, clock_text(&clock));
    let path = vault.path().to_owned();
    vault.close().await.unwrap();

    // A new process: idle expiry counts from the flushed last-seen time.
    clock.advance(2 * HOUR - Duration::from_secs(1));
    let vault = Vault::open(
        VaultOptions::new(&path)
            .clock(clock.clone())
            .sessions(config()),
    )
    .await
    .unwrap();
    assert!(is_live(&vault, token.expose()).await);
    vault.close().await.unwrap();
}

fn clock_text(clock: &FakeClock) -> String {
    use statevault::Clock;
    clock.now().to_rfc3339()
}

#[tokio::test]
async fn rotation_is_due_after_a_day_and_kills_the_old_token() {
    let dir = tempdir();
    let mut config = config();
    config.idle_timeout = 48 * HOUR;
    config.absolute_lifetime = 96 * HOUR;
    let (vault, clock) = open(dir.path(), config).await;
    let sessions = vault.sessions();
    let first = sessions
        .create(NewSession::new("hank").data(&upstream()).unwrap())
        .await
        .unwrap();

    clock.advance(24 * HOUR - Duration::from_secs(1));
    assert!(
        !sessions
            .validate(first.token.expose(), None)
            .await
            .unwrap()
            .valid()
            .unwrap()
            .rotation_due
    );
    clock.advance(Duration::from_secs(1));
    assert!(
        sessions
            .validate(first.token.expose(), None)
            .await
            .unwrap()
            .valid()
            .unwrap()
            .rotation_due
    );

    let rotated = sessions.rotate(first.token.expose(), None).await.unwrap();
    assert_eq!(rotated.id, first.id);
    assert_eq!(
        rotated.expires_at, first.expires_at,
        "rotation keeps the absolute lifetime"
    );
    assert!(matches!(
        sessions.validate(first.token.expose(), None).await.unwrap(),
        Validation::Unknown
    ));
    let session = sessions
        .validate(rotated.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert!(!session.rotation_due);
    assert_eq!(session.data::<Upstream>().unwrap(), upstream());
    assert!(session.verify_csrf(rotated.csrf_token.expose()));
    assert!(
        !session.verify_csrf(first.csrf_token.expose()),
        "the CSRF token rotates too"
    );

    let err = sessions
        .rotate(first.token.expose(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionNotValid {
                reason: "unknown token"
            }
        ),
        "{err:?}"
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn regenerate_after_login_gives_a_new_id_and_revokes_the_old() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let sessions = vault.sessions();
    let before = sessions
        .create(NewSession::new("ivy").data(&upstream()).unwrap())
        .await
        .unwrap();
    clock.advance(HOUR);
    let after = sessions
        .regenerate(before.token.expose(), None)
        .await
        .unwrap();
    assert_ne!(after.id, before.id);
    assert!(after.expires_at > before.expires_at, "fresh lifetimes");
    match sessions
        .validate(before.token.expose(), None)
        .await
        .unwrap()
    {
        Validation::Revoked { reason, session_id } => {
            assert_eq!(reason, "regenerated");
            assert_eq!(session_id, before.id);
        }
        other => panic!("{other:?}"),
    }
    let session = sessions
        .validate(after.token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.user_id, "ivy");
    assert_eq!(session.data::<Upstream>().unwrap(), upstream());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn revoke_one_revoke_all_and_list() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let sessions = vault.sessions();
    let a = sessions.create(NewSession::new("jane")).await.unwrap();
    let b = sessions.create(NewSession::new("jane")).await.unwrap();
    let other = sessions.create(NewSession::new("kurt")).await.unwrap();
    let listed: Vec<_> = sessions
        .list("jane")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [a.id.clone(), b.id.clone()]);

    assert!(sessions.revoke(&a.id).await.unwrap());
    assert!(!sessions.revoke(&a.id).await.unwrap(), "already revoked");
    assert!(matches!(
        sessions.validate(a.token.expose(), None).await.unwrap(),
        Validation::Revoked { .. }
    ));
    assert_eq!(sessions.list("jane").await.unwrap().len(), 1);

    assert_eq!(sessions.revoke_user("jane").await.unwrap(), 1);
    match sessions.validate(b.token.expose(), None).await.unwrap() {
        Validation::Revoked { reason, .. } => assert_eq!(reason, "logout_all"),
        other => panic!("{other:?}"),
    }
    assert!(sessions.list("jane").await.unwrap().is_empty());
    assert!(
        sessions
            .validate(other.token.expose(), None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn the_cap_evicts_the_oldest() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let sessions = vault.sessions();
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(sessions.create(NewSession::new("lena")).await.unwrap());
        clock.advance(Duration::from_secs(1));
    }
    let fourth = sessions.create(NewSession::new("lena")).await.unwrap();
    assert_eq!(fourth.evicted, [issued[0].id.clone()]);
    match sessions
        .validate(issued[0].token.expose(), None)
        .await
        .unwrap()
    {
        Validation::Revoked { reason, .. } => assert_eq!(reason, "evicted"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sessions.list("lena").await.unwrap().len(), 3);

    // Expired sessions do not count against the cap.
    clock.advance(3 * HOUR);
    let fresh = sessions.create(NewSession::new("lena")).await.unwrap();
    assert!(fresh.evicted.is_empty());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn the_cap_refuses_when_told_to() {
    let dir = tempdir();
    let mut config = config();
    config.when_full = WhenFull::Refuse;
    config.max_per_user = 2;
    let (vault, _clock) = open(dir.path(), config).await;
    vault
        .sessions()
        .create(NewSession::new("mona"))
        .await
        .unwrap();
    vault
        .sessions()
        .create(NewSession::new("mona"))
        .await
        .unwrap();
    let err = vault
        .sessions()
        .create(NewSession::new("mona"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionLimit { max: 2, .. }), "{err:?}");
    assert_eq!(vault.sessions().list("mona").await.unwrap().len(), 2);
    vault.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_under_concurrent_creates() {
    for when_full in [WhenFull::EvictOldest, WhenFull::Refuse] {
        let dir = tempdir();
        let mut config = config();
        config.when_full = when_full;
        let (vault, _clock) = open(dir.path(), config).await;
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let vault = vault.clone();
                tokio::spawn(async move { vault.sessions().create(NewSession::new("nico")).await })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => created += 1,
                Err(Error::SessionLimit { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        let live = vault.sessions().list("nico").await.unwrap().len();
        assert_eq!(live, 3, "{when_full:?}");
        assert_eq!(created, if when_full == WhenFull::Refuse { 3 } else { 24 });
        vault.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_bound_session_wants_its_device() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("olga").device_fingerprint("laptop-1"))
        .await
        .unwrap();
    let token = issued.token.expose();
    let session = vault
        .sessions()
        .validate(token, Some("laptop-1"))
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert!(session.device_bound);
    for wrong in [Some("phone-9"), None] {
        match vault.sessions().validate(token, wrong).await.unwrap() {
            Validation::FingerprintMismatch {
                user_id,
                session_id,
            } => {
                assert_eq!(user_id, "olga");
                assert_eq!(session_id, issued.id);
            }
            other => panic!("{wrong:?}: {other:?}"),
        }
    }
    assert!(matches!(
        vault.sessions().rotate(token, Some("phone-9")).await,
        Err(Error::SessionNotValid {
            reason: "device fingerprint mismatch"
        })
    ));
    vault.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_validation_never_accepts_a_rotated_token() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("pia"))
        .await
        .unwrap();
    let old = Arc::new(issued.token.expose().to_owned());
    let rotated = Arc::new(AtomicBool::new(false));
    let validators: Vec<_> = (0..8)
        .map(|_| {
            let (vault, old, rotated) = (vault.clone(), old.clone(), rotated.clone());
            tokio::spawn(async move {
                let mut after = 0;
                while after < 200 {
                    let was_rotated = rotated.load(Ordering::SeqCst);
                    let outcome = vault.sessions().validate(&old, None).await.unwrap();
                    if was_rotated {
                        assert!(
                            matches!(outcome, Validation::Unknown),
                            "old token accepted after rotation"
                        );
                        after += 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let new = vault.sessions().rotate(&old, None).await.unwrap();
    rotated.store(true, Ordering::SeqCst);
    for v in validators {
        v.await.unwrap();
    }
    assert!(is_live(&vault, new.token.expose()).await);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn another_handles_revocation_is_seen_at_once_and_a_hand_edit_within_memory_ttl() {
    let dir = tempdir();
    let (server, clock) = open(dir.path(), config()).await;
    let create = async || {
        server
            .sessions()
            .create(NewSession::new("quin"))
            .await
            .unwrap()
    };
    let (first, second) = (create().await, create().await);
    assert!(is_live(&server, first.token.expose()).await);
    assert!(is_live(&server, second.token.expose()).await);
    let validate = async |token: &str| server.sessions().validate(token, None).await.unwrap();

    // A second handle on the same file, like the CLI in another process: its
    // revocation reaches the server's memory through the change feed.
    let admin = Vault::open(VaultOptions::new(server.path()).clock(clock.clone()))
        .await
        .unwrap();
    assert!(admin.sessions().revoke(&first.id).await.unwrap());
    admin.close().await.unwrap();
    let outcome = validate(first.token.expose()).await;
    assert!(
        matches!(outcome, Validation::Revoked { .. }),
        "served from memory after another handle revoked it: {outcome:?}"
    );

    // A change made by hand publishes nothing: memory serves the row it
    // read until `memory_ttl` (1 s) has passed.
    common::raw_connection(server.path())
        .execute(
            "UPDATE sessions SET revoked_at = created_at, revoked_reason = 'by hand' WHERE id = ?1",
            [&second.id],
        )
        .unwrap();
    assert!(matches!(
        validate(second.token.expose()).await,
        Validation::Valid(_)
    ));
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        validate(second.token.expose()).await,
        Validation::Revoked { .. }
    ));
    server.close().await.unwrap();
}

#[tokio::test]
async fn session_data_can_be_replaced() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let token = vault
        .sessions()
        .create(NewSession::new("rita"))
        .await
        .unwrap()
        .token;
    vault
        .sessions()
        .set_data(token.expose(), &upstream())
        .await
        .unwrap();
    let session = vault
        .sessions()
        .validate(token.expose(), None)
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.data::<Upstream>().unwrap(), upstream());
    assert!(matches!(
        vault.sessions().set_data("nope", &upstream()).await,
        Err(Error::SessionNotValid { .. })
    ));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn sweep_removes_sessions_idle_past_retention() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let sessions = vault.sessions();
    for i in 0..7 {
        sessions
            .create(NewSession::new(format!("old-{i}")))
            .await
            .unwrap();
    }
    clock.advance(29 * 24 * HOUR);
    let recent = sessions.create(NewSession::new("recent")).await.unwrap();
    clock.advance(2 * 24 * HOUR);
    assert_eq!(sessions.sweep(3).await.unwrap(), 7, "in batches of 3");
    let left = vault
        .query_read_only("SELECT id FROM sessions")
        .await
        .unwrap()
        .rows;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0][0], recent.id.as_str());
    assert!(matches!(
        sessions.sweep(0).await,
        Err(Error::InvalidInput { .. })
    ));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let sessions = vault.sessions();
    let big = "x".repeat(70 << 10);
    for new in [
        NewSession::new(""),
        NewSession::new("u".repeat(300)),
        NewSession::new("sam").idle_timeout(Duration::ZERO),
        NewSession::new("sam").absolute_lifetime(Duration::from_secs(100 * 365 * 24 * 3600)),
        NewSession::new("sam").data(&big).unwrap(),
    ] {
        let err = sessions.create(new).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    assert_eq!(
        vault
            .query_read_only("SELECT count(*) FROM sessions")
            .await
            .unwrap()
            .rows[0][0],
        0
    );
    vault.close().await.unwrap();

    let mut absurd = SessionConfig::default();
    absurd.max_per_user = 0;
    let (options, _) = common::options(dir.path(), "other.db");
    assert!(matches!(
        Vault::open(options.sessions(absurd)).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn session_data_too_deep_to_read_back_is_refused() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let sessions = vault.sessions();
    let ok = sessions
        .create(
            statevault::NewSession::new("u1")
                .data(&common::nested(64))
                .unwrap(),
        )
        .await
        .unwrap();
    let live = sessions.validate(ok.token.expose(), None).await.unwrap();
    assert!(matches!(live, statevault::Validation::Valid(_)));
    for levels in [65, 200] {
        let deep = statevault::NewSession::new("u2")
            .data(&common::nested(levels))
            .unwrap();
        let err = sessions.create(deep).await.unwrap_err();
        assert!(
            matches!(err, statevault::Error::InvalidInput { what: "data", .. }),
            "{levels}: {err:?}"
        );
        let err = sessions
            .set_data(ok.token.expose(), &common::nested(levels))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
    assert!(sessions.list("u2").await.unwrap().is_empty());
    vault.export_user("u1").await.expect("still exportable");
    vault.close().await.unwrap();
}

/// A session whose stored device hash cannot be read (not 32 bytes) stays
/// bound: no fingerprint, right or absent, validates it. It used to read as
/// "not device-bound" and let any device in.
#[tokio::test]
async fn an_unreadable_device_binding_fails_closed() {
    let dir = tempdir();
    let (vault, _clock) = open(dir.path(), config()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("alice").device_fingerprint("laptop"))
        .await
        .unwrap();
    let db = vault.path().to_owned();
    vault.close().await.unwrap();
    common::raw_connection(&db)
        .execute(
            "UPDATE sessions SET device_fingerprint = x'0102' WHERE id = ?1",
            [&issued.id],
        )
        .unwrap();

    let (vault, _clock) = open(dir.path(), config()).await;
    for presented in [None, Some("laptop"), Some("")] {
        let answer = vault
            .sessions()
            .validate(issued.token.expose(), presented)
            .await
            .unwrap();
        assert!(
            matches!(answer, Validation::FingerprintMismatch { .. }),
            "{presented:?}: {answer:?}"
        );
    }
    vault.close().await.unwrap();
}

/// The live count behind `/metrics` (`Metrics::active_sessions`) follows
/// creation, revocation, idle and absolute expiry on the fake clock, and
/// SQLite answers it from the `sessions_live` index alone: revoked and
/// expired rows, kept until the retention sweep, are never read (it scanned
/// the whole table on every scrape).
#[tokio::test]
async fn the_live_count_reads_only_the_live_index() {
    let dir = tempdir();
    let (vault, clock) = open(dir.path(), config()).await;
    let live = || async { vault.metrics().active_sessions().await.unwrap() };
    let plan = vault
        .query_read_only(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM sessions
             WHERE revoked_at IS NULL AND expires_at > '2026-11-29T00:00:00.000Z'
               AND unixepoch(last_seen_at, 'subsec') + idle_timeout_secs
                   > unixepoch('2026-11-29T00:00:00.000Z', 'subsec')",
        )
        .await
        .unwrap();
    let plan = format!("{:?}", plan.rows);
    assert!(
        plan.contains("USING COVERING INDEX sessions_live"),
        "{plan}"
    );

    assert_eq!(live().await, 0);
    let s = vault.sessions();
    let short = s
        .create(NewSession::new("u1").absolute_lifetime(3 * HOUR))
        .await
        .unwrap();
    let revoked = s.create(NewSession::new("u2")).await.unwrap();
    let idle = s.create(NewSession::new("u3")).await.unwrap();
    let busy = s.create(NewSession::new("u4")).await.unwrap();
    assert_eq!(live().await, 4);
    assert!(s.revoke(&revoked.id).await.unwrap());
    assert_eq!(live().await, 3);

    // busy is used every hour (and its last-seen time written); idle is not.
    for _ in 0..3 {
        clock.advance(HOUR);
        assert!(is_live(&vault, busy.token.expose()).await);
        vault.flush().await.unwrap();
    }
    // 3 h: short is past its absolute expiry, idle past its idle timeout.
    assert_eq!(live().await, 1);
    assert!(!is_live(&vault, short.token.expose()).await);
    assert!(!is_live(&vault, idle.token.expose()).await);

    clock.advance(48 * HOUR);
    assert_eq!(live().await, 0);
    vault.close().await.unwrap();
}

/// A token an older version issued (64 hex digits, stored under its
/// SHA-256) keeps working: it validates, rotates into a token of today's
/// shape (its issue time first), and the old one is dead after.
#[tokio::test]
async fn a_token_an_older_version_issued_still_works() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("old"))
        .await
        .unwrap();
    let old_token = "ab".repeat(32);
    let conn = common::raw_connection(&dir.path().join("vault.db"));
    let old_hash: [u8; 32] = Sha256::digest(old_token.as_bytes()).into();
    conn.execute(
        "UPDATE sessions SET token_hash = ?1 WHERE id = ?2",
        rusqlite::params![&old_hash[..], issued.id],
    )
    .unwrap();
    drop(conn);
    let sessions = vault.sessions();
    let session = sessions.validate(&old_token, None).await.unwrap();
    assert_eq!(session.valid().unwrap().id, issued.id);
    let rotated = sessions.rotate(&old_token, None).await.unwrap();
    assert_eq!(rotated.token.expose().len(), 76);
    assert!(
        sessions
            .validate(rotated.token.expose(), None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    assert!(
        sessions
            .validate(&old_token, None)
            .await
            .unwrap()
            .valid()
            .is_none()
    );
    vault.close().await.unwrap();
}

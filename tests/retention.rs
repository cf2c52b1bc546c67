//! Retention across the vault: `sweep` removes what each facet's rules say
//! and keeps the rest, on a fake clock.

mod common;

use std::time::Duration;

use statevault::{AuditEvent, ClientInfo, EventKind, NewSession, Vault, VaultOptions};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn sweep_applies_every_facets_retention() {
    let dir = common::tempdir();
    let (options, clock) = common::options(dir.path(), "retention.db");
    let vault = Vault::open(options.sweep_interval(None)).await.unwrap();
    for i in 0..4 {
        vault
            .sessions()
            .create(NewSession::new(format!("old-{i}")))
            .await
            .unwrap();
        vault
            .audit()
            .append(AuditEvent::new(EventKind::Auth, "login").user(format!("old-{i}")))
            .unwrap();
        for _ in 0..7 {
            vault
                .limits()
                .check(&format!("old-{i}"), "auth_attempts", 1, &ClientInfo::none())
                .await
                .unwrap();
        }
    }
    let key = statevault::CacheKey::new("search", "old").unwrap();
    vault.cache().set(&key, b"results").await.unwrap();
    vault.flush().await.unwrap();
    clock.advance(100 * DAY);
    vault
        .sessions()
        .create(NewSession::new("recent"))
        .await
        .unwrap();
    vault
        .audit()
        .append(AuditEvent::new(EventKind::Auth, "login").user("recent"))
        .unwrap();

    let report = vault.sweep().await.unwrap();
    assert_eq!(report.removed["sessions"], 4);
    assert_eq!(report.removed["audit_events"], 4);
    // The sixth attempt is the violation; the seventh falls in its penalty.
    assert_eq!(
        report.removed["violations"], 4,
        "one per user, older than 7 days"
    );
    assert!(report.removed["token_buckets"] >= 4, "{report:?}");
    assert_eq!(report.removed["cache_entries"], 1, "expired after its TTL");
    let left = vault
        .query_read_only("SELECT user_id FROM sessions")
        .await
        .unwrap()
        .rows;
    assert_eq!(left.len(), 1);
    assert!(vault.audit().verify().await.unwrap().ok);
    assert!(vault.check().await.unwrap().ok());

    let again = vault.sweep().await.unwrap();
    assert!(again.removed.values().all(|n| *n == 0), "{again:?}");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_sweep_interval_under_a_second_is_refused() {
    let dir = common::tempdir();
    let options =
        VaultOptions::new(dir.path().join("x.db")).sweep_interval(Some(Duration::from_millis(10)));
    assert!(matches!(
        Vault::open(options).await,
        Err(statevault::Error::InvalidInput { .. })
    ));
}

/// A file from before `sessions_expires` was dropped (its index back, its
/// migration unrecorded) migrates, and its sessions still validate.
#[tokio::test]
async fn a_file_with_the_expiry_index_migrates_and_keeps_its_sessions() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "old.db");
    let vault = Vault::open(options.clone().sweep_interval(None))
        .await
        .unwrap();
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    vault.close().await.unwrap();
    let path = dir.path().join("old.db");
    common::raw_connection(&path)
        .execute_batch(
            "CREATE INDEX sessions_expires ON sessions (expires_at);
             DELETE FROM _sqlx_migrations WHERE version = 20261201000001;",
        )
        .unwrap();

    let vault = Vault::open(options.sweep_interval(None)).await.unwrap();
    assert!(
        vault
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    let index = vault
        .query_read_only("SELECT count(*) FROM sqlite_schema WHERE name = 'sessions_expires'")
        .await
        .unwrap();
    assert_eq!(index.rows[0][0], serde_json::json!(0));
    assert!(matches!(
        vault
            .sessions()
            .validate(issued.token.expose(), None)
            .await
            .unwrap(),
        statevault::Validation::Valid(_)
    ));
    vault.close().await.unwrap();
}

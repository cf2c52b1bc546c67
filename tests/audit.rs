//! The audit log: the chain verifies after appends, retention and erasure,
//! and any edit, deletion or reordering made through SQL is detected.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{raw_connection, tempdir};
use serde_json::json;
use statevault::{
    AuditEvent, AuditQuery, ChainReport, Error, EventKind, GdprCategory, Vault, VaultOptions,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::ApiCall, "search")
        .user(if i.is_multiple_of(2) { "alice" } else { "bob" })
        .session(format!("s-{i}"))
        .resource("query", format!("q-{i}"))
        .details(json!({"i": i, "status": 200}))
        .client_ip("203.0.113.7")
        .user_agent("Mozilla/5.0")
}

/// A closed vault holding `n` events.
async fn log_of(dir: &Path, n: usize) -> PathBuf {
    let (vault, _clock) = common::vault(dir).await;
    for i in 0..n {
        vault.audit().append(event(i)).unwrap();
    }
    let path = vault.path().to_owned();
    vault.close().await.unwrap();
    path
}

async fn verify(path: &Path) -> ChainReport {
    let vault = Vault::open(VaultOptions::new(path)).await.unwrap();
    let report = vault.audit().verify().await.unwrap();
    vault.close().await.unwrap();
    report
}

#[tokio::test]
async fn appends_are_buffered_then_chained_in_order() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let ids: Vec<_> = (0..25)
        .map(|i| vault.audit().append(event(i)).unwrap())
        .collect();
    let stored = || async {
        vault
            .query_read_only("SELECT count(*) FROM audit_events")
            .await
            .unwrap()
            .rows[0][0]
            .clone()
    };
    assert_eq!(stored().await, 0, "append only buffers");
    vault.flush().await.unwrap();
    assert_eq!(stored().await, 25, "one flush writes them all");
    let tail = vault.audit().tail(25).await.unwrap();
    let seqs: Vec<i64> = tail.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    let tail_ids: Vec<String> = tail.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        tail_ids,
        ids.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        "seq follows append order"
    );
    assert_eq!(
        uuid::Uuid::parse_str(&tail[0].id)
            .unwrap()
            .get_version_num(),
        7
    );

    let report = vault.audit().verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(
        (report.events, report.first_seq, report.last_seq),
        (25, Some(1), Some(25))
    );
    assert_eq!(report.head_digest.as_ref().unwrap().len(), 64);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_durable_append_is_committed_when_it_returns() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    vault.audit().append(event(0)).unwrap();
    let id = vault
        .audit()
        .append_durable(AuditEvent::new(EventKind::Admin, "key.rotate"))
        .await
        .unwrap();
    // Another connection, outside statevault, sees both.
    let conn = raw_connection(vault.path());
    let n: i64 = conn
        .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    let last: String = conn
        .query_row("SELECT id FROM audit_events WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(last, id.to_string());
    drop(conn);
    let sync = vault
        .query_read_only("PRAGMA synchronous")
        .await
        .unwrap()
        .rows[0][0]
        .clone();
    assert_eq!(sync, 1, "connections are back to NORMAL afterwards");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn personal_data_is_stored_as_keyed_hashes() {
    let dir = tempdir();
    let path = log_of(dir.path(), 1).await;
    let conn = raw_connection(&path);
    let (ip, ua): (Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT ip_hash, user_agent_hash FROM audit_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    use sha2::Digest;
    assert_eq!(ip.len(), 32);
    assert_ne!(
        ip,
        sha2::Sha256::digest(b"203.0.113.7").to_vec(),
        "not a bare SHA of the IP"
    );
    assert_ne!(ip, ua);
}

/// Each way of tampering, on a fresh copy of the same 20-event log.
#[tokio::test]
async fn any_edit_deletion_or_reordering_through_sql_is_detected() {
    let dir = tempdir();
    let base = log_of(dir.path(), 20).await;
    assert!(verify(&base).await.ok);
    let tamperings: [(&str, &str, i64); 11] = [
        ("edit details", "UPDATE audit_events SET details = '{\"i\": 999}' WHERE seq = 7", 7),
        ("edit user", "UPDATE audit_events SET user_id = 'mallory' WHERE seq = 3", 3),
        ("edit time", "UPDATE audit_events SET occurred_at = '2020-01-01T00:00:00.000Z' WHERE seq = 12", 12),
        ("edit action", "UPDATE audit_events SET action = 'nothing' WHERE seq = 1", 1),
        ("edit ip hash", "UPDATE audit_events SET ip_hash = NULL WHERE seq = 5", 5),
        ("edit digest", "UPDATE audit_events SET content_digest = zeroblob(32) WHERE seq = 9", 9),
        ("delete a row", "DELETE FROM audit_events WHERE seq = 10", 11),
        (
            "swap two rows",
            "UPDATE audit_events SET seq = -4 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = 5;
             UPDATE audit_events SET seq = 5 WHERE seq = -4;",
            4,
        ),
        ("cut the end", "DELETE FROM audit_events WHERE seq >= 18", 17),
        ("cut the start", "DELETE FROM audit_events WHERE seq <= 2", 3),
        (
            "forge a tombstone",
            "UPDATE audit_events SET user_id = NULL, details = '{}', erased_at = '2026-01-02T00:00:00.000Z' WHERE seq = 6",
            6,
        ),
    ];
    for (what, sql, at) in tamperings {
        let copy = dir.path().join(format!("{}.db", what.replace(' ', "_")));
        std::fs::copy(&base, &copy).unwrap();
        std::fs::copy(
            statevault::default_key_file(&base),
            statevault::default_key_file(&copy),
        )
        .unwrap();
        raw_connection(&copy).execute_batch(sql).unwrap();
        let report = verify(&copy).await;
        assert!(!report.ok, "{what} was not detected");
        let broken = report.broken.unwrap();
        assert_eq!(broken.seq, at, "{what}: {}", broken.reason);
    }
}

#[tokio::test]
async fn retention_keeps_the_chain_verifiable() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    for i in 0..10 {
        vault.audit().append(event(i)).unwrap();
    }
    vault.flush().await.unwrap();
    clock.advance(91 * DAY);
    for i in 10..15 {
        vault.audit().append(event(i)).unwrap();
    }
    assert_eq!(vault.audit().sweep(3).await.unwrap(), 10, "in batches of 3");
    let report = vault.audit().verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.first_seq, Some(11));
    let retention = vault
        .audit()
        .query(&AuditQuery {
            action: Some("retention".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(retention.len(), 4, "one retention event per batch");
    assert_eq!(retention[0].details["removed_through_seq"], 10);
    let path = vault.path().to_owned();
    vault.close().await.unwrap();

    // Cutting more from the start than retention did is detected.
    raw_connection(&path)
        .execute_batch("DELETE FROM audit_events WHERE seq = 11")
        .unwrap();
    let report = verify(&path).await;
    assert!(!report.ok);
    assert_eq!(report.broken.unwrap().seq, 12);
}

#[tokio::test]
async fn a_moved_anchor_is_detected() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    for i in 0..6 {
        vault.audit().append(event(i)).unwrap();
    }
    vault.flush().await.unwrap();
    clock.advance(91 * DAY);
    vault.audit().append(event(6)).unwrap();
    vault.audit().sweep(100).await.unwrap();
    let path = vault.path().to_owned();
    vault.close().await.unwrap();
    raw_connection(&path)
        .execute_batch(&format!(
            "UPDATE vault_meta SET value = '6 {}' WHERE key = 'audit_anchor'",
            "00".repeat(32)
        ))
        .unwrap();
    assert!(!verify(&path).await.ok);
}

#[tokio::test]
async fn erasure_empties_events_and_keeps_the_chain() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    for i in 0..10 {
        vault.audit().append(event(i)).unwrap();
    }
    let report = vault.erase_user("alice").await.unwrap();
    assert_eq!(report.rows["audit_events"], 5);
    let chain = vault.audit().verify().await.unwrap();
    assert!(chain.ok, "{chain:?}");
    assert_eq!(chain.erased, 5);
    assert_eq!(chain.events, 11, "ten events and the erasure event");

    let dump = vault
        .query_read_only("SELECT user_id, session_id, resource_id, details, ip_hash, erased_at FROM audit_events WHERE seq % 2 = 1 AND seq <= 10")
        .await
        .unwrap()
        .rows;
    for row in &dump {
        assert_eq!(
            row[..3],
            [
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null
            ]
        );
        assert_eq!(row[3], "{}");
        assert_eq!(row[4], serde_json::Value::Null);
        assert!(row[5].is_string());
    }
    let erasure = vault.audit().tail(1).await.unwrap().remove(0);
    assert_eq!(
        (erasure.kind.as_str(), erasure.action.as_str()),
        ("admin", "erasure")
    );
    assert_eq!(erasure.details["erased_seqs"], json!([1, 3, 5, 7, 9]));
    assert!(
        !erasure.details.to_string().contains("alice"),
        "{}",
        erasure.details
    );
    assert!(erasure.user_id.is_none());
    assert!(vault.audit().export_user("alice").await.unwrap().is_empty());
    assert_eq!(vault.audit().export_user("bob").await.unwrap().len(), 5);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn query_filters_by_user_kind_action_and_time() {
    let dir = tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let start = vault.now();
    for i in 0..6 {
        vault.audit().append(event(i)).unwrap();
        clock.advance(Duration::from_secs(60));
    }
    vault
        .audit()
        .append(
            AuditEvent::new(EventKind::Consent, "analytics.granted")
                .user("alice")
                .category(GdprCategory::Analytics),
        )
        .unwrap();
    let audit = &vault.audit();
    let by = |q: AuditQuery| async move { audit.query(&q).await.unwrap() };
    let alice = by(AuditQuery {
        user_id: Some("alice".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(alice.len(), 4);
    assert_eq!(alice[0].action, "analytics.granted", "newest first");
    assert_eq!(alice[0].gdpr_category, "analytics");
    let consent = by(AuditQuery {
        kind: Some(EventKind::Consent),
        ..Default::default()
    })
    .await;
    assert_eq!(consent.len(), 1);
    let window = by(AuditQuery {
        since: Some(start.saturating_add(Duration::from_secs(60))),
        until: Some(start.saturating_add(Duration::from_secs(180))),
        action: Some("search".into()),
        limit: Some(10),
        ..Default::default()
    })
    .await;
    assert_eq!(
        window
            .iter()
            .map(|e| e.details["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(
        by(AuditQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .len(),
        2
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn bad_events_are_typed_errors() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let audit = vault.audit();
    assert!(matches!(
        audit.append(AuditEvent::new(EventKind::Auth, "")),
        Err(Error::InvalidInput { .. })
    ));
    let huge = AuditEvent::new(EventKind::Auth, "x").details(json!({"blob": "y".repeat(70 << 10)}));
    assert!(matches!(
        audit.append(huge),
        Err(Error::InvalidInput { .. })
    ));
    let none = AuditQuery {
        limit: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        audit.query(&none).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(vault.audit().verify().await.unwrap().ok);
    vault.close().await.unwrap();
}

/// Regression: `verify` read the recorded head and the rows in two read
/// transactions, so an append committed between them (by another handle or
/// process) was reported as events cut from the end of the log. Found by
/// tests/soak.rs, where `statevault audit verify` runs beside two servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_beside_a_writer_in_another_handle_sees_one_snapshot() {
    let dir = tempdir();
    let path = log_of(dir.path(), 10).await;
    let writer = Vault::open(VaultOptions::new(&path)).await.unwrap();
    let reader = Vault::open(VaultOptions::new(&path)).await.unwrap();
    let appending = tokio::spawn({
        let writer = writer.clone();
        async move {
            for i in 0..300 {
                writer.audit().append_durable(event(i)).await.unwrap();
            }
        }
    });
    let mut verified = 0;
    while !appending.is_finished() {
        let report = reader.audit().verify().await.unwrap();
        assert!(report.ok, "after {verified} verifications: {report:?}");
        verified += 1;
    }
    appending.await.unwrap();
    assert!(verified > 0);
    writer.close().await.unwrap();
    reader.close().await.unwrap();
}

#[tokio::test]
async fn details_too_deep_to_read_back_are_refused() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    for levels in [65, 200] {
        let event = AuditEvent::new(EventKind::DataAccess, "deep").details(common::nested(levels));
        let err = vault.audit().append(event).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{levels}: {err}");
    }
    vault
        .audit()
        .append(AuditEvent::new(EventKind::DataAccess, "ok").details(common::nested(64)))
        .unwrap();
    vault.flush().await.unwrap();
    assert_eq!(vault.audit().tail(10).await.unwrap().len(), 1);
    assert!(vault.audit().verify().await.unwrap().ok);
    vault.close().await.unwrap();
}

/// How many stored events have this action.
fn count_action(db: &Path, action: &str) -> i64 {
    raw_connection(db)
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action = ?1",
            [action],
            |r| r.get(0),
        )
        .unwrap()
}

/// `append_durable` answers for its event: an error means the event is not
/// in the file and will not be written later, so a caller who retries gets
/// it once. Plain events of the same failed batch stay buffered and are
/// written by the next flush. (The event used to stay buffered after the
/// error and be written by the next flush: a retry recorded it twice.)
#[tokio::test]
async fn a_failed_durable_append_is_never_written_later() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let db = vault.path().to_owned();
    raw_connection(&db)
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.action = 'pay'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    vault
        .audit()
        .append(AuditEvent::new(EventKind::ApiCall, "plain"))
        .unwrap();
    let err = vault
        .audit()
        .append_durable(AuditEvent::new(EventKind::Admin, "pay"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    raw_connection(&db)
        .execute_batch("DROP TRIGGER refuse;")
        .unwrap();
    vault.flush().await.unwrap();
    assert_eq!(count_action(&db, "pay"), 0, "the refused event stays out");
    assert_eq!(count_action(&db, "plain"), 1, "the plain event is kept");

    vault
        .audit()
        .append_durable(AuditEvent::new(EventKind::Admin, "pay"))
        .await
        .unwrap();
    vault.flush().await.unwrap();
    assert_eq!(count_action(&db, "pay"), 1, "the retry is recorded once");
    assert!(vault.audit().verify().await.unwrap().ok);
    vault.close().await.unwrap();
}

/// Erasing a user writes what is buffered in its own transaction. When that
/// transaction rolls back, the buffered events go back to the buffer and
/// are written later (they used to be dropped with the rollback).
#[tokio::test]
async fn a_rolled_back_erasure_keeps_the_buffered_events() {
    let dir = tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let db = vault.path().to_owned();
    vault.audit().append(event(1)).unwrap();
    vault.flush().await.unwrap();
    vault
        .audit()
        .append(AuditEvent::new(EventKind::ApiCall, "buffered"))
        .unwrap();
    raw_connection(&db)
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON audit_events WHEN NEW.erased_at IS NOT NULL
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let err = vault.erase_user("bob").await.unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    raw_connection(&db)
        .execute_batch("DROP TRIGGER refuse;")
        .unwrap();
    vault.flush().await.unwrap();
    assert_eq!(count_action(&db, "buffered"), 1);
    assert_eq!(count_action(&db, "erasure"), 0);

    vault.erase_user("bob").await.unwrap();
    assert_eq!(count_action(&db, "erasure"), 1);
    assert!(vault.audit().verify().await.unwrap().ok);
    vault.close().await.unwrap();
}

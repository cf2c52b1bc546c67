//! The audit facet's contract, on every backend: one chain, verified by the
//! one verifier, across instances and retention.

use std::time::Duration;

use serde_json::json;
use statevault::{AuditConfig, AuditEvent, AuditQuery, EventKind, Vault};

use crate::{Backend, contract};

contract!(
    appends_query_tail_and_verify,
    three_instances_append_to_one_chain,
    retention_keeps_the_chain_verifiable,
    a_user_with_more_events_than_one_erasure_event_can_name_is_erased,
);

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(EventKind::ApiCall, "search")
        .user(if i.is_multiple_of(2) { "alice" } else { "bob" })
        .session(format!("s-{i}"))
        .resource("query", format!("q-{i}"))
        .details(json!({"i": i, "note": "ünïcode"}))
        .client_ip("203.0.113.7")
        .user_agent("Mozilla/5.0")
}

async fn appends_query_tail_and_verify(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let audit = t.vault.audit();
    let ids: Vec<_> = (0..10).map(|i| audit.append(event(i)).unwrap()).collect();
    let durable = audit
        .append_durable(AuditEvent::new(EventKind::Admin, "rekey"))
        .await
        .unwrap();
    let tail = audit.tail(11).await.unwrap();
    assert_eq!(tail.len(), 11);
    let mut expected: Vec<String> = ids
        .iter()
        .chain([&durable])
        .map(|id| id.to_string())
        .collect();
    let mut got: Vec<String> = tail.iter().map(|e| e.id.clone()).collect();
    assert!(tail.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    let first = tail.iter().find(|e| e.id == ids[0].to_string()).unwrap();
    assert_eq!(first.details, json!({"i": 0, "note": "ünïcode"}));
    let alice = audit
        .query(&AuditQuery {
            user_id: Some("alice".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 5);
    let admin = audit
        .query(&AuditQuery {
            kind: Some(EventKind::Admin),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(admin.len(), 1);
    assert_eq!(audit.export_user("bob").await.unwrap().len(), 5);
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 11);
    t.vault.close().await.unwrap();
}

async fn three_instances_append_to_one_chain(backend: Backend) {
    let Some(t) = backend.open(|o| o).await else {
        return;
    };
    let (b, c) = (t.another().await, t.another().await);
    let append = |vault: Vault, side: usize| async move {
        for i in 0..30 {
            vault.audit().append(event(side * 100 + i)).unwrap();
            if i % 7 == 0 {
                vault
                    .audit()
                    .append_durable(AuditEvent::new(EventKind::Auth, "login"))
                    .await
                    .unwrap();
            }
        }
        vault.flush().await.unwrap();
    };
    let (x, y, z) = tokio::join!(
        tokio::spawn(append(t.vault.clone(), 1)),
        tokio::spawn(append(b.clone(), 2)),
        tokio::spawn(append(c.clone(), 3)),
    );
    x.unwrap();
    y.unwrap();
    z.unwrap();
    for vault in [&t.vault, &b, &c] {
        let report = vault.audit().verify().await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events, 3 * (30 + 5));
        assert_eq!(report.first_seq, Some(1));
        assert_eq!(report.last_seq, Some(105));
    }
    b.close().await.unwrap();
    c.close().await.unwrap();
    t.vault.close().await.unwrap();
}

async fn retention_keeps_the_chain_verifiable(backend: Backend) {
    let config = || {
        let mut config = AuditConfig::default();
        config.retention = Duration::from_secs(3600);
        config
    };
    let Some(t) = backend.open(|o| o.audit(config())).await else {
        return;
    };
    let audit = t.vault.audit();
    for i in 0..20 {
        audit.append(event(i)).unwrap();
    }
    t.vault.flush().await.unwrap();
    t.clock.advance(Duration::from_secs(7200));
    for i in 20..25 {
        audit.append(event(i)).unwrap();
    }
    assert_eq!(audit.sweep(7).await.unwrap(), 20);
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    // Five new events and a retention event per batch of seven.
    assert_eq!(report.events, 5 + 3);
    let other = t.another().await;
    assert!(other.audit().verify().await.unwrap().ok);
    other.close().await.unwrap();
    t.vault.close().await.unwrap();
}

/// Erasing a user names every erased event in the erasure's audit events;
/// when they do not fit in one event's details (`max_details_bytes`), the
/// erasure writes several, each saying which part it is, and the chain
/// still verifies (it once refused to erase such a user at all).
async fn a_user_with_more_events_than_one_erasure_event_can_name_is_erased(backend: Backend) {
    let mut config = AuditConfig::default();
    config.max_details_bytes = 1024;
    let Some(t) = backend.open(|o| o.audit(config)).await else {
        return;
    };
    let audit = t.vault.audit();
    for i in 0..600 {
        audit
            .append(
                AuditEvent::new(EventKind::ApiCall, "search").user(if i % 3 == 0 {
                    "bob"
                } else {
                    "alice"
                }),
            )
            .unwrap();
    }
    let erased = t.vault.erase_user("alice").await.unwrap();
    assert_eq!(erased.rows["audit_events"], 400, "{erased:?}");
    let erasures: Vec<_> = audit
        .tail(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "erasure")
        .collect();
    assert!(erasures.len() > 1, "{erasures:?}");
    let mut named = 0;
    for (i, event) in erasures.iter().enumerate() {
        assert_eq!(
            event.details["part"],
            format!("{}/{}", i + 1, erasures.len())
        );
        named += event.details["erased_seqs"].as_array().unwrap().len();
    }
    assert_eq!(named, 400);
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.erased, 400);
    t.vault.close().await.unwrap();
}

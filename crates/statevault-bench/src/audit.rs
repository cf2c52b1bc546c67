//! `audit_append`: events appended with the hash chain and written by the
//! vault's group commit, beside rusqlite inserting the same rows with
//! SHA-256 digests in transactions of 1000, in the same run.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use statevault::{AuditEvent, EventKind, Result, Vault};

use crate::harness::{Budget, per_sec, raw_connection, workload};

const BATCH: u64 = 1000;

pub async fn append(dir: &Path, budget: Budget) -> Result<Value> {
    let vault = Vault::open(crate::harness::options(&dir.join("audit_append.db"))).await?;
    let started = Instant::now();
    let mut n = 0;
    while !budget.spent(started, n) {
        for i in n..n + BATCH {
            vault.audit().append(
                AuditEvent::new(EventKind::ApiCall, "search")
                    .user(format!("user-{}", i % 100))
                    .resource("query", i.to_string())
                    .details(json!({"status": 200, "ms": 12})),
            )?;
        }
        vault.flush().await?;
        n += BATCH;
    }
    let ours = per_sec(n, started.elapsed());
    let path = vault.path().to_owned();
    vault.close().await?;

    let mut conn = raw_connection(&path)?;
    let started = Instant::now();
    let mut m = 0;
    let mut prev = [0u8; 32];
    while !budget.spent(started, m) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit_events (seq, id, occurred_at, user_id, kind, action, resource_type, resource_id,
                     details, gdpr_category, content_digest, chain_digest)
                 VALUES (?1, ?2, '2026-11-23T00:00:00.000Z', ?3, 'api_call', 'search', 'query', ?4,
                     '{\"status\":200,\"ms\":12}', 'necessary', ?5, ?6)",
            )?;
            for i in m..m + BATCH {
                let seq = 1_000_000_000 + i as i64;
                let id = uuid::Uuid::now_v7().to_string();
                let user = format!("user-{}", i % 100);
                let content: [u8; 32] = Sha256::digest(format!("{id}{user}{i}").as_bytes()).into();
                let mut h = Sha256::new();
                h.update(prev);
                h.update(seq.to_be_bytes());
                h.update(content);
                prev = h.finalize().into();
                stmt.execute(rusqlite::params![
                    seq,
                    id,
                    user,
                    i.to_string(),
                    &content[..],
                    &prev[..]
                ])?;
            }
        }
        tx.commit()?;
        m += BATCH;
    }
    let limit = per_sec(m, started.elapsed());
    Ok(Value::Object(workload(
        ours,
        "rusqlite INSERT with SHA-256 chain, 1000 per transaction",
        limit,
    )))
}

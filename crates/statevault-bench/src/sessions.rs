//! `session_create` and `session_validate`, each beside rusqlite doing the
//! same SQL on the same kind of file (same SQLCipher, same key, WAL,
//! `synchronous=NORMAL`) in the same run.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use statevault::{Error, NewSession, Result, SessionConfig, Vault};

use crate::harness::{Budget, per_sec, raw_connection, workload};

/// Creating a session (one transaction: cap check + insert) vs rusqlite
/// inserting the same row in its own transaction.
pub async fn create(dir: &Path, budget: Budget) -> Result<Value> {
    let vault = Vault::open(crate::harness::options(&dir.join("session_create.db"))).await?;
    let started = Instant::now();
    let mut n = 0;
    while !budget.spent(started, n) {
        vault
            .sessions()
            .create(NewSession::new(format!("user-{n}")).client_meta("route", "/mcp"))
            .await?;
        n += 1;
    }
    let ours = per_sec(n, started.elapsed());
    let path = vault.path().to_owned();
    vault.close().await?;

    let conn = raw_connection(&path)?;
    let mut stmt = conn.prepare(
        "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, client_meta, data, created_at, last_seen_at,
             idle_timeout_secs, expires_at, rotation_due_at)
         VALUES (?1, ?2, ?3, ?4, '{\"route\":\"/mcp\"}', '{}', ?5, ?5, 43200, ?6, ?7)",
    )?;
    let started = Instant::now();
    let mut m = 0;
    while !budget.spent(started, m) {
        let hash = random_hash()?;
        stmt.execute(rusqlite::params![
            format!("raw-{m}"),
            &hash[..],
            &hash[..],
            format!("raw-user-{m}"),
            "2026-11-23T00:00:00.000Z",
            "2026-11-30T00:00:00.000Z",
            "2026-11-24T00:00:00.000Z"
        ])?;
        m += 1;
    }
    let limit = per_sec(m, started.elapsed());
    Ok(Value::Object(workload(
        ours,
        "rusqlite INSERT of the same row, one transaction each",
        limit,
    )))
}

/// Validating a live token: served from memory (the default) and from the
/// file (memory off), vs rusqlite's indexed lookup of the token hash.
pub async fn validate(dir: &Path, budget: Budget) -> Result<Value> {
    let path = dir.join("session_validate.db");
    let vault = Vault::open(crate::harness::options(&path)).await?;
    let mut tokens = Vec::new();
    for i in 0..1000 {
        let issued = vault
            .sessions()
            .create(NewSession::new(format!("user-{i}")))
            .await?;
        tokens.push(issued.token.expose().to_owned());
    }
    let memory = validate_rate(&vault, &tokens, budget).await?;
    vault.close().await?;
    let mut no_memory = SessionConfig::default();
    no_memory.memory_entries = 0;
    let vault = Vault::open(crate::harness::options(&path).sessions(no_memory)).await?;
    let from_file = validate_rate(&vault, &tokens, budget).await?;
    vault.close().await?;

    let conn = raw_connection(&path)?;
    let hashes: Vec<[u8; 32]> = tokens.iter().map(|t| sha256(t.as_bytes())).collect();
    let started = Instant::now();
    let mut m = 0;
    while !budget.spent(started, m) {
        let mut stmt = conn.prepare_cached(
            "SELECT id, user_id, data, last_seen_at, expires_at, revoked_at FROM sessions WHERE token_hash = ?1",
        )?;
        stmt.query_row([&hashes[pick(m, hashes.len())][..]], |r| {
            r.get::<_, String>(0)
        })?;
        m += 1;
    }
    let limit = per_sec(m, started.elapsed());
    let mut m = workload(memory, "rusqlite indexed lookup by token hash", limit);
    m.insert("from_file_ops_per_sec".into(), from_file.round().into());
    m.insert("from_file_ratio".into(), (from_file / limit).into());
    m.insert("sessions".into(), tokens.len().into());
    Ok(Value::Object(m))
}

/// Validates tokens in a scattered order until the budget is spent.
async fn validate_rate(vault: &Vault, tokens: &[String], budget: Budget) -> Result<f64> {
    let started = Instant::now();
    let mut n = 0;
    while !budget.spent(started, n) {
        if vault
            .sessions()
            .validate(&tokens[pick(n, tokens.len())], None)
            .await?
            .valid()
            .is_none()
        {
            return Err(Error::InvalidInput {
                what: "bench",
                reason: "a live session failed validation".into(),
            });
        }
        n += 1;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// The i-th of `len` items in a scattered (prime-stride) order.
fn pick(i: u64, len: usize) -> usize {
    (i as usize).wrapping_mul(7919) % len
}

fn random_hash() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::InvalidInput {
        what: "random generator",
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

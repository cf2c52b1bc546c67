//! rusqlite's side: each workload's rows and statements, one transaction
//! per call, made by N OS threads with a connection each to a file set up
//! as the vault's (same key, WAL, page cache, `synchronous`). Writers take
//! the write lock with `BEGIN IMMEDIATE` and wait for it in SQLite's busy
//! handler, as any set of connections sharing a file does.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use statevault::{CacheKey, Clock, Result, SystemClock, Timestamp, merge_patch};

use crate::limits::PLENTY;
use crate::sessions::{ROW_COLUMNS, file_lookup, pick, random_hash, timed_key};

/// What a thread does on each call, with the rows it was given.
pub enum Work {
    /// Inserts a session after reading the user's live ones (the cap check).
    Create,
    /// Rotates its sessions' token hashes in turn.
    Rotate(Vec<[u8; 32]>),
    /// Revokes its sessions, one per call, by id.
    Revoke(Vec<String>),
    /// Hashes a token and reads its row (shared tokens, scattered order).
    Validate(Arc<[String]>),
    /// Upserts its subjects' bucket rows in turn: (subject, tokens, last ms).
    Strict(Vec<(String, f64, i64)>),
    /// Checks its subjects in turn with one upsert-returning statement.
    Shared(Vec<String>),
    /// Appends an audit event to the hash chain, `synchronous = FULL`.
    AppendDurable,
    /// Patches its users' preferences in turn.
    Patch(Vec<String>),
    /// Reads and decompresses cache rows (shared keys, scattered order).
    Get(Arc<[CacheKey]>, zstd::bulk::Decompressor<'static>),
    /// Compresses and upserts a cache row.
    Set(
        Arc<[CacheKey]>,
        Arc<[Vec<u8>]>,
        zstd::bulk::Compressor<'static>,
    ),
}

/// One thread's connection and work.
pub struct Caller {
    conn: Connection,
    id: usize,
    work: Work,
}

/// A connection to `path` as [`crate::harness::raw_connection`] makes one,
/// waiting up to 10 s for the write lock, with `synchronous = FULL` when
/// `full` (as the vault commits durable audit appends).
pub fn caller(path: &Path, id: usize, work: Work) -> Result<Caller> {
    let conn = crate::harness::raw_connection(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if matches!(work, Work::AppendDurable) {
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
    }
    Ok(Caller { conn, id, work })
}

impl Caller {
    /// Makes call number `i` of this thread.
    pub fn call(&mut self, i: u64) -> Result<()> {
        let conn = &self.conn;
        let n = usize::try_from(i).unwrap_or(usize::MAX);
        let spread = i + self.id as u64 * 7;
        match &mut self.work {
            Work::Create => in_transaction(conn, |c| create(c, &format!("user-{}-{i}", self.id))),
            Work::Rotate(hashes) => {
                let k = n % hashes.len();
                let new = timed_key()?;
                in_transaction(conn, |c| rotate(c, &hashes[k], &new))?;
                hashes[k] = new;
                Ok(())
            }
            Work::Revoke(ids) => in_transaction(conn, |c| revoke(c, &ids[n % ids.len()])),
            Work::Validate(tokens) => {
                file_lookup(conn, &tokens[pick(spread, tokens.len())]).map(drop)
            }
            Work::Strict(buckets) => {
                let k = n % buckets.len();
                in_transaction(conn, |c| strict(c, &mut buckets[k]))
            }
            Work::Shared(subjects) => {
                crate::limits::shared_upsert(conn, &subjects[n % subjects.len()]).map(drop)
            }
            Work::AppendDurable => in_transaction(conn, |c| append(c, i)),
            Work::Patch(users) => in_transaction(conn, |c| {
                patch(c, &users[n % users.len()], i.is_multiple_of(2))
            }),
            Work::Get(keys, zstd) => {
                crate::cache::point_read(conn, zstd, &keys[pick(spread, keys.len())]).map(drop)
            }
            Work::Set(keys, values, zstd) => in_transaction(conn, |c| {
                let key = std::slice::from_ref(&keys[pick(spread, keys.len())]);
                let value = std::slice::from_ref(&values[n % values.len()]);
                crate::cache::upsert(c, zstd, key, value)
            }),
        }
    }
}

/// `BEGIN IMMEDIATE`, `work`, `COMMIT` (or `ROLLBACK` when it fails).
fn in_transaction(conn: &Connection, work: impl FnOnce(&Connection) -> Result<()>) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match work(conn) {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// The session-create transaction: the user's live sessions, then the row.
fn create(conn: &Connection, user: &str) -> Result<()> {
    let now = now();
    let mut live = conn.prepare_cached(
        "SELECT id, token_hash, last_seen_at, idle_timeout_secs FROM sessions
         WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 ORDER BY created_at, id",
    )?;
    let rows: Vec<String> = live
        .query_map(rusqlite::params![user, now], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    std::hint::black_box(rows);
    let (token, csrf) = (timed_key()?, random_hash()?);
    conn.prepare_cached(
        "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint, ip_hash,
             user_agent_hash, client_meta, data, created_at, last_seen_at, idle_timeout_secs, expires_at,
             rotation_due_at)
         VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, NULL, '{\"route\":\"/mcp\"}', '{}', ?5, ?5, 43200, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        uuid::Uuid::now_v7().to_string(),
        &token[..],
        &csrf[..],
        user,
        now,
        now.saturating_add(std::time::Duration::from_secs(7 * 86_400)),
        now.saturating_add(std::time::Duration::from_secs(86_400)),
    ])?;
    Ok(())
}

/// The rotation transaction: read the row, swap the hashes, publish the old
/// hash to the change feed.
fn rotate(conn: &Connection, old: &[u8; 32], new: &[u8; 32]) -> Result<()> {
    let mut read = conn.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM sessions WHERE token_hash = ?1"
    ))?;
    let id: Option<String> = read.query_row([&old[..]], |r| r.get(0)).optional()?;
    std::hint::black_box(id);
    let due = now().saturating_add(std::time::Duration::from_secs(86_400));
    conn.prepare_cached(
        "UPDATE sessions SET token_hash = ?1, csrf_hash = ?2, rotation_due_at = ?3
         WHERE token_hash = ?4 AND revoked_at IS NULL",
    )?
    .execute(rusqlite::params![&new[..], &new[..], due, &old[..]])?;
    publish(conn, old)
}

/// The revocation transaction: mark the row, publish its token hash.
fn revoke(conn: &Connection, id: &str) -> Result<()> {
    let hash: Option<Vec<u8>> = conn
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?1, revoked_reason = 'revoked'
             WHERE revoked_at IS NULL AND id IN (?2) RETURNING token_hash",
        )?
        .query_row(rusqlite::params![now(), id], |r| r.get(0))
        .optional()?;
    match hash {
        Some(hash) => publish(conn, &hash),
        None => Ok(()),
    }
}

/// One change-feed row, as the vault publishes a changed token.
fn publish(conn: &Connection, token_hash: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO changes (origin, at, facet, kind, target) VALUES (0, ?1, 'sessions', 'token', ?2)",
    )?
    .execute(rusqlite::params![now(), token_hash])?;
    Ok(())
}

/// A strict check: the bucket refilled and spent in memory, its row
/// upserted as the vault writes a strict limit's state.
fn strict(conn: &Connection, bucket: &mut (String, f64, i64)) -> Result<()> {
    let now = now();
    let ms = now.as_millis();
    let rate_per_ms = PLENTY / 3_600_000.0;
    let (subject, tokens, last) = bucket;
    *tokens = (*tokens + (ms - *last).max(0) as f64 * rate_per_ms).min(PLENTY) - 1.0;
    *last = ms;
    conn.prepare_cached(
        "INSERT INTO token_buckets (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
         VALUES (?1, 'bench', 3600, ?2, ?3, ?3)
         ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
             tokens = excluded.tokens,
             last_refill_at = excluded.last_refill_at,
             updated_at = excluded.updated_at",
    )?
    .execute(rusqlite::params![subject.as_str(), *tokens, now])?;
    Ok(())
}

/// A durable append: read the chain's tip, insert the event linked to it.
fn append(conn: &Connection, i: u64) -> Result<()> {
    let (seq, prev): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT seq, chain_digest FROM audit_events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, vec![0; 32]));
    let seq = seq + 1;
    let id = uuid::Uuid::now_v7().to_string();
    let user = format!("user-{}", i % 100);
    let details = super::ours::event_details().to_string();
    let content: [u8; 32] = Sha256::digest(format!("{id}{user}{i}{details}")).into();
    let chain: [u8; 32] = Sha256::new()
        .chain_update(&prev)
        .chain_update(seq.to_be_bytes())
        .chain_update(content)
        .finalize()
        .into();
    conn.prepare_cached(
        "INSERT INTO audit_events (seq, id, occurred_at, user_id, kind, action, resource_type, resource_id,
             details, gdpr_category, content_digest, chain_digest)
         VALUES (?1, ?2, ?3, ?4, 'api_call', 'search', 'query', ?5, ?6, 'necessary', ?7, ?8)",
    )?
    .execute(rusqlite::params![
        seq,
        id,
        now(),
        user,
        i.to_string(),
        details,
        &content[..],
        &chain[..]
    ])?;
    Ok(())
}

/// A preferences patch: read the document, merge the patch, write it back.
fn patch(conn: &Connection, user: &str, low: bool) -> Result<()> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT document FROM preferences WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    let mut document = match stored {
        Some(text) => serde_json::from_str(&text)?,
        None => serde_json::json!({}),
    };
    let quality = if low { "LOW" } else { "HIGH" };
    merge_patch(
        &mut document,
        &serde_json::json!({"audio_quality": quality}),
    );
    conn.prepare_cached(
        "INSERT INTO preferences (user_id, document, schema_version, created_at, updated_at)
         VALUES (?1, ?2, 1, ?3, ?3)
         ON CONFLICT (user_id) DO UPDATE SET document = excluded.document,
             schema_version = excluded.schema_version, updated_at = excluded.updated_at",
    )?
    .execute(rusqlite::params![user, document.to_string(), now()])?;
    Ok(())
}

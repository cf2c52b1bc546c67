//! `session_create` and `session_validate`, each beside a baseline doing
//! the same work in the same run: rusqlite running the same SQL on the same
//! kind of file (same SQLCipher, same key, WAL, `synchronous=NORMAL`), and
//! for validation from memory, a plain in-memory map ([`MemoryMap`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::Value;
use statevault::{Clock, Error, NewSession, Result, SessionConfig, SystemClock, Timestamp, Vault};

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
        let (hash, csrf) = (timed_key()?, random_hash()?);
        stmt.execute(rusqlite::params![
            format!("raw-{m}"),
            &hash[..],
            &csrf[..],
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

/// Validating a live token, two ways, each beside a baseline doing the same
/// lookup: served from memory (the default) beside [`MemoryMap`]; from the
/// file (memory off) beside rusqlite hashing the token and reading the same
/// columns by the token-hash index.
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
    let map = MemoryMap::load(&conn)?;
    let started = Instant::now();
    let mut m = 0;
    while !budget.spent(started, m) {
        if !map.validate(&tokens[pick(m, tokens.len())]) {
            return Err(refused());
        }
        m += 1;
    }
    let in_memory = per_sec(m, started.elapsed());
    let started = Instant::now();
    let mut m = 0;
    while !budget.spent(started, m) {
        if !file_lookup(&conn, &tokens[pick(m, tokens.len())])? {
            return Err(refused());
        }
        m += 1;
    }
    let rusqlite = per_sec(m, started.elapsed());
    let mut m = workload(memory, MemoryMap::WORK, in_memory);
    // The names of the report before the variants, kept for its readers.
    m.insert("from_file_ops_per_sec".into(), from_file.round().into());
    m.insert("from_file_ratio".into(), (from_file / rusqlite).into());
    crate::harness::variant(&mut m, "from the file", from_file, FILE_WORK, rusqlite);
    m.insert("sessions".into(), tokens.len().into());
    Ok(Value::Object(m))
}

const FILE_WORK: &str = "rusqlite: the token's key (SHA-256, issue time), then SELECT of the same 14 columns \
                         by the token-hash index, one reader, 64 MiB page cache";

/// The columns the vault reads to validate a session.
pub(crate) const ROW_COLUMNS: &str = "id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta, \
                           created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at, \
                           revoked_at, revoked_reason";

/// Validates `token` from the file as the vault's file path does: hash it,
/// read the row's columns by the token-hash index, check it is live.
pub(crate) fn file_lookup(conn: &rusqlite::Connection, token: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM sessions WHERE token_hash = ?1"
    ))?;
    let hash = token_key(token);
    let live = stmt.query_row([&hash[..]], |r| {
        let _: (String, String, Option<String>, Option<Vec<u8>>, Vec<u8>) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let _: (String, String, String, String, i64) =
            (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?);
        let expires_at: String = r.get(10)?;
        let _: (String, Option<String>) = (r.get(11)?, r.get(13)?);
        let revoked: Option<String> = r.get(12)?;
        Ok(revoked.is_none() && !expires_at.is_empty())
    })?;
    Ok(live)
}

fn refused() -> Error {
    Error::InvalidInput {
        what: "bench",
        reason: "a live session failed validation".into(),
    }
}

/// The baseline for validation from memory: what the vault's memory does
/// per call, done directly. The token is hashed (SHA-256), one of 16
/// mutex-guarded `lru` shards (picked by the key's last byte) is locked
/// and looked up, the row (an `Arc`) is cloned and checked against the
/// clock (revoked, expired, idle), and the touch is recorded in a
/// mutex-guarded map by session id, as the vault buffers last-seen times.
/// It does not ask whether another process changed the file, which the
/// vault does on every call.
pub(crate) struct MemoryMap {
    shards: Vec<Mutex<lru::LruCache<[u8; 32], Arc<MemoryRow>>>>,
    touches: Mutex<HashMap<String, i64>>,
}

pub(crate) struct MemoryRow {
    id: String,
    revoked: bool,
    expires_ms: i64,
    last_seen_ms: AtomicI64,
    idle_ms: i64,
}

impl MemoryMap {
    pub(crate) const WORK: &str = "in memory: the token's key (SHA-256, issue time), one of 16 mutex-guarded lru \
        shards by hash, Arc clone of the row, revoked/expiry/idle check against the clock, \
        touch recorded in a mutex-guarded map; no check for other processes' changes";
    const SHARDS: usize = 16;

    /// Every session of the file at `conn`, by token hash.
    pub(crate) fn load(conn: &rusqlite::Connection) -> Result<MemoryMap> {
        let cap = NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN);
        let map = MemoryMap {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(cap)))
                .collect(),
            touches: Mutex::new(HashMap::new()),
        };
        let mut stmt = conn.prepare(
            "SELECT token_hash, id, revoked_at IS NOT NULL, expires_at, last_seen_at, idle_timeout_secs
             FROM sessions",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let hash: [u8; 32] = r.get::<_, Vec<u8>>(0)?.try_into().unwrap_or([0; 32]);
            let (expires, seen): (Timestamp, Timestamp) = (r.get(3)?, r.get(4)?);
            let row = MemoryRow {
                id: r.get(1)?,
                revoked: r.get(2)?,
                expires_ms: expires.as_millis(),
                last_seen_ms: AtomicI64::new(seen.as_millis()),
                idle_ms: r.get::<_, i64>(5)?.saturating_mul(1000),
            };
            map.shard(&hash).put(hash, Arc::new(row));
        }
        Ok(map)
    }

    fn shard(&self, hash: &[u8; 32]) -> MutexGuard<'_, lru::LruCache<[u8; 32], Arc<MemoryRow>>> {
        let shard = &self.shards[usize::from(hash[31]) % Self::SHARDS];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `token` is a live session's, touching it if so.
    pub(crate) fn validate(&self, token: &str) -> bool {
        let hash = token_key(token);
        let now = SystemClock.now().as_millis();
        let Some(row) = self.shard(&hash).get(&hash).cloned() else {
            return false;
        };
        let seen = row.last_seen_ms.load(Ordering::Relaxed);
        if row.revoked || now >= row.expires_ms || now >= seen.saturating_add(row.idle_ms) {
            return false;
        }
        row.last_seen_ms.fetch_max(now, Ordering::Relaxed);
        self.touches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(row.id.clone(), now);
        true
    }
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
            return Err(refused());
        }
        n += 1;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// The i-th of `len` items in a scattered (prime-stride) order.
pub(crate) fn pick(i: u64, len: usize) -> usize {
    (i as usize).wrapping_mul(7919) % len
}

pub(crate) fn random_hash() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::InvalidInput {
        what: "random generator",
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// A new session's token key, shaped as the vault makes it: the time now
/// (6 bytes, milliseconds, big-endian), then 26 random bytes (the vault's
/// are the first 26 bytes of the token's SHA-256).
pub(crate) fn timed_key() -> Result<[u8; 32]> {
    let mut key = random_hash()?;
    let ms =
        u64::try_from(statevault::Clock::now(&statevault::SystemClock).as_millis()).unwrap_or(0);
    key[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Ok(key)
}

/// The key the vault finds `token`'s session under, computed as the vault
/// does (`statevault::sessions`' `token_key`): for a token it issued (76 hex
/// digits), the issue time in its first 6 bytes, then the first 26 bytes of
/// its SHA-256; for any other token, its SHA-256.
pub(crate) fn token_key(token: &str) -> [u8; 32] {
    let digest = sha256(token.as_bytes());
    if token.len() != 76 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return digest;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key[..6].iter_mut().enumerate() {
        *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    key[6..].copy_from_slice(&digest[..26]);
    key
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

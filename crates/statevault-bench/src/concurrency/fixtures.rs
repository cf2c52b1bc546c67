//! What each concurrency workload starts from: its vault's options, and the
//! rows its callers use (sessions inserted directly, so that thousands cost
//! a fraction of a second; cache rows written through the vault), split
//! between callers so that no two use the same row unless the workload
//! shares them on purpose (validation and cache gets).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use statevault::{
    CacheConfig, CacheKey, Clock, Limit, LimitsConfig, PreferencesConfig, Result, SystemClock,
    Vault, VaultOptions, Window,
};

use crate::limits::PLENTY;
use crate::sessions::sha256;

/// The vault options of workload `name` at `path`: the bench's, without the
/// background sweep, with the limits, preferences or cache the workload uses.
pub fn options(name: &str, path: &Path) -> VaultOptions {
    configure(name, crate::harness::options(path).sweep_interval(None))
}

/// `options` with the limits, preferences or cache workload `name` uses.
pub fn configure(name: &str, options: VaultOptions) -> VaultOptions {
    match name {
        "ratelimit_check_strict" => options.limits(limits(false)),
        "ratelimit_check_shared" => options.limits(limits(true)),
        "prefs_patch" => options.preferences(PreferencesConfig::seeds()),
        "cache_l2_get" => options.cache(CacheConfig::default().l1_entries(0)),
        _ => options,
    }
}

/// Limit `bench`: one hour's window holding more tokens than a run spends,
/// strict (written before `check` returns) or shared (checked in the file).
fn limits(shared: bool) -> LimitsConfig {
    let limit = Limit::new().window(Window::per(Duration::from_secs(3600), PLENTY));
    let limit = if shared {
        limit.shared(true)
    } else {
        limit.strict(true)
    };
    LimitsConfig::empty().limit("bench", limit)
}

/// The rows every caller of a workload shares, made once per workload.
#[derive(Default)]
pub struct Shared {
    /// Tokens of live sessions (validation).
    pub tokens: Arc<[String]>,
    /// Keys of cache rows in the file (gets), or to set (sets).
    pub keys: Arc<[CacheKey]>,
    /// 1 KiB JSON values to set.
    pub values: Arc<[Vec<u8>]>,
}

impl Shared {
    /// Creates the vault file at `path` (and the rows workload `name`
    /// shares in it).
    pub async fn prepare(name: &str, path: &Path, quick: bool) -> Result<Shared> {
        let vault = Vault::open(options(name, path)).await?;
        let mut shared = Shared::default();
        match name {
            "session_validate" => {
                vault.close().await?;
                let sessions = sessions(path, "shared", 1, 1000)?;
                shared.tokens = sessions.concat().into_iter().map(|(_, t)| t).collect();
                return Ok(shared);
            }
            "cache_l2_get" | "cache_set" => {
                let rows = if quick { 1_000 } else { 10_000 };
                shared.keys = crate::cache::keys(rows)?.into();
                shared.values = (0..16).map(crate::cache::json_value).collect();
                if name == "cache_l2_get" {
                    for (i, key) in shared.keys.iter().enumerate() {
                        let value = crate::cache::json_value(i);
                        vault.cache().set(key, &value).await?;
                    }
                    vault.flush().await?;
                }
            }
            _ => {}
        }
        vault.close().await?;
        Ok(shared)
    }
}

/// Live sessions inserted directly in the file at `path`: `per_caller` for
/// each of `callers`, as (id, token) pairs; ids `{prefix}-{caller}-{k}`.
pub fn sessions(
    path: &Path,
    prefix: &str,
    callers: usize,
    per_caller: usize,
) -> Result<Vec<Vec<(String, String)>>> {
    let mut conn = crate::harness::raw_connection(path)?;
    let now = SystemClock.now();
    let expires = now.saturating_add(Duration::from_secs(7 * 86_400));
    let tx = conn.transaction()?;
    let mut all = Vec::with_capacity(callers);
    {
        let mut stmt = tx.prepare(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, client_meta, data, created_at,
                 last_seen_at, idle_timeout_secs, expires_at, rotation_due_at)
             VALUES (?1, ?2, ?2, ?3, '{}', '{}', ?4, ?4, 43200, ?5, ?5)",
        )?;
        for caller in 0..callers {
            let mut mine = Vec::with_capacity(per_caller);
            for k in 0..per_caller {
                let id = format!("{prefix}-{caller}-{k}");
                let token = format!("token-{id}");
                let hash = sha256(token.as_bytes());
                let user = format!("user-{id}");
                stmt.execute(rusqlite::params![id, &hash[..], user, now, expires])?;
                mine.push((id, token));
            }
            all.push(mine);
        }
    }
    tx.commit()?;
    Ok(all)
}

/// Caller `caller`'s subjects (limits) or users (preferences): `count`
/// names of its own.
pub fn names(prefix: &str, caller: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|k| format!("{prefix}-{caller}-{k}"))
        .collect()
}

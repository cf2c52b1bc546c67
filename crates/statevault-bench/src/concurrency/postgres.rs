//! `--concurrency LEVELS --db postgres://…` (feature `postgres`): the
//! workloads that run on PostgreSQL, at each level of concurrent callers,
//! three ways:
//!
//! - statevault: N tokio tasks sharing one vault on the database, through
//!   the public API (the same callers as on the file, [`super::ours`]);
//! - raw sqlx: N tokio tasks sharing a pool of N connections, each call the
//!   statements a hand-written service would run for the same rows (what
//!   differs is said per workload: the raw side seals nothing);
//! - Redis, as for the file.
//!
//! The bench makes a database of its own on the server (`CREATE DATABASE`,
//! which the URL's user must be allowed) and drops it at the end: it never
//! touches the database the URL names.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row as _};
use statevault::{
    CacheKey, Clock, Error, KeySource, NewSession, Result, SystemClock, Vault, VaultOptions,
};

use super::drive::{self, Call};
use super::fixtures::{configure, names};
use super::{Concurrency, Level, Peers, Plan, Workload, named, ours};
use crate::limits::PLENTY;
use crate::sessions::sha256;

/// The workloads that run on PostgreSQL so far, in order.
pub const WORKLOADS: [&str; 9] = [
    "session_create",
    "session_rotate",
    "session_revoke",
    "session_validate",
    "ratelimit_check_shared",
    "prefs_patch",
    "audit_append_durable",
    "cache_l2_get",
    "cache_set",
];

/// The baseline's name in the report.
const RAW: &str = "raw_sqlx";

/// Runs the plan's workloads on a database of the bench's own on the
/// server `url` names.
pub async fn measure(url: &str, dir: &Path, plan: &Plan<'_>) -> Result<Concurrency> {
    let scratch = Scratch::create(url).await?;
    let measured = measure_in(&scratch.url, dir, plan).await;
    scratch.drop().await;
    measured
}

async fn measure_in(url: &str, dir: &Path, plan: &Plan<'_>) -> Result<Concurrency> {
    let key = KeySource::File(dir.join("postgres-bench.key"));
    statevault::postgres::Database::init(url, &key)
        .await?
        .0
        .close()
        .await;
    let most = plan.levels.iter().copied().max().unwrap_or(1);
    let raw = PgPoolOptions::new()
        .max_connections(u32::try_from(most).unwrap_or(u32::MAX))
        .connect_with(connect_options(url)?)
        .await
        .map_err(Error::from)?;
    let server = server_settings(&raw).await?;
    let mut peers = Peers::default();
    let mut workloads = serde_json::Map::new();
    for name in WORKLOADS {
        if !plan.only.is_empty() && !plan.only.iter().any(|n| n == name) {
            continue;
        }
        let (servers, role) = peers.start(name);
        let [memory, durable] = &servers;
        let memory = memory.as_ref().map_err(String::as_str);
        let durable = durable.as_ref().map_err(String::as_str);
        for server in memory
            .ok()
            .into_iter()
            .chain(durable.ok().filter(|_| role.durable))
        {
            role.populate(server)?;
        }
        reset(&raw).await?;
        let options = || {
            configure(
                name,
                VaultOptions::new(url)
                    .key_source(key.clone())
                    .sweep_interval(None),
            )
        };
        let shared = Shared::prepare(name, options(), &raw, plan.quick).await?;
        let mut levels = Vec::new();
        for &n in plan.levels {
            let per = per_caller(name, plan, n);
            let limit = if name == "session_revoke" {
                per as u64
            } else {
                u64::MAX
            };
            let mut mine = own_sessions(name, options(), &format!("v{n}"), n, per).await?;
            let works = (0..n)
                .map(|c| our_work(name, &format!("v{n}"), c, &shared, mine.pop()))
                .collect();
            let statevault = ours::run(options(), works, plan.run(), limit).await?;
            let mut mine = raw_sessions(name, &raw, &format!("r{n}"), n, per).await?;
            let callers = (0..n)
                .map(|c| {
                    Ok(RawCaller {
                        pool: raw.clone(),
                        id: c,
                        work: raw_work(name, &format!("r{n}"), c, &shared, mine.pop())?,
                    })
                })
                .collect::<Result<_>>()?;
            let (_, baseline) = drive::tasks(callers, plan.run(), limit).await?;
            levels.push(Level {
                callers: n,
                statevault,
                baseline: named(RAW, baseline),
                redis: role.measure(memory, n, plan.run()),
                redis_durable: role.durable.then(|| role.measure(durable, n, plan.run())),
            });
        }
        let workload = Workload {
            statevault: ours_does(name),
            baseline: named(RAW, raw_does(name)),
            redis: role.shown(),
            redis_durable: role.durable,
            levels,
        };
        workloads.insert(name.into(), serde_json::to_value(workload)?);
    }
    raw.close().await;
    Ok(Concurrency {
        levels: plan.levels.to_vec(),
        seconds_per_figure: plan.run().as_secs_f64(),
        statevault: format!(
            "N tokio tasks on a multi-thread runtime of {} worker threads, sharing one vault \
             on PostgreSQL {server} (the vault's pool: 16 connections, the default)",
            tokio::runtime::Handle::current().metrics().num_workers()
        ),
        baseline: named(
            RAW,
            "N tokio tasks sharing a sqlx PgPool of N connections, one transaction per call; \
             values stored as they are (statevault seals them, ~1 µs a value)"
                .to_owned(),
        ),
        redis: peers.setup(),
        workloads,
    })
}

/// A database of the bench's own beside the one `url` names.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(admin: &str) -> Result<Scratch> {
        let name = format!("statevault_bench_{}", std::process::id());
        let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
        let server = match base.split_once("://") {
            Some((_, rest)) if rest.contains('/') => base.rsplit_once('/').map_or(base, |(s, _)| s),
            _ => base,
        };
        let url = match query {
            "" => format!("{server}/{name}"),
            query => format!("{server}/{name}?{query}"),
        };
        let mut conn =
            sqlx::PgConnection::connect(admin)
                .await
                .map_err(|e| Error::Unreachable {
                    url: "the --db URL".into(),
                    detail: e.to_string(),
                })?;
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        let sql = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| Error::InvalidInput {
                what: "bench --db",
                reason: format!(
                    "the bench runs in a database of its own and could not create one \
                     (CREATE DATABASE {name}): {e}"
                ),
            })?;
        conn.close().await?;
        Ok(Scratch {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    async fn drop(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!(
                "warning: could not drop the bench's database {}: {e}",
                self.name
            );
        }
    }
}

/// `url` with statevault's schema first in the search path.
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidInput {
            what: "bench --db",
            reason: e.to_string(),
        })?
        .options([("search_path", statevault::postgres::SCHEMA)])
        .disable_statement_logging())
}

/// The server's version and what makes its commits durable or not.
async fn server_settings(pool: &PgPool) -> Result<String> {
    let row = sqlx::query(
        "SELECT current_setting('server_version'), current_setting('fsync'),
             current_setting('synchronous_commit')",
    )
    .fetch_one(pool)
    .await?;
    let (version, fsync, commit): (String, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(format!(
        "{version}, fsync={fsync}, synchronous_commit={commit}"
    ))
}

/// Empties every table a workload writes, so that each starts alike.
async fn reset(pool: &PgPool) -> Result<()> {
    sqlx::query(
        "TRUNCATE sessions, session_users, token_buckets, violations, audit_events, preferences,
             cache_entries, cache_tags",
    )
    .execute(pool)
    .await?;
    sqlx::query("UPDATE audit_head SET seq = 0, chain_digest = $1")
        .bind(&[0u8; 32][..])
        .execute(pool)
        .await?;
    Ok(())
}

/// The rows every caller of a workload shares, made once per workload.
#[derive(Default)]
struct Shared {
    /// Tokens of live sessions (validation), created through the vault.
    tokens: Arc<[String]>,
    /// Keys of cache rows (gets), or to set (sets).
    keys: Arc<[CacheKey]>,
    /// The raw side's keys for the same rows (`raw:` and the key): its
    /// rows are its own, stored unsealed.
    raw_keys: Arc<[String]>,
    /// 1 KiB JSON values to set.
    values: Arc<[Vec<u8>]>,
}

impl Shared {
    async fn prepare(
        name: &str,
        options: VaultOptions,
        raw: &PgPool,
        quick: bool,
    ) -> Result<Shared> {
        let mut shared = Shared::default();
        match name {
            "session_validate" => {
                let vault = Vault::open(options).await?;
                let mut tokens = Vec::with_capacity(1000);
                for i in 0..1000 {
                    let issued = vault
                        .sessions()
                        .create(NewSession::new(format!("shared-{i}")))
                        .await?;
                    tokens.push(issued.token.expose().to_owned());
                }
                vault.close().await?;
                shared.tokens = tokens.into();
            }
            "cache_l2_get" | "cache_set" => {
                let rows = if quick { 1_000 } else { 10_000 };
                shared.keys = crate::cache::keys(rows)?.into();
                shared.raw_keys = shared
                    .keys
                    .iter()
                    .map(|k| format!("raw:{}", k.as_str()))
                    .collect();
                shared.values = (0..16).map(crate::cache::json_value).collect();
                if name == "cache_l2_get" {
                    let vault = Vault::open(options).await?;
                    for (i, key) in shared.keys.iter().enumerate() {
                        vault.cache().set(key, &crate::cache::json_value(i)).await?;
                    }
                    vault.close().await?;
                    let values: Vec<Vec<u8>> = (0..rows).map(crate::cache::json_value).collect();
                    let mut zstd = crate::cache::compressor()?;
                    raw_upsert(raw, &mut zstd, &shared.raw_keys, &values).await?;
                }
            }
            _ => {}
        }
        Ok(shared)
    }
}

/// Compresses `values` and upserts them under `keys`, unsealed, in one
/// statement with the columns the vault writes.
async fn raw_upsert(
    pool: &PgPool,
    zstd: &mut zstd::bulk::Compressor<'_>,
    keys: &[String],
    values: &[Vec<u8>],
) -> Result<()> {
    let stored = values
        .iter()
        .map(|v| zstd.compress(v).map_err(crate::cache::zstd_error))
        .collect::<Result<Vec<_>>>()?;
    let now = SystemClock.now();
    sqlx::query(
        "INSERT INTO cache_entries (key, namespace, user_id, codec, size, stored_size, created_at,
             expires_at, last_access_at, value)
         SELECT key, 'search', 'bench', 'zstd', size, octet_length(value), $4,
                $4 + interval '5 minutes', $4, value
         FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS r(key, size, value)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, size = excluded.size,
             stored_size = excluded.stored_size, last_access_at = excluded.last_access_at",
    )
    .bind(keys)
    .bind(values.iter().map(|v| v.len() as i64).collect::<Vec<_>>())
    .bind(&stored)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sessions each caller rotates or revokes: 64 to rotate in turn; to
/// revoke, as many as a run may take, shared out.
fn per_caller(name: &str, plan: &Plan<'_>, n: usize) -> usize {
    match name {
        "session_rotate" => 64,
        "session_revoke" => (if plan.quick { 400 } else { 20_000 } / n).max(8),
        _ => 0,
    }
}

/// Each caller's sessions, as (id, token), created through the vault (their
/// values sealed), by `n` tasks at once; callers in reverse order (popped).
async fn own_sessions(
    name: &str,
    options: VaultOptions,
    prefix: &str,
    n: usize,
    per: usize,
) -> Result<Vec<Vec<(String, String)>>> {
    if per == 0 {
        return Ok(Vec::new());
    }
    let vault = Vault::open(options).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..n {
        let (vault, prefix, name) = (vault.clone(), prefix.to_owned(), name.to_owned());
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(per);
            for k in 0..per {
                let user = format!("{name}-{prefix}-{caller}-{k}");
                let issued = vault.sessions().create(NewSession::new(user)).await?;
                mine.push((issued.id, issued.token.expose().to_owned()));
            }
            Ok::<_, Error>((caller, mine))
        });
    }
    let mut all = vec![Vec::new(); n];
    while let Some(done) = tasks.join_next().await {
        let (caller, mine) = done.map_err(|e| unexpected(&e.to_string()))??;
        all[caller] = mine;
    }
    vault.close().await?;
    all.reverse();
    Ok(all)
}

/// The raw side's sessions, inserted directly (values as long as sealed
/// ones), as for [`own_sessions`].
async fn raw_sessions(
    name: &str,
    pool: &PgPool,
    prefix: &str,
    n: usize,
    per: usize,
) -> Result<Vec<Vec<(String, String)>>> {
    if per == 0 {
        return Ok(Vec::new());
    }
    let now = SystemClock.now();
    let expires = now.saturating_add(std::time::Duration::from_secs(7 * 86_400));
    let mut all: Vec<Vec<(String, String)>> = (0..n)
        .map(|caller| {
            (0..per)
                .map(|k| {
                    let id = format!("{name}-{prefix}-{caller}-{k}");
                    let token = format!("token-{id}");
                    (id, token)
                })
                .collect()
        })
        .collect();
    let rows: Vec<&(String, String)> = all.iter().flatten().collect();
    for chunk in rows.chunks(5000) {
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, client_meta, data,
                 created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at)
             SELECT id, hash, hash, 'user-' || id, $3, $4, $5, $5, 43200, $6, $6
             FROM unnest($1::text[], $2::bytea[]) AS r(id, hash)",
        )
        .bind(chunk.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|(_, token)| sha256(token.as_bytes()).to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(vec![0u8; sealed_len(r#"{"route":"/mcp"}"#.len())])
        .bind(vec![0u8; sealed_len(2)])
        .bind(now)
        .bind(expires)
        .execute(pool)
        .await?;
    }
    all.reverse();
    Ok(all)
}

fn our_work(
    name: &str,
    prefix: &str,
    caller: usize,
    shared: &Shared,
    mine: Option<Vec<(String, String)>>,
) -> ours::Work {
    let mine = mine.unwrap_or_default();
    match name {
        "session_create" => ours::Work::Create,
        "session_rotate" => ours::Work::Rotate(mine.into_iter().map(|(_, t)| t).collect()),
        "session_revoke" => ours::Work::Revoke(mine.into_iter().map(|(id, _)| id).collect()),
        "session_validate" => ours::Work::Validate(shared.tokens.clone()),
        "ratelimit_check_shared" => ours::Work::Check(names(prefix, caller, 64)),
        "prefs_patch" => ours::Work::Patch(names(prefix, caller, 16)),
        "cache_l2_get" => ours::Work::Get(shared.keys.clone()),
        "cache_set" => ours::Work::Set(shared.keys.clone(), shared.values.clone()),
        _ => ours::Work::AppendDurable,
    }
}

fn ours_does(name: &str) -> &'static str {
    match name {
        "session_create" => {
            "sessions().create for a new user (lock the user's row, count, insert: one transaction; sealed client_meta and data)"
        }
        "session_rotate" => {
            "sessions().rotate of one of the caller's 64 sessions in turn (validate, then update the token hash and publish it: one transaction)"
        }
        "session_revoke" => {
            "sessions().revoke of one of the caller's sessions by id (update, publish the token hash: one transaction)"
        }
        "session_validate" => {
            "sessions().validate of one of 1000 live tokens, shared by all callers (from memory once read)"
        }
        "ratelimit_check_shared" => {
            "limits().check of a shared limit, one of the caller's 64 subjects (one UPDATE locking the buckets, autocommit)"
        }
        "prefs_patch" => {
            "preferences().patch of one of the caller's 16 users, one field (lock the row, merge, check, seal, write: one transaction)"
        }
        "cache_l2_get" => {
            "cache().get of one of the rows shared by all callers, L1 off (point read, open the sealed value, zstd)"
        }
        "cache_set" => {
            "cache().set of a 1 KiB JSON value (written behind, then flushed as multi-row upserts; the final flush counts in the run's time)"
        }
        _ => {
            "audit().append_durable of one event (lock the chain's head, insert with digests, move the head: one transaction)"
        }
    }
}

fn raw_does(name: &str) -> &'static str {
    match name {
        "session_create" => {
            "BEGIN; upsert-lock the user's row; SELECT the user's live sessions; INSERT the session row; COMMIT"
        }
        "session_rotate" => {
            "SELECT the row by token hash; BEGIN; UPDATE token and CSRF hashes; INSERT the change and NOTIFY; COMMIT"
        }
        "session_revoke" => {
            "BEGIN; UPDATE … SET revoked_at … RETURNING token_hash; INSERT the change and NOTIFY; COMMIT"
        }
        "session_validate" => "SHA-256 of the token, SELECT of the same 14 columns by token hash",
        "ratelimit_check_shared" => {
            "INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING, one window, refill in SQL (no penalty check)"
        }
        "prefs_patch" => {
            "BEGIN; SELECT the document FOR UPDATE (insert if missing); JSON merge; UPDATE; COMMIT (no type check)"
        }
        "cache_l2_get" => {
            "SELECT value by key (rows of its own, unsealed); zstd decompress (a context per caller)"
        }
        "cache_set" => {
            "zstd compress (a context per caller); INSERT … ON CONFLICT DO UPDATE of the row, autocommit: one commit per set"
        }
        _ => {
            "BEGIN; SELECT the head FOR UPDATE; INSERT the event with its SHA-256 digests; UPDATE the head; COMMIT"
        }
    }
}

/// What a raw caller does on each call.
enum RawWork {
    Create,
    /// Its sessions' token hashes, rotated in turn.
    Rotate(Vec<[u8; 32]>),
    /// Its sessions' ids, one revoked per call.
    Revoke(Vec<String>),
    Validate(Arc<[String]>),
    Shared(Vec<String>),
    Patch(Vec<String>),
    AppendDurable,
    Get(Arc<[String]>, zstd::bulk::Decompressor<'static>),
    Set(
        Arc<[String]>,
        Arc<[Vec<u8>]>,
        zstd::bulk::Compressor<'static>,
    ),
}

fn raw_work(
    name: &str,
    prefix: &str,
    caller: usize,
    shared: &Shared,
    mine: Option<Vec<(String, String)>>,
) -> Result<RawWork> {
    let mine = mine.unwrap_or_default();
    Ok(match name {
        "session_create" => RawWork::Create,
        "session_rotate" => RawWork::Rotate(
            mine.iter()
                .map(|(_, token)| sha256(token.as_bytes()))
                .collect(),
        ),
        "session_revoke" => RawWork::Revoke(mine.into_iter().map(|(id, _)| id).collect()),
        "session_validate" => RawWork::Validate(shared.tokens.clone()),
        "ratelimit_check_shared" => RawWork::Shared(names(prefix, caller, 64)),
        "prefs_patch" => RawWork::Patch(names(prefix, caller, 16)),
        "cache_l2_get" => RawWork::Get(
            shared.raw_keys.clone(),
            zstd::bulk::Decompressor::new().map_err(crate::cache::zstd_error)?,
        ),
        "cache_set" => RawWork::Set(
            shared.raw_keys.clone(),
            shared.values.clone(),
            crate::cache::compressor()?,
        ),
        _ => RawWork::AppendDurable,
    })
}

struct RawCaller {
    pool: PgPool,
    id: usize,
    work: RawWork,
}

/// A sealed value's length for `plain` bytes: version, nonce, tag.
fn sealed_len(plain: usize) -> usize {
    1 + 24 + plain + 16
}

impl Call for RawCaller {
    async fn call(&mut self, i: u64) -> Result<()> {
        let now = SystemClock.now();
        let n = usize::try_from(i).unwrap_or(usize::MAX);
        let spread = i + self.id as u64 * 7;
        match &mut self.work {
            RawWork::Rotate(hashes) => {
                let k = n % hashes.len();
                let new: [u8; 32] = crate::sessions::timed_key()?;
                let found = sqlx::query(
                    "SELECT id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta,
                         created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at,
                         revoked_at, revoked_reason
                     FROM sessions WHERE token_hash = $1",
                )
                .bind(&hashes[k][..])
                .fetch_optional(&self.pool)
                .await?;
                if found.is_none() {
                    return Err(unexpected("a live session was not found"));
                }
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "UPDATE sessions SET token_hash = $1, csrf_hash = $1, rotation_due_at = $2
                     WHERE token_hash = $3 AND revoked_at IS NULL",
                )
                .bind(&new[..])
                .bind(now.saturating_add(std::time::Duration::from_secs(86_400)))
                .bind(&hashes[k][..])
                .execute(&mut *tx)
                .await?;
                publish(&mut tx, now, &hashes[k]).await?;
                tx.commit().await?;
                hashes[k] = new;
            }
            RawWork::Revoke(ids) => {
                let id = ids.get(n).ok_or_else(|| unexpected("no session left"))?;
                let mut tx = self.pool.begin().await?;
                let hash: Option<Vec<u8>> = sqlx::query_scalar(
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = 'revoked'
                     WHERE id = $2 AND revoked_at IS NULL RETURNING token_hash",
                )
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let hash = hash.ok_or_else(|| unexpected("a live session was not revoked"))?;
                publish(&mut tx, now, &hash).await?;
                tx.commit().await?;
            }
            RawWork::Get(keys, zstd) => {
                let key = &keys[crate::sessions::pick(spread, keys.len())];
                let row = sqlx::query("SELECT value, size FROM cache_entries WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| unexpected("a miss"))?;
                let (value, size): (Vec<u8>, i64) = (row.try_get(0)?, row.try_get(1)?);
                let value = zstd
                    .decompress(&value, usize::try_from(size).unwrap_or(0))
                    .map_err(crate::cache::zstd_error)?;
                std::hint::black_box(value);
            }
            RawWork::Set(keys, values, zstd) => {
                let key = std::slice::from_ref(&keys[crate::sessions::pick(spread, keys.len())]);
                let value = std::slice::from_ref(&values[n % values.len()]);
                raw_upsert(&self.pool, zstd, key, value).await?;
            }
            RawWork::Create => {
                let user = format!("raw-user-{}-{i}", self.id);
                let id = uuid::Uuid::now_v7().to_string();
                let token = crate::sessions::timed_key()?;
                let expires = now.saturating_add(std::time::Duration::from_secs(7 * 86_400));
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO session_users (user_id) VALUES ($1)
                     ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id",
                )
                .bind(&user)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "SELECT id, token_hash, last_seen_at, idle_timeout_secs FROM sessions
                     WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2",
                )
                .bind(&user)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, client_meta, data,
                         created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at)
                     VALUES ($1, $2, $2, $3, $4, $5, $6, $6, 43200, $7, $7)",
                )
                .bind(&id)
                .bind(&token[..])
                .bind(&user)
                .bind(vec![0u8; sealed_len(r#"{"route":"/mcp"}"#.len())])
                .bind(vec![0u8; sealed_len(2)])
                .bind(now)
                .bind(expires)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            RawWork::Validate(tokens) => {
                let token = &tokens[crate::sessions::pick(i + self.id as u64 * 7, tokens.len())];
                let found = sqlx::query(
                    "SELECT id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta,
                         created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at,
                         revoked_at, revoked_reason
                     FROM sessions WHERE token_hash = $1",
                )
                .bind(&crate::sessions::token_key(token)[..])
                .fetch_optional(&self.pool)
                .await?;
                if found.is_none() {
                    return Err(unexpected("a live session was not found"));
                }
            }
            RawWork::Shared(subjects) => {
                let rate = PLENTY / 3_600_000.0;
                let taken = sqlx::query(
                    "INSERT INTO token_buckets
                         (subject, limit_name, window_secs, tokens, last_refill_at, updated_at)
                     VALUES ($1, 'bench', 3600, $2 - 1, $3, $3)
                     ON CONFLICT (subject, limit_name, window_secs) DO UPDATE SET
                         tokens = least($2, token_buckets.tokens + greatest(0::float8,
                             ($4 - round(extract(epoch FROM token_buckets.last_refill_at) * 1000))::float8)
                             * $5) - 1,
                         last_refill_at = greatest(token_buckets.last_refill_at, $3),
                         updated_at = $3
                     WHERE least($2, token_buckets.tokens + greatest(0::float8,
                             ($4 - round(extract(epoch FROM token_buckets.last_refill_at) * 1000))::float8)
                             * $5) >= 1
                     RETURNING tokens",
                )
                .bind(&subjects[n % subjects.len()])
                .bind(PLENTY)
                .bind(now)
                .bind(now.as_millis())
                .bind(rate)
                .fetch_optional(&self.pool)
                .await?;
                if taken.is_none() {
                    return Err(unexpected("a check was refused"));
                }
            }
            RawWork::Patch(users) => {
                let user = &users[n % users.len()];
                let mut tx = self.pool.begin().await?;
                let lock = "SELECT document FROM preferences WHERE user_id = $1 FOR UPDATE";
                let mut row = sqlx::query(lock)
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?;
                if row.is_none() {
                    let made = sqlx::query(
                        "INSERT INTO preferences (user_id, document, schema_version, created_at,
                             updated_at)
                         VALUES ($1, '\\x7b7d', 1, $2, $2) ON CONFLICT (user_id) DO NOTHING",
                    )
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if made.rows_affected() == 0 {
                        row = sqlx::query(lock)
                            .bind(user)
                            .fetch_optional(&mut *tx)
                            .await?;
                    }
                }
                let mut document: serde_json::Value = match row {
                    Some(r) => serde_json::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?,
                    None => json!({}),
                };
                document["audio_quality"] = json!(if i.is_multiple_of(2) { "LOW" } else { "HIGH" });
                sqlx::query(
                    "UPDATE preferences SET document = $2, schema_version = 1, updated_at = $3
                     WHERE user_id = $1",
                )
                .bind(user)
                .bind(document.to_string().into_bytes())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            RawWork::AppendDurable => {
                let details = ours::event_details().to_string();
                let id = uuid::Uuid::now_v7();
                let mut tx = self.pool.begin().await?;
                let head = sqlx::query("SELECT seq, chain_digest FROM audit_head FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await?;
                let (seq, prev): (i64, Vec<u8>) = (head.try_get(0)?, head.try_get(1)?);
                let content: [u8; 32] = Sha256::digest(details.as_bytes()).into();
                let mut chain = Sha256::new();
                chain.update(&prev);
                chain.update((seq + 1).to_be_bytes());
                chain.update(content);
                let chain: [u8; 32] = chain.finalize().into();
                sqlx::query(
                    "INSERT INTO audit_events (seq, id, occurred_at, user_id, kind, action, details,
                         gdpr_category, content_digest, chain_digest)
                     VALUES ($1, $2, $3, 'bench', 'api_call', 'search', $4, 'necessary', $5, $6)",
                )
                .bind(seq + 1)
                .bind(id)
                .bind(now)
                .bind(details.into_bytes())
                .bind(&content[..])
                .bind(&chain[..])
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE audit_head SET seq = $1, chain_digest = $2")
                    .bind(seq + 1)
                    .bind(&chain[..])
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// One change-feed row and its notification, as the vault publishes a
/// changed token.
async fn publish(
    conn: &mut sqlx::PgConnection,
    now: statevault::Timestamp,
    hash: &[u8],
) -> Result<()> {
    sqlx::query(
        "WITH written AS (
             INSERT INTO changes (origin, at, facet, kind, target)
             VALUES (0, $1, 'sessions', 'token', $2)
         )
         SELECT pg_notify('statevault_changes', '')",
    )
    .bind(now)
    .bind(hash)
    .execute(conn)
    .await?;
    Ok(())
}

fn unexpected(what: &str) -> Error {
    Error::InvalidInput {
        what: "bench",
        reason: what.into(),
    }
}

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
use statevault::{Clock, Error, KeySource, NewSession, Result, SystemClock, Vault, VaultOptions};

use super::drive::{self, Call};
use super::fixtures::{configure, names};
use super::{Concurrency, Level, Peers, Plan, Workload, named, ours};
use crate::limits::PLENTY;
use crate::sessions::sha256;

/// The workloads that run on PostgreSQL so far, in order.
pub const WORKLOADS: [&str; 5] = [
    "session_create",
    "session_validate",
    "ratelimit_check_shared",
    "prefs_patch",
    "audit_append_durable",
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
        let tokens = if name == "session_validate" {
            live_tokens(options(), 1000).await?
        } else {
            Arc::from([])
        };
        let mut levels = Vec::new();
        for &n in plan.levels {
            let works = (0..n)
                .map(|c| our_work(name, &format!("v{n}"), c, &tokens))
                .collect();
            let statevault = ours::run(options(), works, plan.run(), u64::MAX).await?;
            let callers = (0..n)
                .map(|c| RawCaller {
                    pool: raw.clone(),
                    id: c,
                    work: raw_work(name, &format!("r{n}"), c, &tokens),
                })
                .collect();
            let (_, baseline) = drive::tasks(callers, plan.run(), u64::MAX).await?;
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
        "TRUNCATE sessions, session_users, token_buckets, violations, audit_events, preferences",
    )
    .execute(pool)
    .await?;
    sqlx::query("UPDATE audit_head SET seq = 0, chain_digest = $1")
        .bind(&[0u8; 32][..])
        .execute(pool)
        .await?;
    Ok(())
}

/// Tokens of `count` live sessions, created through the vault.
async fn live_tokens(options: VaultOptions, count: usize) -> Result<Arc<[String]>> {
    let vault = Vault::open(options).await?;
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let issued = vault
            .sessions()
            .create(NewSession::new(format!("shared-{i}")))
            .await?;
        tokens.push(issued.token.expose().to_owned());
    }
    vault.close().await?;
    Ok(tokens.into())
}

fn our_work(name: &str, prefix: &str, caller: usize, tokens: &Arc<[String]>) -> ours::Work {
    match name {
        "session_create" => ours::Work::Create,
        "session_validate" => ours::Work::Validate(tokens.clone()),
        "ratelimit_check_shared" => ours::Work::Check(names(prefix, caller, 64)),
        "prefs_patch" => ours::Work::Patch(names(prefix, caller, 16)),
        _ => ours::Work::AppendDurable,
    }
}

fn ours_does(name: &str) -> &'static str {
    match name {
        "session_create" => {
            "sessions().create for a new user (lock the user's row, count, insert: one transaction; sealed client_meta and data)"
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
        "session_validate" => "SHA-256 of the token, SELECT of the same 14 columns by token hash",
        "ratelimit_check_shared" => {
            "INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING, one window, refill in SQL (no penalty check)"
        }
        "prefs_patch" => {
            "BEGIN; SELECT the document FOR UPDATE (insert if missing); JSON merge; UPDATE; COMMIT (no type check)"
        }
        _ => {
            "BEGIN; SELECT the head FOR UPDATE; INSERT the event with its SHA-256 digests; UPDATE the head; COMMIT"
        }
    }
}

/// What a raw caller does on each call.
enum RawWork {
    Create,
    Validate(Arc<[String]>),
    Shared(Vec<String>),
    Patch(Vec<String>),
    AppendDurable,
}

fn raw_work(name: &str, prefix: &str, caller: usize, tokens: &Arc<[String]>) -> RawWork {
    match name {
        "session_create" => RawWork::Create,
        "session_validate" => RawWork::Validate(tokens.clone()),
        "ratelimit_check_shared" => RawWork::Shared(names(prefix, caller, 64)),
        "prefs_patch" => RawWork::Patch(names(prefix, caller, 16)),
        _ => RawWork::AppendDurable,
    }
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
        match &self.work {
            RawWork::Create => {
                let user = format!("raw-user-{}-{i}", self.id);
                let id = uuid::Uuid::now_v7().to_string();
                let token = sha256(format!("raw-token-{id}").as_bytes());
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
                .bind(&sha256(token.as_bytes())[..])
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

fn unexpected(what: &str) -> Error {
    Error::InvalidInput {
        what: "bench",
        reason: what.into(),
    }
}

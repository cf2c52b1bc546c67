//! A PostgreSQL database made ready for statevault (feature `postgres`).
//!
//! A [`Vault`](crate::Vault) opened on a `postgres://` URL keeps its
//! state here, for services with many instances; each facet's
//! `postgres.rs` holds its statements. This module holds what they share:
//! the schema (`migrations/postgres`, in the schema `statevault`) and its
//! migrations (`migrate.rs`), the pool, the key check and the sealer every
//! sealed value relies on, the change feed's transport (`feed.rs`), and
//! what `check` and `rekey` do across the facets' sealed columns
//! (`check.rs`, `reseal.rs`). `statevault init`, `migrate` and `info` use
//! [`Database`] directly.
//!
//! # The key
//!
//! What must not be read by whoever reads the database is sealed with
//! keys derived from the vault key (see `seal.rs`). [`Database::init`]
//! stores a sealed check value in `vault_meta`; opening the database with
//! another key fails with [`Error::WrongKey`] before anything is written. A
//! passphrase is stretched with PBKDF2-HMAC-SHA512 (256 000 iterations) and a
//! random salt kept beside the check. The key comes from `STATEVAULT_KEY` or
//! a key file ([`KeySource::File`]); there is no `<db>.key` beside a URL.
//!
//! No advisory lock is taken (CockroachDB and YugabyteDB speak the same
//! protocol without them): two instances initialising at once may both
//! start the same migration, and the one that loses finds it applied.
//!
//! ```no_run
//! # async fn run() -> statevault::Result<()> {
//! use statevault::KeySource;
//! use statevault::postgres::Database;
//!
//! let (db, _created) =
//!     Database::init("postgres://app@db.internal/state", &KeySource::File("vault.key".into()))
//!         .await?;
//! println!("{:?}", db.info().await?.tables);
//! db.close().await;
//! # Ok(())
//! # }
//! ```

mod check;
pub(crate) mod feed;
mod migrate;
pub(crate) mod reseal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use zeroize::Zeroizing;

use crate::seal::Sealer;
use crate::store::MigrationStatus;
use crate::{Error, KEY_ENV, Key, KeySource, Result};
use migrate::{applied, migrate};

/// The schema statevault's tables go into.
pub const SCHEMA: &str = "statevault";

/// What the key check seals: its plaintext, and the row it is sealed for.
const CHECK_PLAINTEXT: &[u8] = b"statevault seal check";
const CHECK_ROW: &str = "seal_check";
const SALT_ROW: &str = "seal_salt";
/// The sealed keyed-hash secret's row.
const HASH_SALT_ROW: &str = "hash_salt";

/// A PostgreSQL database prepared for statevault, with its key proven.
pub struct Database {
    pool: PgPool,
    /// Names this handle's rows where each instance writes its own
    /// (metrics): random per open.
    instance: String,
    /// The change feed and its listener task, once a vault started them.
    feed: std::sync::OnceLock<(std::sync::Arc<feed::PgFeed>, tokio::task::JoinHandle<()>)>,
    /// The URL without its password, for messages.
    url: String,
    /// The key's sealer; its first user is the key check.
    sealer: Sealer,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What [`Database::info`] reports.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct DatabaseInfo {
    /// The database's URL, without its password.
    pub url: String,
    /// The server's version (`SHOW server_version`).
    pub server_version: String,
    /// The schema holding statevault's tables.
    pub schema: String,
    /// The newest migration applied.
    pub schema_version: i64,
    /// The newest migration this build has.
    pub latest_schema_version: i64,
    /// When `init` first prepared the database.
    pub created_at: Option<String>,
    /// Rows per table of the schema.
    pub tables: BTreeMap<String, i64>,
}

impl Database {
    /// Creates the schema if missing, applies pending migrations and stores
    /// the key check, or proves the key against the one stored. A key file
    /// named by `key` that does not exist is created with a new random raw
    /// key (mode 0600). Returns whether this call created the key check
    /// (a database new to statevault). Idempotent.
    pub async fn init(url: &str, key: &KeySource) -> Result<(Database, bool)> {
        Database::init_with(url, key, ADMIN_CONNECTIONS).await
    }

    /// [`Database::init`] with a pool of `connections`.
    pub(crate) async fn init_with(
        url: &str,
        key: &KeySource,
        connections: u32,
    ) -> Result<(Database, bool)> {
        let key = resolve_key(key, true)?;
        let (pool, instance) = connect(url, connections).await?;
        let url = crate::vault::redact_url(url);
        create_schema(&pool).await?;
        // Prepared before: another key must not migrate or write here.
        let was_prepared = prepared(&pool).await?;
        let earlier = if was_prepared && meta(&pool, CHECK_ROW).await?.is_some() {
            Some(Database::proven(pool.clone(), url.clone(), &key, instance.clone()).await?)
        } else if was_prepared && meta(&pool, HASH_SALT_ROW).await?.is_some() {
            // Values sealed under some key, but no check to prove this one
            // against: a check written now would lock that key out.
            pool.close().await;
            return Err(missing_check());
        } else {
            None
        };
        migrate(&pool).await?;
        // The server's clock: the one every instance shares.
        let created = sqlx::query(
            "INSERT INTO vault_meta (key, value, updated_at) \
             VALUES ('created_at', to_char(now() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), now()) \
             ON CONFLICT (key) DO NOTHING",
        )
        .execute(&pool)
        .await?
        .rows_affected()
            == 1;
        if let Some(db) = earlier {
            return Ok((db, created));
        }
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Internal {
            detail: format!("no randomness for a salt: {e}"),
        })?;
        insert_meta(&pool, SALT_ROW, crate::key::hex(&salt).as_str()).await?;
        // Another init may have stored its salt and check first: the sealer
        // uses the stored salt, and the key must open the stored check.
        let sealer = sealer(&pool, &url, &key).await?;
        let check = sealer
            .table("vault_meta")
            .seal(CHECK_ROW.as_bytes(), CHECK_PLAINTEXT)?;
        insert_meta(&pool, CHECK_ROW, crate::key::hex(&check).as_str()).await?;
        let db = Database::new(pool, url, sealer, instance);
        db.prove_key(&key).await?;
        Ok((db, created))
    }

    /// Opens a database `init` prepared, proving the key; applies no
    /// migration. A database with no statevault schema is
    /// [`Error::Missing`].
    pub async fn open(url: &str, key: &KeySource) -> Result<Database> {
        Database::open_with(url, key, ADMIN_CONNECTIONS).await
    }

    /// [`Database::open`] with a pool of `connections`.
    pub(crate) async fn open_with(
        url: &str,
        key: &KeySource,
        connections: u32,
    ) -> Result<Database> {
        let key = resolve_key(key, false)?;
        let (pool, instance) = connect(url, connections).await?;
        let url = crate::vault::redact_url(url);
        if !prepared(&pool).await? {
            pool.close().await;
            return Err(Error::Missing {
                path: PathBuf::from(format!("{url} (schema {SCHEMA})")),
            });
        }
        // As the file: a schema from a newer build, or with a migration that
        // differs from this build's, is refused before anything is read.
        if let Err(e) = applied(&pool).await.and_then(|applied| applied.validate()) {
            pool.close().await;
            return Err(e);
        }
        Database::proven(pool, url, &key, instance).await
    }

    /// The database on `pool`, once `key` has opened its stored check (a
    /// passphrase is stretched once, here).
    async fn proven(pool: PgPool, url: String, key: &Key, instance: String) -> Result<Database> {
        let sealer = sealer(&pool, &url, key).await?;
        let db = Database::new(pool, url, sealer, instance);
        db.prove_key(key).await?;
        Ok(db)
    }

    /// Every migration this build has, and whether the database has it.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        Ok(applied(&self.pool).await?.status())
    }

    /// Applies pending migrations; how many were pending.
    pub async fn migrate(&self) -> Result<usize> {
        let pending = self
            .migration_status()
            .await?
            .iter()
            .filter(|m| !m.applied)
            .count();
        migrate(&self.pool).await?;
        Ok(pending)
    }

    /// The server, the schema's version and rows per table.
    pub async fn info(&self) -> Result<DatabaseInfo> {
        let applied = applied(&self.pool).await?;
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pool)
            .await?;
        let created_at: Option<String> =
            sqlx::query_scalar("SELECT value FROM vault_meta WHERE key = 'created_at'")
                .fetch_optional(&self.pool)
                .await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
        )
        .bind(SCHEMA)
        .fetch_all(&self.pool)
        .await?;
        let mut tables = BTreeMap::new();
        for name in names {
            // The names come from the catalog; quoted, they are identifiers.
            let sql = format!(
                "SELECT count(*) FROM {SCHEMA}.\"{}\"",
                name.replace('"', "\"\"")
            );
            let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await?;
            tables.insert(name, rows);
        }
        Ok(DatabaseInfo {
            url: self.url.clone(),
            server_version,
            schema: SCHEMA.to_owned(),
            schema_version: applied.version(),
            latest_schema_version: applied.latest(),
            created_at,
            tables,
        })
    }

    /// Closes every connection.
    pub async fn close(self) {
        self.shut().await;
    }

    fn new(pool: PgPool, url: String, sealer: Sealer, instance: String) -> Database {
        Database {
            pool,
            instance,
            feed: std::sync::OnceLock::new(),
            url,
            sealer,
        }
    }

    /// Starts the change feed's listener (once; the schema must be
    /// current) for the vault whose records carry `origin`.
    pub(crate) async fn start_feed(&self, origin: i64) -> Result<&feed::PgFeed> {
        if self.feed.get().is_none() {
            let started = feed::PgFeed::start(&self.pool, origin).await?;
            if let Err((_, task)) = self.feed.set(started) {
                task.abort();
            }
        }
        self.feed().ok_or_else(|| Error::Internal {
            detail: "the change feed did not start".into(),
        })
    }

    /// The change feed, once started.
    pub(crate) fn feed(&self) -> Option<&feed::PgFeed> {
        self.feed.get().map(|(feed, _)| &**feed)
    }

    /// Stops the feed's listener and closes every connection.
    pub(crate) async fn shut(&self) {
        if let Some((_, task)) = self.feed.get() {
            task.abort();
        }
        self.pool.close().await;
    }

    /// Whether migrations are pending.
    pub(crate) async fn pending(&self) -> Result<bool> {
        Ok(applied(&self.pool).await?.pending())
    }

    /// How many other statevault handles (instances, CLI commands) have a
    /// connection open to this database now, as `pg_stat_activity` shows
    /// them (by `application_name`, see `connect`).
    pub(crate) async fn others(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE $1
               AND application_name <> $2",
        )
        .bind(format!("{APPLICATION} %"))
        .bind(format!("{APPLICATION} {}", self.instance))
        .fetch_one(&self.pool)
        .await?)
    }

    /// The sealer of `key` for this database (its stored salt stretches a
    /// passphrase), for re-sealing under a new key.
    pub(crate) async fn sealer_for(&self, key: &Key) -> Result<Sealer> {
        sealer(&self.pool, &self.url, key).await
    }

    /// This handle's name in the rows each instance writes its own of.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The URL without its password.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool, its search path on [`SCHEMA`].
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The key's sealer.
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// A fact from `vault_meta`.
    pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>> {
        meta(&self.pool, key).await
    }

    /// Stores a `vault_meta` fact, replacing what was there.
    pub(crate) async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The keyed-hash secret ([`crate::Vault::keyed_hash`]): 32 random
    /// bytes, sealed in `vault_meta`, made by the first instance that asks.
    pub(crate) async fn hash_salt(&self) -> Result<Zeroizing<[u8; 32]>> {
        let seal = self.sealer.table("vault_meta");
        if meta(&self.pool, HASH_SALT_ROW).await?.is_none() {
            let mut salt = Zeroizing::new([0u8; 32]);
            getrandom::fill(salt.as_mut_slice()).map_err(|e| Error::Internal {
                detail: format!("no randomness for a salt: {e}"),
            })?;
            let sealed = seal.seal(HASH_SALT_ROW.as_bytes(), salt.as_slice())?;
            insert_meta(&self.pool, HASH_SALT_ROW, crate::key::hex(&sealed).as_str()).await?;
        }
        let bad = |detail: &str| Error::BadData {
            what: "vault_meta".into(),
            detail: format!("{HASH_SALT_ROW} {detail}"),
        };
        let sealed = meta(&self.pool, HASH_SALT_ROW)
            .await?
            .and_then(|hex| unhex(&hex))
            .ok_or_else(|| bad("is missing or not hex"))?;
        let plain = seal
            .open(HASH_SALT_ROW.as_bytes(), &sealed)
            .map_err(|_| bad("does not open with this key"))?;
        let salt: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| bad("is not 32 bytes"))?;
        Ok(Zeroizing::new(salt))
    }

    /// Opens the stored key check with this database's sealer.
    async fn prove_key(&self, key: &Key) -> Result<()> {
        let wrong = || Error::WrongKey {
            path: PathBuf::from(&self.url),
            key: key.describe(),
        };
        let check = meta(&self.pool, CHECK_ROW)
            .await?
            .ok_or_else(missing_check)?;
        let check = unhex(&check).ok_or_else(|| Error::BadData {
            what: "vault_meta".into(),
            detail: "the key check is not hex".into(),
        })?;
        match self
            .sealer
            .table("vault_meta")
            .open(CHECK_ROW.as_bytes(), &check)
        {
            Ok(plain) if plain.as_slice() == CHECK_PLAINTEXT => Ok(()),
            _ => Err(wrong()),
        }
    }
}

/// The key check is gone (deleted by hand, or an `init` stopped before
/// writing it): no key can be proven, and none is taken on trust.
fn missing_check() -> Error {
    Error::BadData {
        what: format!("vault_meta {CHECK_ROW}"),
        detail: "the key check is missing, so no key can be proven against it: if an `init` \
                 was interrupted, run it again; if the row was deleted, restore it from a \
                 backup (pg_dump). Nothing was written"
            .into(),
    }
}

/// Whether the schema has statevault's tables (an `init` got that far).
async fn prepared(pool: &PgPool) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('vault_meta') IS NOT NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// The key named by `source`; `creating` lets a missing key file be made.
fn resolve_key(source: &KeySource, creating: bool) -> Result<Key> {
    let needed = || Error::InvalidKey {
        reason: format!(
            "a PostgreSQL database (postgres://) needs its key from --key-file or {KEY_ENV}: its values are always sealed"
        ),
    };
    match source {
        KeySource::Key(key) => Ok(key.clone()),
        KeySource::File(path) if creating && !path.exists() => {
            crate::key::create_key_file(path)?.ok_or_else(needed)
        }
        KeySource::File(path) => Key::read_file(path),
        KeySource::Auto => match std::env::var_os(KEY_ENV) {
            Some(_) => KeySource::Auto
                .resolve(std::path::Path::new(""), false)?
                .ok_or_else(needed),
            None => Err(needed()),
        },
        KeySource::None => Err(needed()),
    }
}

/// A small pool on `url`, with statevault's schema first in the search path,
/// and this handle's instance name (random, returned beside the pool) in
/// every connection's `application_name` (`statevault <instance>`), so
/// that `pg_stat_activity` tells the instances apart (and [`Database::others`]
/// counts the other ones). One connection is made first, alone, so that a
/// server that is down or refuses the login fails at once with what it said
/// (a pool would retry until its acquire timeout, then say only that it
/// timed out).
async fn connect(url: &str, connections: u32) -> Result<(PgPool, String)> {
    let instance = uuid::Uuid::now_v7().to_string();
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("database URL", e.to_string()))?
        .options([("search_path", SCHEMA)])
        .application_name(&format!("{APPLICATION} {instance}"));
    // The server's own message: sqlx's display of it adds the line of the
    // server's C source that raised it, which means nothing to an operator.
    let unreachable = |e: sqlx::Error| Error::Unreachable {
        url: crate::vault::redact_url(url),
        detail: match e.as_database_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        },
    };
    let first = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| Error::Unreachable {
            url: crate::vault::redact_url(url),
            detail: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(unreachable)?;
    sqlx::Connection::close(first).await.map_err(Error::from)?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        // No reaper (see the SQLite pools in `store`: sqlx#3645 spins it
        // forever); connections stay open for the vault's life.
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    Ok((pool, instance))
}

/// The first word of every statevault connection's `application_name`.
const APPLICATION: &str = "statevault";

/// The pool of [`Database::init`] and [`Database::open`] (administration:
/// a few statements at a time).
const ADMIN_CONNECTIONS: u32 = 4;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates statevault's schema if missing. Two instances creating it at
/// once may both find it missing; the one that loses finds it made.
async fn create_schema(pool: &PgPool) -> Result<()> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}");
    match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
    {
        Err(e) if e.as_database_error().and_then(|db| db.code()).as_deref() == Some("23505") => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
        done => {
            done?;
        }
    }
    Ok(())
}

async fn meta(pool: &PgPool, key: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM vault_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Stores a `vault_meta` value unless one is there (the first `init` wins).
async fn insert_meta(pool: &PgPool, key: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO vault_meta (key, value, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}

/// The sealer for `key`: a raw key as it is, a passphrase stretched with the
/// database's salt.
async fn sealer(pool: &PgPool, url: &str, key: &Key) -> Result<Sealer> {
    let salt = meta(pool, SALT_ROW).await?.and_then(|hex| unhex(&hex));
    let salt: [u8; 16] = salt
        .and_then(|s| s.as_slice().try_into().ok())
        .ok_or_else(|| Error::BadData {
            what: "vault_meta".into(),
            detail: format!("{url} has no valid seal_salt: run `statevault init`"),
        })?;
    let root = match key.raw_bytes() {
        Some(raw) => raw,
        None => {
            let key = key.clone();
            crate::store::blocking("stretch the passphrase", move || Ok(key.page_key(&salt)))
                .await?
        }
    };
    Ok(Sealer::new(root))
}

/// Lowercase or uppercase hex to bytes; `None` if it is not hex.
fn unhex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::unhex;
    use crate::vault::redact_url as redact;

    #[test]
    fn a_redacted_url_keeps_everything_but_the_password() {
        assert_eq!(
            redact("postgres://app:hunter2@db.internal:5432/state?sslmode=require"),
            "postgres://app@db.internal:5432/state?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://db/state?user=app&password=hunter2&host=/run/pg"),
            "postgresql://db/state?user=app&host=/run/pg"
        );
        assert_eq!(redact("postgres://localhost"), "postgres://localhost");
        assert_eq!(redact("postgres://a:b@h/d?password=c"), "postgres://a@h/d");
    }

    #[test]
    fn unhex_reads_hex_and_only_hex() {
        assert_eq!(unhex("00ff10").unwrap().as_slice(), &[0, 255, 16]);
        assert!(unhex("0").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}

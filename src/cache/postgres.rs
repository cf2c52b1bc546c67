//! L2 on PostgreSQL (feature `postgres`): the UNLOGGED `cache_entries` and
//! `cache_tags`. Implements [`CacheBackend`] and [`CacheTx`] with the
//! file's semantics:
//!
//! - A value is compressed as in the file, then sealed (`seal.rs`) with its
//!   key as associated data: a database administrator, a `pg_dump` or a
//!   replica sees no cached value, and a value copied to another key does
//!   not open (it reads as corrupt, and is dropped). `stored_size` counts
//!   the sealed bytes, so the byte cap counts what the table holds.
//! - This process's write transactions take turns (the `writer` lock): an
//!   invalidation waits for a flush under way, as the file's one writer
//!   connection makes it, so the buffer never re-adds what it removed.
//! - Between instances, every statement that writes rows takes their locks
//!   in key order (a multi-row upsert in key order, deletions through an
//!   ordered `FOR UPDATE` subquery), so two instances flushing and
//!   invalidating at once never deadlock. Last-access times, expiry sweeps
//!   and evictions skip the rows another instance holds (`SKIP LOCKED`):
//!   they are bookkeeping, and waiting for them would only slow both.
//! - A counter's first increment inserts its row, locked, before it reads
//!   it, so two instances creating one counter at once take turns.
//! - Every write publishes its change-feed records in its transaction, as
//!   in the file (see `backend.rs`); the notification reaches the other
//!   instances at the commit.

use std::sync::Arc;

use sqlx::Row as _;
use sqlx::postgres::PgRow;
use tokio::sync::{Mutex, MutexGuard};

use super::backend::{
    CacheBackend, CacheTx, CounterRow, Filter, Found, KEYS_PER_RECORD, REMOVED, Row, SET,
    key_digest, pack_digests, statements,
};
use super::codec::decode;
use super::l1::Meta;
use super::sqlite::INLINE_VALUE_BYTES;
use super::types::NamespaceStats;
use crate::core::Core;
use crate::core::feed::{Facet, Record};
use crate::postgres::Database;
use crate::postgres::reseal::Sealed;
use crate::seal::TableSealer;
use crate::{Error, Result, Timestamp};

/// The table whose key seals the values.
const TABLE: &str = "cache_entries";

/// Rows per multi-row statement: the rows travel as arrays, so a statement
/// of many rows costs one round trip.
const ROWS_PER_STATEMENT: usize = 1000;

/// A time given as milliseconds since the epoch (`$n::int8`), as SQL.
macro_rules! millis {
    ($e:literal) => {
        concat!(
            "('epoch'::timestamptz + ",
            $e,
            " * interval '1 millisecond')"
        )
    };
}

/// L2 on a PostgreSQL database.
pub(crate) struct Postgres<'a> {
    core: &'a Core,
    db: &'a Database,
    writer: &'a Mutex<()>,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(core: &'a Core, db: &'a Database, writer: &'a Mutex<()>) -> Self {
        Postgres { core, db, writer }
    }
}

/// The sealed column, for re-sealing under a new key.
pub(crate) const SEALED: &[Sealed] = &[Sealed {
    table: TABLE,
    key: "key",
    uuid_key: false,
    column: "value",
    aad,
}];

/// The associated data of a key's sealed value.
fn aad(key: &str) -> Vec<u8> {
    [key.as_bytes(), b"\0value"].concat()
}

/// A write transaction, holding this process's turn to write.
pub(crate) struct PgTx<'a> {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    core: &'a Core,
    sealer: TableSealer,
    _turn: MutexGuard<'a, ()>,
}

impl PgTx<'_> {
    /// Publishes that the keys with these digests changed, in records of
    /// `kind`.
    async fn publish_keys(&mut self, kind: &'static str, digests: &[u64]) -> Result<()> {
        let packed: Vec<Vec<u8>> = digests.chunks(KEYS_PER_RECORD).map(pack_digests).collect();
        let records: Vec<Record<'_>> = packed
            .iter()
            .map(|target| Record { kind, target })
            .collect();
        self.core
            .publish_pg(&mut self.tx, Facet::Cache, &records)
            .await
    }

    /// Inserts or replaces one statement's rows (sorted by key), then
    /// replaces their tags.
    async fn upsert(&mut self, chunk: &[&Row]) -> Result<i64> {
        let mut sealed = Vec::with_capacity(chunk.len());
        for r in chunk {
            sealed.push(self.sealer.seal(&aad(&r.key), &r.stored)?);
        }
        let keys: Vec<&str> = chunk.iter().map(|r| &*r.key).collect();
        let items = chunk.iter().map(|r| &r.pending.item);
        sqlx::query(concat!(
            "INSERT INTO cache_entries (key, namespace, user_id, codec, size, stored_size,
                 created_at, expires_at, last_access_at, tags, value)
             SELECT key, namespace, user_id, codec, size, stored_size, ",
            millis!("created"),
            ", ",
            millis!("expires"),
            ", ",
            millis!("created"),
            ", string_to_array(tags, E'\\x1f'), value
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                         $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::bytea[])
                  AS r(key, namespace, user_id, codec, size, stored_size, created, expires,
                       tags, value)
             ON CONFLICT (key) DO UPDATE SET namespace = excluded.namespace,
                 user_id = excluded.user_id, codec = excluded.codec, size = excluded.size,
                 stored_size = excluded.stored_size, created_at = excluded.created_at,
                 expires_at = excluded.expires_at, last_access_at = excluded.last_access_at,
                 tags = excluded.tags, value = excluded.value"
        ))
        .bind(&keys)
        .bind(
            items
                .clone()
                .map(|i| &*i.meta.namespace)
                .collect::<Vec<_>>(),
        )
        .bind(
            items
                .clone()
                .map(|i| i.meta.user.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.codec.as_str()).collect::<Vec<_>>())
        .bind(
            items
                .clone()
                .map(|i| i.value.len() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(sealed.iter().map(|s| s.len() as i64).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.pending.created_at)
                .collect::<Vec<_>>(),
        )
        .bind(items.clone().map(|i| i.expires_at).collect::<Vec<_>>())
        .bind(
            items
                .clone()
                .map(|i| (!i.meta.tags.is_empty()).then(|| i.meta.tags.join("\u{1f}")))
                .collect::<Vec<_>>(),
        )
        .bind(&sealed)
        .execute(&mut *self.tx)
        .await?;
        // The rows are locked now: their tags change under those locks.
        sqlx::query("DELETE FROM cache_tags WHERE key = ANY($1)")
            .bind(&keys)
            .execute(&mut *self.tx)
            .await?;
        let (tags, tagged): (Vec<&str>, Vec<&str>) = chunk
            .iter()
            .flat_map(|r| r.pending.item.meta.tags.iter().map(|t| (&**t, &*r.key)))
            .unzip();
        if !tags.is_empty() {
            sqlx::query(
                "INSERT INTO cache_tags (tag, key) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(tags)
            .bind(tagged)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(sealed.iter().map(|s| s.len() as i64).sum())
    }
}

impl<'a> CacheBackend for Postgres<'a> {
    type Tx = PgTx<'a>;

    async fn begin(&self) -> Result<PgTx<'a>> {
        let turn = self.writer.lock().await;
        Ok(PgTx {
            tx: self.db.pool().begin().await?,
            core: self.core,
            sealer: self.db.sealer().table(TABLE),
            _turn: turn,
        })
    }

    /// One round trip; an expired row's value is not sent. A value larger
    /// than [`INLINE_VALUE_BYTES`] is opened and decompressed on the
    /// blocking pool, as the file does.
    async fn read(&self, key: &str, now: Timestamp, max: usize) -> Result<Option<Found>> {
        let row = sqlx::query(
            "SELECT codec, size, expires_at, namespace, user_id, tags, last_access_at,
                    CASE WHEN expires_at IS NULL OR expires_at > $2 THEN value END
             FROM cache_entries WHERE key = $1",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires_at: Option<Timestamp> = row.try_get(2)?;
        if expires_at.is_some_and(|at| at <= now) {
            return Ok(Some(Found::Expired));
        }
        let size: i64 = row.try_get(1)?;
        let codec: String = row.try_get(0)?;
        let sealed: Vec<u8> = row.try_get(7)?;
        let sealer = self.db.sealer().table(TABLE);
        let value = if size > INLINE_VALUE_BYTES {
            let key = key.to_owned();
            crate::store::blocking("cache read", move || {
                Ok(unseal(&sealer, &key, &codec, size, &sealed, max))
            })
            .await?
        } else {
            unseal(&sealer, key, &codec, size, &sealed, max)
        };
        let last_access: Timestamp = row.try_get(6)?;
        Ok(Some(Found::Live {
            value,
            expires_at: expires_at.map(Timestamp::as_millis),
            last_access: last_access.as_millis(),
            meta: Meta {
                namespace: row.try_get::<String, _>(3)?.into(),
                user: row.try_get::<Option<String>, _>(4)?.map(Into::into),
                tags: tags(&row, 5)?,
            },
        }))
    }

    async fn exists(&self, key: &str, now: Timestamp) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cache_entries
                            WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2))",
        )
        .bind(key)
        .bind(now)
        .fetch_one(self.db.pool())
        .await?)
    }

    async fn keys_of_user(&self, user: &str) -> Result<Vec<String>> {
        keys_of_user(self.db.pool(), user).await
    }

    async fn namespaces(&self, now: Timestamp) -> Result<Vec<NamespaceStats>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT namespace, count(*), coalesce(sum(size), 0)::int8,
                    coalesce(sum(stored_size), 0)::int8,
                    count(*) FILTER (WHERE expires_at <= $1)
             FROM cache_entries GROUP BY namespace ORDER BY namespace",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(
                |(namespace, entries, value, stored, expired)| NamespaceStats {
                    namespace,
                    entries: n(entries),
                    value_bytes: n(value),
                    stored_bytes: n(stored),
                    expired_entries: n(expired),
                },
            )
            .collect())
    }
}

impl CacheTx for PgTx<'_> {
    async fn write(&mut self, rows: &[Row], touches: &[(Arc<str>, i64)]) -> Result<i64> {
        // Key order: the row locks are taken in it (see the module docs).
        let mut sorted: Vec<&Row> = rows.iter().collect();
        sorted.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut written = 0;
        for chunk in statements(&sorted, ROWS_PER_STATEMENT) {
            written += self.upsert(chunk).await?;
        }
        for chunk in touches.chunks(ROWS_PER_STATEMENT) {
            sqlx::query(concat!(
                "UPDATE cache_entries SET last_access_at = t.at
                 FROM (SELECT key, ",
                millis!("ms"),
                " AS at FROM unnest($1::text[], $2::int8[]) AS v(key, ms)) AS t
                 WHERE cache_entries.key = t.key AND cache_entries.last_access_at < t.at
                   AND cache_entries.key IN (SELECT key FROM cache_entries
                                             WHERE key = ANY($1) FOR UPDATE SKIP LOCKED)"
            ))
            .bind(chunk.iter().map(|(k, _)| &**k).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, at)| *at).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        let digests: Vec<u64> = rows.iter().map(|row| row.pending.item.digest).collect();
        self.publish_keys(SET, &digests).await?;
        Ok(written)
    }

    async fn delete_keys(&mut self, keys: &[&str]) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM cache_entries WHERE key IN (
                 SELECT key FROM cache_entries WHERE key = ANY($1) ORDER BY key COLLATE \"C\" FOR UPDATE)",
        )
        .bind(keys)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        let digests = keys
            .iter()
            .map(|key| key_digest(self.core, key))
            .collect::<Result<Vec<u64>>>()?;
        self.publish_keys(REMOVED, &digests).await?;
        Ok(n)
    }

    async fn delete_where(&mut self, filter: Filter<'_>) -> Result<u64> {
        delete_where(self.core, &mut self.tx, filter).await
    }

    async fn read_for_update(&mut self, key: &str) -> Result<Option<CounterRow>> {
        // A placeholder, locked as it is inserted and never seen: the write
        // that follows replaces it, or the rollback takes it away. Another
        // instance's insert of the same key waits for this one's commit.
        let inserted = sqlx::query(
            "INSERT INTO cache_entries (key, namespace, codec, size, stored_size, created_at,
                 expires_at, last_access_at, value)
             VALUES ($1, '', 'raw', 0, 0, 'epoch', 'epoch', 'epoch', '\\x')
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT codec, value, size, expires_at, tags FROM cache_entries
             WHERE key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get(1)?;
        let value = self
            .sealer
            .open(&aad(key), &sealed)
            .map_err(|_| Error::CacheCorrupt {
                key: key.to_owned(),
                detail: "the sealed value does not open with this vault's key".to_owned(),
            })?;
        Ok(Some(CounterRow {
            codec: row.try_get(0)?,
            value: value.to_vec(),
            size: row.try_get(2)?,
            expires_at: row.try_get(3)?,
            tags: tags(&row, 4)?,
        }))
    }

    async fn set_expiry(
        &mut self,
        key: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE cache_entries SET expires_at = $2, last_access_at = $3
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(key)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n > 0 {
            self.publish_keys(SET, &[key_digest(self.core, key)?])
                .await?;
        }
        Ok(n > 0)
    }

    async fn delete_expired(&mut self, now: Timestamp, limit: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM cache_entries WHERE key IN (
                 SELECT key FROM cache_entries WHERE expires_at <= $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .bind(limit)
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    async fn stored_bytes(&mut self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(sum(stored_size), 0)::int8 FROM cache_entries")
                .fetch_one(&mut *self.tx)
                .await?,
        )
    }

    async fn evict_lru(&mut self, excess: i64, limit: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "WITH oldest AS (
                 SELECT key, stored_size, last_access_at FROM cache_entries
                 ORDER BY last_access_at, key LIMIT $2 FOR UPDATE SKIP LOCKED),
             running AS (
                 SELECT key, stored_size,
                        sum(stored_size) OVER (ORDER BY last_access_at, key) AS total
                 FROM oldest)
             DELETE FROM cache_entries USING running
             WHERE cache_entries.key = running.key AND running.total - running.stored_size < $1
             RETURNING cache_entries.stored_size",
        )
        .bind(excess)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

/// Deletes every row the filter matches, locking them in key order, and
/// publishes the invalidation, inside the caller's transaction on `conn`;
/// how many.
async fn delete_where(
    core: &Core,
    conn: &mut sqlx::PgConnection,
    filter: Filter<'_>,
) -> Result<u64> {
    let (kind, target) = filter.record(core)?;
    core.publish_pg(
        &mut *conn,
        Facet::Cache,
        &[Record {
            kind,
            target: &target,
        }],
    )
    .await?;
    let (matching, name) = match filter {
        Filter::Tag(tag) => (
            "SELECT key FROM cache_entries WHERE key IN (SELECT key FROM cache_tags WHERE tag = $1)",
            Some(tag),
        ),
        Filter::User(user) => (
            "SELECT key FROM cache_entries WHERE user_id = $1",
            Some(user),
        ),
        Filter::Namespace(ns) => (
            "SELECT key FROM cache_entries WHERE namespace = $1",
            Some(ns),
        ),
        Filter::All => ("SELECT key FROM cache_entries WHERE $1::text IS NULL", None),
    };
    let sql = format!(
        "DELETE FROM cache_entries WHERE key IN ({matching} ORDER BY key COLLATE \"C\" FOR UPDATE)"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

/// The keys of `user`'s rows, in order, read with `conn` (the pool, or the
/// transaction of a user's export).
pub(crate) async fn keys_of_user<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    user: &str,
) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT key FROM cache_entries WHERE user_id = $1 ORDER BY key")
            .bind(user)
            .fetch_all(conn)
            .await?,
    )
}

/// Deletes `user`'s entries inside the caller's transaction on `conn` (a
/// user's erasure) and publishes it; how many.
pub(crate) async fn erase_user(
    core: &Core,
    conn: &mut sqlx::PgConnection,
    user: &str,
) -> Result<u64> {
    delete_where(core, conn, Filter::User(user)).await
}

/// The row's value, opened and decoded; what was wrong with it if it does
/// not.
fn unseal(
    sealer: &TableSealer,
    key: &str,
    codec: &str,
    size: i64,
    sealed: &[u8],
    max: usize,
) -> std::result::Result<Arc<[u8]>, String> {
    let stored = sealer
        .open(&aad(key), sealed)
        .map_err(|_| "the sealed value does not open with this vault's key".to_owned())?;
    decode(codec, &stored, size, max).map(Arc::from)
}

/// The `tags` column (`text[]`, NULL for none) back as tags.
fn tags(row: &PgRow, column: usize) -> Result<Box<[Box<str>]>> {
    let tags: Option<Vec<String>> = row.try_get(column)?;
    Ok(tags
        .unwrap_or_default()
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Opens every cached value (`statevault check`).
pub(crate) async fn check_sealed(db: &Database) -> Result<crate::Check> {
    let sealer = db.sealer().table(TABLE);
    db.open_every(
        "sealed_cache_values",
        "SELECT key, value FROM cache_entries WHERE key > $1 ORDER BY key LIMIT $2",
        "",
        |row| {
            let key: String = row.try_get(0)?;
            let failed = match sealer.open(&aad(&key), &row.try_get::<Vec<u8>, _>(1)?) {
                Ok(_) => Vec::new(),
                Err(_) => vec![format!("cache entry {key:?}: the value does not open")],
            };
            Ok((key, failed))
        },
    )
    .await
}

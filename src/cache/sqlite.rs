//! L2 in the vault file: `cache_entries` and `cache_tags`. Every statement
//! of the cache is here, behind [`CacheBackend`] and [`CacheTx`].
//!
//! Point reads run on the caller's thread through the store's rusqlite
//! readers, up to [`INLINE_VALUE_BYTES`]: a larger value (up to the 64 MiB
//! maximum) would hold the caller's thread, often the runtime's only one,
//! for its whole read and decompression. Such a row is read through the sqlx
//! reader and decoded on tokio's blocking pool ([`Sqlite::read_large`]).
//! Everything that writes runs in one `BEGIN IMMEDIATE` transaction on the
//! sqlx writer, batched as multi-row statements, with its change-feed
//! records (see `backend.rs`).

use std::sync::Arc;

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, SqliteConnection, Transaction};

use super::backend::{
    CacheBackend, CacheTx, CounterRow, Filter, Found, KEYS_PER_RECORD, REMOVED, Row, SET,
    key_digest, pack_digests,
};
use super::codec::decode;
use super::l1::Meta;
use super::sqlite_batch::{ROWS_PER_STATEMENT, insert_if_absent, write_sets, write_touches};
use super::types::NamespaceStats;
use crate::core::Core;
use crate::core::feed::{Facet, Record};
use crate::store::{Store, closed_or};
use crate::{Result, Timestamp};

/// The largest value read and decoded on the caller's thread: above it,
/// reading and decoding the value costs about what the hand-off to other
/// threads does, so the hand-off is the cheaper thing for the runtime, and a
/// 64 MiB value no longer holds its thread for its whole read and
/// decompression.
pub(crate) const INLINE_VALUE_BYTES: i64 = 64 << 10;

/// The columns a point read takes; `value` comes last, so the others are
/// read without its pages.
const POINT_READ: &str = "SELECT codec, size, expires_at, namespace, user_id, tags, value, \
                          last_access_at FROM cache_entries WHERE key = ?1";

/// L2 in the vault file.
pub(crate) struct Sqlite<'a> {
    core: &'a Core,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        Sqlite { core }
    }

    /// The vault file's connections.
    fn store(&self) -> Result<&'a Store> {
        self.core.store()
    }

    /// The point read of a row too large to read on the caller's thread:
    /// through the sqlx reader, decoded on the blocking pool.
    async fn read_large(&self, key: &str, now: Timestamp, max: usize) -> Result<Option<Found>> {
        let row = sqlx::query(POINT_READ)
            .bind(key)
            .fetch_optional(self.store()?.sqlx_reader())
            .await
            .map_err(closed_or)?;
        let Some(row) = row else {
            return Ok(None);
        };
        crate::store::blocking("cache read", move || found(&row, now, max).map(Some)).await
    }
}

/// What the point read on the caller's thread did.
enum Inline {
    /// Read the row (or found none).
    Read(Option<Found>),
    /// Found a live row whose value is too large to read there, and did
    /// not read it: [`Sqlite::read_large`] does.
    Large,
}

/// A write transaction on the sqlx writer (`BEGIN IMMEDIATE`), and the
/// core it publishes its change-feed records through.
pub(crate) struct SqliteTx<'a> {
    tx: Transaction<'static, sqlx::Sqlite>,
    core: &'a Core,
}

impl SqliteTx<'_> {
    /// Publishes that the keys with these digests changed, in records of
    /// `kind`.
    async fn publish_keys(&mut self, kind: &'static str, digests: &[u64]) -> Result<()> {
        let packed: Vec<Vec<u8>> = digests.chunks(KEYS_PER_RECORD).map(pack_digests).collect();
        let records: Vec<Record<'_>> = packed
            .iter()
            .map(|target| Record { kind, target })
            .collect();
        self.core
            .publish(&mut self.tx, Facet::Cache, &records)
            .await
    }
}

impl<'a> CacheBackend for Sqlite<'a> {
    type Tx = SqliteTx<'a>;

    async fn begin(&self) -> Result<SqliteTx<'a>> {
        Ok(SqliteTx {
            tx: self.store()?.sqlx_transaction().await?,
            core: self.core,
        })
    }

    async fn read(&self, key: &str, now: Timestamp, max: usize) -> Result<Option<Found>> {
        match self.store()?.read_here(|conn| read(conn, key, now, max))? {
            Inline::Read(found) => Ok(found),
            Inline::Large => self.read_large(key, now, max).await,
        }
    }

    async fn exists(&self, key: &str, now: Timestamp) -> Result<bool> {
        self.store()?.read_here(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT 1 FROM cache_entries WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            )?;
            stmt.exists(rusqlite::params![key, now])
        })
    }

    async fn keys_of_user(&self, user: &str) -> Result<Vec<String>> {
        self.store()?.read_here(|conn| keys_of_user(conn, user))
    }

    async fn namespaces(&self, now: Timestamp) -> Result<Vec<NamespaceStats>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT namespace, count(*), CAST(total(size) AS INTEGER),
                    CAST(total(stored_size) AS INTEGER),
                    count(*) FILTER (WHERE expires_at IS NOT NULL AND expires_at <= ?1)
             FROM cache_entries GROUP BY namespace ORDER BY namespace",
        )
        .bind(now)
        .fetch_all(self.store()?.sqlx_reader())
        .await
        .map_err(closed_or)?;
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

impl CacheTx for SqliteTx<'_> {
    async fn write(&mut self, rows: &[Row], touches: &[(Arc<str>, i64)]) -> Result<i64> {
        let written = write_sets(&mut self.tx, rows).await?;
        write_touches(&mut self.tx, touches).await?;
        let digests: Vec<u64> = rows.iter().map(|row| row.pending.item.digest).collect();
        self.publish_keys(SET, &digests).await?;
        Ok(written)
    }

    async fn delete_keys(&mut self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for chunk in keys.chunks(ROWS_PER_STATEMENT * 5) {
            let mut q =
                QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM cache_entries WHERE key IN (");
            let mut s = q.separated(", ");
            for k in chunk {
                s.push_bind(*k);
            }
            q.push(")");
            n += crate::store::one_off(&mut q)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        }
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
        let row = sqlx::query(
            "SELECT codec, value, size, expires_at, tags FROM cache_entries WHERE key = ?1",
        )
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?;
        let counter = |r: SqliteRow| -> sqlx::Result<CounterRow> {
            Ok(CounterRow {
                codec: r.try_get(0)?,
                value: r.try_get(1)?,
                size: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                tags: split_tags(r.try_get(4)?),
            })
        };
        Ok(row.map(counter).transpose()?)
    }

    async fn set_expiry(
        &mut self,
        key: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE cache_entries SET expires_at = ?2, last_access_at = ?3
             WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?3)",
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
                 SELECT key FROM cache_entries
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
        )
        .bind(now)
        .bind(limit)
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    async fn stored_bytes(&mut self) -> Result<i64> {
        // A covering-index scan.
        Ok(sqlx::query_scalar(
            "SELECT CAST(total(stored_size) AS INTEGER) FROM cache_entries INDEXED BY cache_entries_lru",
        )
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn evict_lru(&mut self, excess: i64, limit: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "DELETE FROM cache_entries WHERE key IN (
                 SELECT key FROM (
                     SELECT key, stored_size,
                            sum(stored_size) OVER (ORDER BY last_access_at, key) AS running
                     FROM cache_entries)
                 WHERE running - stored_size < ?1
                 LIMIT ?2)
             RETURNING stored_size",
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

/// The keys of `user`'s rows, in order: their part of a user's export (read
/// in the export's snapshot, or alone).
pub(crate) fn keys_of_user(
    conn: &rusqlite::Connection,
    user: &str,
) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT key FROM cache_entries WHERE user_id = ?1 ORDER BY key")?
        .query_map([user], |r| r.get(0))?
        .collect()
}

/// Deletes every row the filter matches and publishes the invalidation,
/// inside the caller's transaction on `conn` (also the whole-user erase's);
/// how many.
pub(crate) async fn delete_where(
    core: &Core,
    conn: &mut SqliteConnection,
    filter: Filter<'_>,
) -> Result<u64> {
    let (kind, target) = filter.record(core)?;
    let record = Record {
        kind,
        target: &target,
    };
    core.publish(conn, Facet::Cache, &[record]).await?;
    let q = match filter {
        Filter::Tag(tag) => sqlx::query(
            "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_tags WHERE tag = ?1)",
        )
        .bind(tag),
        Filter::User(user) => {
            sqlx::query("DELETE FROM cache_entries WHERE user_id = ?1").bind(user)
        }
        Filter::Namespace(ns) => {
            sqlx::query("DELETE FROM cache_entries WHERE namespace = ?1").bind(ns)
        }
        Filter::All => sqlx::query("DELETE FROM cache_entries"),
    };
    Ok(q.execute(&mut *conn).await?.rows_affected())
}

/// Inserts one row (and its tags) unless a live row has its key, inside the
/// caller's transaction on `conn` (a legacy import's); an expired row is
/// replaced. Returns whether it was inserted.
pub(crate) async fn insert_new(
    conn: &mut SqliteConnection,
    row: &Row,
    now: Timestamp,
) -> Result<bool> {
    sqlx::query("DELETE FROM cache_entries WHERE key = ?1 AND expires_at <= ?2")
        .bind(&*row.key)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(insert_if_absent(conn, row).await?)
}

/// The point read on a rusqlite connection: one indexed lookup, decoded on
/// this thread. Expired rows are not decoded, and values larger than
/// [`INLINE_VALUE_BYTES`] not read.
fn read(
    conn: &rusqlite::Connection,
    key: &str,
    now: Timestamp,
    max: usize,
) -> rusqlite::Result<Inline> {
    let mut stmt = conn.prepare_cached(POINT_READ)?;
    let mut rows = stmt.query([key])?;
    let Some(row) = rows.next()? else {
        return Ok(Inline::Read(None));
    };
    let time = |i: usize, text: &str| {
        parse_time(text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let expires_at = match row.get_ref(2)?.as_str_or_null()? {
        Some(text) => Some(time(2, text)?),
        None => None,
    };
    if expires_at.is_some_and(|at| at <= now) {
        return Ok(Inline::Read(Some(Found::Expired)));
    }
    let size: i64 = row.get(1)?;
    if size > INLINE_VALUE_BYTES {
        return Ok(Inline::Large);
    }
    let last_access = time(7, row.get_ref(7)?.as_str()?)?;
    let codec = row.get_ref(0)?.as_str()?;
    let value = decode(codec, row.get_ref(6)?.as_blob()?, size, max).map(Arc::from);
    let tags: Option<String> = row.get(5)?;
    let meta = Meta {
        namespace: row.get::<_, String>(3)?.into(),
        user: row.get::<_, Option<String>>(4)?.map(Into::into),
        tags: split_tags(tags),
    };
    Ok(Inline::Read(Some(Found::Live {
        value,
        expires_at: expires_at.map(Timestamp::as_millis),
        last_access: last_access.as_millis(),
        meta,
    })))
}

/// What a row read by [`Sqlite::read_large`] holds, its value decoded.
fn found(row: &SqliteRow, now: Timestamp, max: usize) -> Result<Found> {
    let expires_at: Option<Timestamp> = row.try_get(2)?;
    if expires_at.is_some_and(|at| at <= now) {
        return Ok(Found::Expired);
    }
    let codec: &str = row.try_get(0)?;
    let value = decode(codec, row.try_get(6)?, row.try_get(1)?, max).map(Arc::from);
    let last_access: Timestamp = row.try_get(7)?;
    Ok(Found::Live {
        value,
        expires_at: expires_at.map(Timestamp::as_millis),
        last_access: last_access.as_millis(),
        meta: Meta {
            namespace: row.try_get::<String, _>(3)?.into(),
            user: row.try_get::<Option<String>, _>(4)?.map(Into::into),
            tags: split_tags(row.try_get(5)?),
        },
    })
}

/// The `tags` column back as tags.
fn split_tags(column: Option<String>) -> Box<[Box<str>]> {
    column
        .map(|t| t.split('\u{1f}').map(Into::into).collect())
        .unwrap_or_default()
}

/// Parses the file's own time format (`2026-11-23T05:23:17.123Z`) without
/// chrono's general RFC 3339 parser, which cost a noticeable part of a
/// point read; anything else goes to [`Timestamp::parse`].
fn parse_time(text: &str) -> Result<Timestamp> {
    let b = text.as_bytes();
    let shape = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let fields = shape
        .then(|| {
            Some((
                num(0..4)?,
                num(5..7)?,
                num(8..10)?,
                num(11..13)?,
                num(14..16)?,
                num(17..19)?,
                num(20..23)?,
            ))
        })
        .flatten();
    match fields {
        Some((y, mo, d, h, mi, s, ms))
            if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 60 =>
        {
            // days from civil (Howard Hinnant's algorithm)
            let y = if mo <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let mp = (mo + 9) % 12;
            let doy = (153 * mp + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            let days = era * 146_097 + doe - 719_468;
            Ok(Timestamp::from_millis(
                ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms,
            ))
        }
        _ => Timestamp::parse(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_parser_agrees_with_timestamp_parse() {
        for ms in [
            Timestamp::MIN.as_millis(),
            -86_400_001,
            0,
            951_782_400_000, // 2000-02-29
            1_767_225_600_123,
            4_107_542_399_999,
            Timestamp::MAX.as_millis(),
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(parse_time(&t.to_rfc3339()).unwrap(), t, "{t}");
        }
        assert!(parse_time("2026-13-01T00:00:00.000Z").is_err());
        assert!(parse_time("soon").is_err());
        assert_eq!(
            parse_time("2026-01-01T01:00:00+01:00").unwrap(),
            Timestamp::parse("2026-01-01T00:00:00Z").unwrap()
        );
    }
}

//! Every statement of the sessions facet, for both drivers: rusqlite for
//! the reads validation and listing make on the caller's thread, sqlx for
//! writes. Implements [`SessionsBackend`]; the functions taking a
//! connection run inside a transaction the vault opens across facets
//! (legacy import, user erasure).
//!
//! Every write that revokes, rotates, deletes or changes a session publishes
//! its token hash to the change feed in the same transaction, so another
//! handle drops the row from its memory before its next validation. The
//! tower-sessions records are not published: they are read from the file on
//! every load, never from memory.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use sqlx::{QueryBuilder, Row as _, SqliteConnection};

use super::backend::{Candidate, NewRow, Regenerated, SessionsBackend, Tokens};
use super::state::{Binding, Row, token_records};
use super::types::ExportedSession;
use crate::Result;
use crate::clock::Timestamp;
use crate::core::Core;
use crate::core::feed::Facet;
use crate::store::{Store, closed_or};

/// The sessions table of a SQLite vault.
pub(crate) struct Sqlite<'a> {
    core: &'a Core,
    store: &'a Store,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(core: &'a Core, store: &'a Store) -> Self {
        Sqlite { core, store }
    }

    /// The vault file's connections.
    fn store(&self) -> &'a Store {
        self.store
    }
}

/// Inserts a session: ?1 id … ?14 rotation_due_at, in [`NewRow`]'s order.
const INSERT: &str =
    "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint, ip_hash,
     user_agent_hash, client_meta, data, created_at, last_seen_at, idle_timeout_secs, expires_at,
     rotation_due_at)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14)";

/// A user's (?1) live sessions at ?2, oldest first: what the per-user cap
/// may evict.
const CANDIDATES: &str = "SELECT id, token_hash, last_seen_at, idle_timeout_secs FROM sessions
 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2
 ORDER BY created_at, id";

/// New token (?1) and CSRF (?2) hashes and rotation time (?3) for the live
/// session with token hash ?4.
const ROTATE: &str = "UPDATE sessions SET token_hash = ?1, csrf_hash = ?2, rotation_due_at = ?3
 WHERE token_hash = ?4 AND revoked_at IS NULL";

/// Copies the live session with token hash ?7 to a new row (?1 id, ?2 token
/// hash, ?3 CSRF hash, ?4 now, ?5 expiry, ?6 rotation time).
const REGENERATE: &str = "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint,
     ip_hash, user_agent_hash, client_meta, data, created_at, last_seen_at, idle_timeout_secs, expires_at,
     rotation_due_at)
 SELECT ?1, ?2, ?3, user_id, org_id, device_fingerprint, ip_hash, user_agent_hash, client_meta, data,
     ?4, ?4, idle_timeout_secs, ?5, ?6
 FROM sessions WHERE token_hash = ?7 AND revoked_at IS NULL";

/// Publishes, inside the hot writer's write on `conn`, that these tokens'
/// rows changed.
fn publish_here(core: &Core, conn: &rusqlite::Connection, hashes: &[[u8; 32]]) -> Result<()> {
    core.publish_here(conn, Facet::Sessions, &token_records(hashes))
}

/// Publishes, inside the transaction on `conn`, that these tokens' rows
/// changed.
async fn publish(core: &Core, conn: &mut SqliteConnection, hashes: &[[u8; 32]]) -> Result<()> {
    core.publish(conn, Facet::Sessions, &token_records(hashes))
        .await
}

/// The columns [`row`] reads, in its order.
macro_rules! row_columns {
    () => {
        "id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta, created_at, last_seen_at, \
         idle_timeout_secs, expires_at, rotation_due_at, revoked_at, revoked_reason"
    };
}

/// A row selected with [`row_columns`].
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let last_seen: Timestamp = r.get(8)?;
    let revoked_at: Option<String> = r.get(12)?;
    let reason: Option<String> = r.get(13)?;
    Ok(Row {
        id: r.get(0)?,
        user_id: r.get(1)?,
        org_id: r.get(2)?,
        binding: Binding::from_stored(r.get(3)?),
        csrf_hash: r.get::<_, Vec<u8>>(4)?.try_into().unwrap_or([0; 32]),
        data: r.get::<_, String>(5)?.into(),
        client_meta: r.get::<_, String>(6)?.into(),
        created_at: r.get(7)?,
        last_seen_ms: AtomicI64::new(last_seen.as_millis()),
        idle_timeout: secs(r.get(9)?),
        expires_at: r.get(10)?,
        rotation_due_at: r.get(11)?,
        revoked: revoked_at.map(|_| reason.unwrap_or_else(|| "revoked".into())),
    })
}

/// A stored `idle_timeout_secs` (never negative, as written).
fn secs(stored: i64) -> Duration {
    Duration::from_secs(u64::try_from(stored).unwrap_or(0))
}

/// A duration as `idle_timeout_secs`.
fn stored_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl SessionsBackend for Sqlite<'_> {
    async fn by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Row>> {
        self.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                row_columns!(),
                " FROM sessions WHERE token_hash = ?1"
            ))?;
            let mut rows = stmt.query([&token_hash[..]])?;
            rows.next()?.map(row).transpose()
        })
    }

    async fn unrevoked_of_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<Row>> {
        self.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                row_columns!(),
                " FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 ORDER BY created_at, id"
            ))?;
            stmt.query_map(rusqlite::params![user_id, now], row)?
                .collect()
        })
    }

    async fn create(
        &self,
        row: &NewRow<'_>,
        make_room: impl FnOnce(Vec<Candidate>) -> Result<Vec<Candidate>> + Send,
    ) -> Result<Vec<Candidate>> {
        self.store()
            .write_here(|conn| {
                let candidates = conn
                    .prepare_cached(CANDIDATES)?
                    .query_map(rusqlite::params![row.user_id, row.created_at], |r| {
                        Ok(Candidate {
                            id: r.get(0)?,
                            token_hash: hash32(r.get(1)?),
                            last_seen: r.get(2)?,
                            idle_timeout: secs(r.get(3)?),
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let evicted = make_room(candidates)?;
                let ids: Vec<&str> = evicted.iter().map(|c| c.id.as_str()).collect();
                revoke_ids_here(conn, &ids, "evicted", row.created_at)?;
                conn.prepare_cached(INSERT)?.execute(rusqlite::params![
                    row.id,
                    &row.token_hash[..],
                    &row.csrf_hash[..],
                    row.user_id,
                    row.org_id,
                    row.device_fingerprint.as_ref().map(<[u8; 32]>::as_slice),
                    row.ip_hash.as_ref().map(<[u8; 32]>::as_slice),
                    row.user_agent_hash.as_ref().map(<[u8; 32]>::as_slice),
                    row.client_meta,
                    row.data,
                    row.created_at,
                    stored_secs(row.idle_timeout),
                    row.expires_at,
                    row.rotation_due_at,
                ])?;
                let hashes: Vec<[u8; 32]> = evicted.iter().map(|c| c.token_hash).collect();
                publish_here(self.core, conn, &hashes)?;
                Ok(evicted)
            })
            .await
    }

    async fn rotate(
        &self,
        old: &[u8; 32],
        new: &Tokens,
        rotation_due_at: Timestamp,
    ) -> Result<bool> {
        self.store()
            .write_here(|conn| {
                let done = conn.prepare_cached(ROTATE)?.execute(rusqlite::params![
                    &new.token_hash[..],
                    &new.csrf_hash[..],
                    rotation_due_at,
                    &old[..],
                ])?;
                if done > 0 {
                    publish_here(self.core, conn, &[*old])?;
                }
                Ok(done > 0)
            })
            .await
    }

    async fn regenerate(
        &self,
        old: &[u8; 32],
        old_id: &str,
        new: &Regenerated<'_>,
    ) -> Result<bool> {
        self.store()
            .write_here(|conn| {
                let copied = conn.prepare_cached(REGENERATE)?.execute(rusqlite::params![
                    new.id,
                    &new.tokens.token_hash[..],
                    &new.tokens.csrf_hash[..],
                    new.created_at,
                    new.expires_at,
                    new.rotation_due_at,
                    &old[..],
                ])?;
                if copied == 0 {
                    return Ok(false);
                }
                revoke_ids_here(conn, &[old_id], "regenerated", new.created_at)?;
                publish_here(self.core, conn, &[*old])?;
                Ok(true)
            })
            .await
    }

    async fn set_data(&self, token_hash: &[u8; 32], data: &str) -> Result<bool> {
        self.store()
            .write_here(|conn| {
                let done = conn
                    .prepare_cached(
                        "UPDATE sessions SET data = ?1 WHERE token_hash = ?2 AND revoked_at IS NULL",
                    )?
                    .execute(rusqlite::params![data, &token_hash[..]])?;
                if done > 0 {
                    publish_here(self.core, conn, &[*token_hash])?;
                }
                Ok(done > 0)
            })
            .await
    }

    async fn revoke(&self, id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        self.store()
            .write_here(|conn| {
                let hashes = revoke_ids_here(conn, &[id], "revoked", now)?;
                publish_here(self.core, conn, &hashes)?;
                Ok(hashes)
            })
            .await
    }

    async fn revoke_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        self.store()
            .write_here(|conn| {
                let hashes = conn
                    .prepare_cached(
                        "UPDATE sessions SET revoked_at = ?1, revoked_reason = 'logout_all'
                         WHERE user_id = ?2 AND revoked_at IS NULL RETURNING token_hash",
                    )?
                    .query_map(rusqlite::params![now, user_id], |r| Ok(hash32(r.get(0)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                publish_here(self.core, conn, &hashes)?;
                Ok(hashes)
            })
            .await
    }

    /// Reads the partial index `sessions_live` alone (`INDEXED BY`: SQLite
    /// refuses the query rather than scan the table), so revoked and
    /// expired rows, kept until the retention sweep, cost nothing; the live
    /// ones still do, so it runs on the sqlx reader, off the caller's thread.
    async fn count_live(&self, now: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions INDEXED BY sessions_live
             WHERE revoked_at IS NULL AND expires_at > ?1
               AND unixepoch(last_seen_at, 'subsec') + idle_timeout_secs > unixepoch(?1, 'subsec')",
        )
        .bind(now)
        .fetch_one(self.store().sqlx_reader())
        .await
        .map_err(closed_or)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Multi-row `UPDATE … FROM (VALUES …)`, 500 rows a statement.
    async fn write_last_seen(&self, touches: &HashMap<String, Timestamp>) -> Result<()> {
        let touches: Vec<_> = touches.iter().collect();
        let mut tx = self.store().sqlx_transaction().await?;
        for chunk in touches.chunks(500) {
            let mut query =
                QueryBuilder::new("UPDATE sessions SET last_seen_at = v.column2 FROM (");
            query.push_values(chunk, |mut row, (id, at)| {
                row.push_bind(id.as_str()).push_bind(**at);
            });
            query
                .push(") AS v WHERE sessions.id = v.column1 AND sessions.last_seen_at < v.column2");
            crate::store::one_off(&mut query).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// By rowid, as `sessions_last_seen` holds it: no lookup in the `id`
    /// index per row.
    async fn delete_idle(&self, cutoff: Timestamp, batch: usize) -> Result<Vec<[u8; 32]>> {
        let mut tx = self.store().sqlx_transaction().await?;
        let rows = sqlx::query(
            "DELETE FROM sessions WHERE rowid IN
                 (SELECT rowid FROM sessions WHERE last_seen_at < ?1 LIMIT ?2)
             RETURNING token_hash",
        )
        .bind(cutoff)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let hashes = token_hashes(&rows)?;
        publish(self.core, &mut tx, &hashes).await?;
        tx.commit().await?;
        Ok(hashes)
    }

    #[cfg(feature = "tower-sessions")]
    async fn put_tower_record(
        &self,
        r: &super::backend::TowerRecord,
        idle_timeout: Duration,
        replace: bool,
    ) -> Result<bool> {
        let conflict = if replace {
            "ON CONFLICT (token_hash) DO UPDATE SET data = excluded.data, user_id = excluded.user_id,
                 expires_at = excluded.expires_at, rotation_due_at = excluded.rotation_due_at,
                 last_seen_at = excluded.last_seen_at"
        } else {
            "ON CONFLICT (token_hash) DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, data, created_at, last_seen_at,
                 idle_timeout_secs, expires_at, rotation_due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?8) {conflict}"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&r.id)
            .bind(&r.token_hash[..])
            .bind(&super::sha256(&r.token_hash)[..])
            .bind(&r.user_id)
            .bind(&r.data)
            .bind(r.now)
            .bind(stored_secs(idle_timeout))
            .bind(r.expires_at)
            .execute(self.store().sqlx_writer())
            .await
            .map_err(closed_or)?;
        Ok(done.rows_affected() > 0)
    }

    #[cfg(feature = "tower-sessions")]
    async fn tower_record(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>> {
        self.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT data, expires_at FROM sessions WHERE token_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2",
            )?;
            let mut rows = stmt.query(rusqlite::params![&token_hash[..], now])?;
            rows.next()?.map(|row| Ok((row.get(0)?, row.get(1)?))).transpose()
        })
    }

    #[cfg(feature = "tower-sessions")]
    async fn delete_by_token(&self, token_hash: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?1")
            .bind(&token_hash[..])
            .execute(self.store().sqlx_writer())
            .await
            .map_err(closed_or)?;
        Ok(())
    }
}

/// Every session of a user, live or not, with its data, oldest first: its
/// part of a user's export, read in the export's snapshot.
pub(crate) fn export_user(
    conn: &rusqlite::Connection,
    user_id: &str,
    now: Timestamp,
) -> Result<Vec<ExportedSession>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        row_columns!(),
        " FROM sessions WHERE user_id = ?1 ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([user_id], row)?;
    rows.map(|row| row?.exported(now)).collect()
}

/// Inserts a session row on `conn`.
pub(crate) async fn insert(conn: &mut SqliteConnection, row: &NewRow<'_>) -> Result<()> {
    sqlx::query(INSERT)
        .bind(row.id)
        .bind(&row.token_hash[..])
        .bind(&row.csrf_hash[..])
        .bind(row.user_id)
        .bind(row.org_id)
        .bind(row.device_fingerprint.as_ref().map(<[u8; 32]>::as_slice))
        .bind(row.ip_hash.as_ref().map(<[u8; 32]>::as_slice))
        .bind(row.user_agent_hash.as_ref().map(<[u8; 32]>::as_slice))
        .bind(row.client_meta)
        .bind(row.data)
        .bind(row.created_at)
        .bind(stored_secs(row.idle_timeout))
        .bind(row.expires_at)
        .bind(row.rotation_due_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether a session on `conn` has this token hash.
pub(crate) async fn token_taken(
    conn: &mut SqliteConnection,
    token_hash: &[u8; 32],
) -> Result<bool> {
    let taken = sqlx::query("SELECT 1 FROM sessions WHERE token_hash = ?1")
        .bind(&token_hash[..])
        .fetch_optional(&mut *conn)
        .await?;
    Ok(taken.is_some())
}

/// Inside the caller's transaction: hands the user's [`Candidate`]s to
/// `make_room` and revokes the ones it returns (reason `evicted`).
pub(crate) async fn make_room_in(
    conn: &mut SqliteConnection,
    user_id: &str,
    now: Timestamp,
    make_room: impl FnOnce(Vec<Candidate>) -> Result<Vec<Candidate>>,
) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(CANDIDATES)
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let candidates = rows
        .iter()
        .map(|row| {
            Ok(Candidate {
                id: row.try_get(0)?,
                token_hash: hash32(row.try_get(1)?),
                last_seen: row.try_get(2)?,
                idle_timeout: secs(row.try_get(3)?),
            })
        })
        .collect::<Result<_>>()?;
    let evicted = make_room(candidates)?;
    revoke_ids(conn, evicted.iter().map(|c| c.id.as_str()), "evicted", now).await?;
    Ok(evicted)
}

/// Inside the whole-user erase transaction: deletes the user's sessions and
/// publishes their tokens, returning their token hashes.
pub(crate) async fn erase_user(
    core: &Core,
    conn: &mut SqliteConnection,
    user_id: &str,
) -> Result<Vec<[u8; 32]>> {
    let rows = sqlx::query("DELETE FROM sessions WHERE user_id = ?1 RETURNING token_hash")
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
    let hashes = token_hashes(&rows)?;
    publish(core, conn, &hashes).await?;
    Ok(hashes)
}

/// Revokes sessions by id inside a transaction; returns the token hashes of
/// those that were live.
async fn revoke_ids<'i>(
    conn: &mut SqliteConnection,
    ids: impl IntoIterator<Item = &'i str>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<[u8; 32]>> {
    let ids: Vec<&str> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("UPDATE sessions SET revoked_at = ");
    query
        .push_bind(now)
        .push(", revoked_reason = ")
        .push_bind(reason);
    query.push(" WHERE revoked_at IS NULL AND id IN (");
    let mut list = query.separated(", ");
    for id in &ids {
        list.push_bind(*id);
    }
    query.push(") RETURNING token_hash");
    let rows = query.build().fetch_all(&mut *conn).await?;
    token_hashes(&rows)
}

/// [`revoke_ids`] on the hot writer's connection.
fn revoke_ids_here(
    conn: &rusqlite::Connection,
    ids: &[&str],
    reason: &str,
    now: Timestamp,
) -> Result<Vec<[u8; 32]>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE sessions SET revoked_at = ?1, revoked_reason = ?2 WHERE revoked_at IS NULL AND id IN ({})
         RETURNING token_hash",
        vec!["?"; ids.len()].join(", ")
    );
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&now, &reason];
    params.extend(ids.iter().map(|id| id as &dyn rusqlite::ToSql));
    let mut stmt = conn.prepare_cached(&sql)?;
    let hashes = stmt
        .query_map(params.as_slice(), |r| Ok(hash32(r.get(0)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(hashes)
}

fn token_hashes(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<[u8; 32]>> {
    rows.iter().map(|row| Ok(hash32(row.try_get(0)?))).collect()
}

/// A stored 32-byte hash (`token_hash` is written only by this file).
fn hash32(bytes: Vec<u8>) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

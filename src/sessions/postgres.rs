//! Every statement of the sessions facet on PostgreSQL (feature
//! `postgres`). Implements [`SessionsBackend`] with the file's semantics:
//!
//! - `client_meta` and `data` are sealed (`seal.rs`) for their row and
//!   column: the session id and the column's name are the associated data,
//!   so a value copied to another row or column does not open. A
//!   regenerated session's values are opened and sealed again for its new
//!   id.
//! - A create locks the user's `session_users` row for its transaction, so
//!   the per-user cap holds across instances (no advisory lock).
//! - Sweeps take their batch with `FOR UPDATE SKIP LOCKED`: two instances
//!   sweeping at once never wait on each other.
//! - Every write that revokes, rotates, deletes or changes a session
//!   publishes its token hash to the change feed in its transaction: every
//!   other instance drops the row from its memory as the notification
//!   arrives.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::backend::{Candidate, NewRow, Regenerated, SessionsBackend, Tokens};
use super::state::{Binding, Row, token_records};
use super::types::ExportedSession;
use crate::Result;
use crate::clock::Timestamp;
use crate::core::Core;
use crate::core::feed::Facet;
use crate::postgres::Database;
use crate::postgres::reseal::Sealed;
use crate::seal::TableSealer;

/// The sessions table of a PostgreSQL vault.
pub(crate) struct Postgres<'a> {
    core: &'a Core,
    db: &'a Database,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(core: &'a Core, db: &'a Database) -> Self {
        Postgres { core, db }
    }

    fn sealer(&self) -> TableSealer {
        self.db.sealer().table("sessions")
    }

    /// Publishes, inside the transaction on `conn`, that these tokens' rows
    /// changed: every other instance drops them from its memory.
    async fn publish(&self, conn: &mut sqlx::PgConnection, hashes: &[[u8; 32]]) -> Result<()> {
        self.core
            .publish_pg(conn, Facet::Sessions, &token_records(hashes))
            .await
    }
}

/// The sealed columns, for re-sealing under a new key.
pub(crate) const SEALED: &[Sealed] = &[
    Sealed {
        table: "sessions",
        key: "id",
        uuid_key: false,
        column: "client_meta",
        aad: |id| aad(id, "client_meta"),
    },
    Sealed {
        table: "sessions",
        key: "id",
        uuid_key: false,
        column: "data",
        aad: |id| aad(id, "data"),
    },
];

/// The associated data of a sealed column: the row's id, a zero byte, the
/// column's name.
fn aad(id: &str, column: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(id.len() + 1 + column.len());
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(column.as_bytes());
    aad
}

fn seal(sealer: &TableSealer, id: &str, column: &str, text: &str) -> Result<Vec<u8>> {
    sealer.seal(&aad(id, column), text.as_bytes())
}

fn open(sealer: &TableSealer, id: &str, column: &str, sealed: &[u8]) -> Result<String> {
    let plain = sealer.open(&aad(id, column), sealed)?;
    String::from_utf8(plain.to_vec()).map_err(|_| crate::Error::BadData {
        what: "sessions".into(),
        detail: format!("a sealed {column} is not UTF-8"),
    })
}

/// The columns [`row`] reads, in its order.
const COLUMNS: &str = "id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta, \
     created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at, revoked_at, \
     revoked_reason";

/// A row selected with [`COLUMNS`], its sealed values opened.
fn row(sealer: &TableSealer, r: &PgRow) -> Result<Row> {
    let id: String = r.try_get(0)?;
    let last_seen: Timestamp = r.try_get(8)?;
    let revoked_at: Option<Timestamp> = r.try_get(12)?;
    let reason: Option<String> = r.try_get(13)?;
    let data = open(sealer, &id, "data", &r.try_get::<Vec<u8>, _>(5)?)?;
    let client_meta = open(sealer, &id, "client_meta", &r.try_get::<Vec<u8>, _>(6)?)?;
    Ok(Row {
        user_id: r.try_get(1)?,
        org_id: r.try_get(2)?,
        binding: Binding::from_stored(r.try_get(3)?),
        csrf_hash: hash32(r.try_get(4)?),
        data: data.into(),
        client_meta: client_meta.into(),
        created_at: r.try_get(7)?,
        last_seen_ms: AtomicI64::new(last_seen.as_millis()),
        idle_timeout: secs(r.try_get(9)?),
        expires_at: r.try_get(10)?,
        rotation_due_at: r.try_get(11)?,
        revoked: revoked_at.map(|_| reason.unwrap_or_else(|| "revoked".into())),
        id,
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

/// A stored 32-byte hash (written only by this facet).
fn hash32(bytes: Vec<u8>) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

fn token_hashes(rows: &[PgRow]) -> Result<Vec<[u8; 32]>> {
    rows.iter().map(|r| Ok(hash32(r.try_get(0)?))).collect()
}

/// Every session of a user, live or not, with its data, oldest first: its
/// part of a user's export, read in the export's transaction.
pub(crate) async fn export_user(
    db: &Database,
    conn: &mut sqlx::PgConnection,
    user_id: &str,
    now: Timestamp,
) -> Result<Vec<ExportedSession>> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(conn)
        .await?;
    let sealer = db.sealer().table("sessions");
    rows.iter()
        .map(|r| row(&sealer, r)?.exported(now))
        .collect()
}

/// Deletes `user_id`'s sessions and their `session_users` row inside the
/// caller's transaction on `conn` (a user's erasure), and publishes their
/// token hashes, which it returns. The user's row goes first: a create
/// under way on another instance holds it, so this waits for that create
/// and then deletes its session too.
pub(crate) async fn erase_user(
    core: &Core,
    conn: &mut sqlx::PgConnection,
    user_id: &str,
) -> Result<Vec<[u8; 32]>> {
    sqlx::query("DELETE FROM session_users WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query("DELETE FROM sessions WHERE user_id = $1 RETURNING token_hash")
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
    let hashes = token_hashes(&rows)?;
    core.publish_pg(conn, Facet::Sessions, &token_records(&hashes))
        .await?;
    Ok(hashes)
}

/// Revokes the live sessions among `ids` (one statement); their token
/// hashes.
async fn revoke_ids(
    conn: &mut sqlx::PgConnection,
    ids: &[&str],
    reason: &str,
    now: Timestamp,
) -> Result<Vec<[u8; 32]>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2
         WHERE revoked_at IS NULL AND id = ANY($3) RETURNING token_hash",
    )
    .bind(now)
    .bind(reason)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    token_hashes(&rows)
}

impl SessionsBackend for Postgres<'_> {
    async fn by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Row>> {
        let sql = format!("SELECT {COLUMNS} FROM sessions WHERE token_hash = $1");
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&token_hash[..])
            .fetch_optional(self.db.pool())
            .await?;
        found.map(|r| row(&self.sealer(), &r)).transpose()
    }

    async fn unrevoked_of_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<Row>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(now)
            .fetch_all(self.db.pool())
            .await?;
        let sealer = self.sealer();
        rows.iter().map(|r| row(&sealer, r)).collect()
    }

    /// Locks the user's `session_users` row first (taking it, made if
    /// missing, in one upsert): creators of one user's sessions take turns
    /// in every instance, creators of different users' do not wait.
    async fn create(
        &self,
        row: &NewRow<'_>,
        make_room: impl FnOnce(Vec<Candidate>) -> Result<Vec<Candidate>> + Send,
    ) -> Result<Vec<Candidate>> {
        let sealer = self.sealer();
        let client_meta = seal(&sealer, row.id, "client_meta", row.client_meta)?;
        let data = seal(&sealer, row.id, "data", row.data)?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO session_users (user_id) VALUES ($1)
             ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id",
        )
        .bind(row.user_id)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT id, token_hash, last_seen_at, idle_timeout_secs FROM sessions
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
             ORDER BY created_at, id",
        )
        .bind(row.user_id)
        .bind(row.created_at)
        .fetch_all(&mut *tx)
        .await?;
        let candidates = rows
            .iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get(0)?,
                    token_hash: hash32(r.try_get(1)?),
                    last_seen: r.try_get(2)?,
                    idle_timeout: secs(r.try_get(3)?),
                })
            })
            .collect::<Result<_>>()?;
        let evicted = make_room(candidates)?;
        let ids: Vec<&str> = evicted.iter().map(|c| c.id.as_str()).collect();
        let hashes = revoke_ids(&mut tx, &ids, "evicted", row.created_at).await?;
        self.publish(&mut tx, &hashes).await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint,
                 ip_hash, user_agent_hash, client_meta, data, created_at, last_seen_at,
                 idle_timeout_secs, expires_at, rotation_due_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)",
        )
        .bind(row.id)
        .bind(&row.token_hash[..])
        .bind(&row.csrf_hash[..])
        .bind(row.user_id)
        .bind(row.org_id)
        .bind(row.device_fingerprint.as_ref().map(<[u8; 32]>::as_slice))
        .bind(row.ip_hash.as_ref().map(<[u8; 32]>::as_slice))
        .bind(row.user_agent_hash.as_ref().map(<[u8; 32]>::as_slice))
        .bind(client_meta)
        .bind(data)
        .bind(row.created_at)
        .bind(stored_secs(row.idle_timeout))
        .bind(row.expires_at)
        .bind(row.rotation_due_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(evicted)
    }

    async fn rotate(
        &self,
        old: &[u8; 32],
        new: &Tokens,
        rotation_due_at: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.db.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET token_hash = $1, csrf_hash = $2, rotation_due_at = $3
             WHERE token_hash = $4 AND revoked_at IS NULL",
        )
        .bind(&new.token_hash[..])
        .bind(&new.csrf_hash[..])
        .bind(rotation_due_at)
        .bind(&old[..])
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            self.publish(&mut tx, &[*old]).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Locks the old row, opens its sealed values and seals them again for
    /// the new id, then inserts the copy and revokes the old row.
    async fn regenerate(
        &self,
        old: &[u8; 32],
        old_id: &str,
        new: &Regenerated<'_>,
    ) -> Result<bool> {
        let sealer = self.sealer();
        let mut tx = self.db.pool().begin().await?;
        let Some(found) = sqlx::query(
            "SELECT client_meta, data FROM sessions
             WHERE token_hash = $1 AND id = $2 AND revoked_at IS NULL FOR UPDATE",
        )
        .bind(&old[..])
        .bind(old_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let client_meta = open(
            &sealer,
            old_id,
            "client_meta",
            &found.try_get::<Vec<u8>, _>(0)?,
        )?;
        let data = open(&sealer, old_id, "data", &found.try_get::<Vec<u8>, _>(1)?)?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint,
                 ip_hash, user_agent_hash, client_meta, data, created_at, last_seen_at,
                 idle_timeout_secs, expires_at, rotation_due_at)
             SELECT $1, $2, $3, user_id, org_id, device_fingerprint, ip_hash, user_agent_hash,
                 $4, $5, $6, $6, idle_timeout_secs, $7, $8
             FROM sessions WHERE id = $9",
        )
        .bind(new.id)
        .bind(&new.tokens.token_hash[..])
        .bind(&new.tokens.csrf_hash[..])
        .bind(seal(&sealer, new.id, "client_meta", &client_meta)?)
        .bind(seal(&sealer, new.id, "data", &data)?)
        .bind(new.created_at)
        .bind(new.expires_at)
        .bind(new.rotation_due_at)
        .bind(old_id)
        .execute(&mut *tx)
        .await?;
        revoke_ids(&mut tx, &[old_id], "regenerated", new.created_at).await?;
        self.publish(&mut tx, &[*old]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Seals for the row the token names; the update then requires the
    /// token still to name it, so a rotation in between makes it a no-op.
    async fn set_data(&self, token_hash: &[u8; 32], data: &str) -> Result<bool> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&token_hash[..])
        .fetch_optional(self.db.pool())
        .await?;
        let Some(id) = id else {
            return Ok(false);
        };
        let mut tx = self.db.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET data = $1 WHERE id = $2 AND token_hash = $3 AND revoked_at IS NULL",
        )
        .bind(seal(&self.sealer(), &id, "data", data)?)
        .bind(&id)
        .bind(&token_hash[..])
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            self.publish(&mut tx, &[*token_hash]).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn revoke(&self, id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        let mut tx = self.db.pool().begin().await?;
        let hashes = revoke_ids(&mut tx, &[id], "revoked", now).await?;
        self.publish(&mut tx, &hashes).await?;
        tx.commit().await?;
        Ok(hashes)
    }

    /// Takes the user's `session_users` row first, as a create and an
    /// erasure do: the user's sessions are then locked by one of them at a
    /// time, whatever order each takes them in, so none deadlocks.
    async fn revoke_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("SELECT 1 FROM session_users WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'logout_all'
             WHERE user_id = $2 AND revoked_at IS NULL RETURNING token_hash",
        )
        .bind(now)
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;
        let hashes = token_hashes(&rows)?;
        self.publish(&mut tx, &hashes).await?;
        tx.commit().await?;
        Ok(hashes)
    }

    async fn count_live(&self, now: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions
             WHERE revoked_at IS NULL AND expires_at > $1
               AND last_seen_at + make_interval(secs => idle_timeout_secs) > $1",
        )
        .bind(now)
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One `UPDATE … FROM unnest(…)` for every touch: one statement, one
    /// commit, whatever the count. The rows are locked in id order first:
    /// two instances writing the same sessions' touches then wait for each
    /// other instead of deadlocking.
    async fn write_last_seen(&self, touches: &HashMap<String, Timestamp>) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<&str>, Vec<Timestamp>) =
            touches.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
        sqlx::query(
            "UPDATE sessions SET last_seen_at = v.at
             FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at)
             WHERE sessions.id = v.id AND sessions.last_seen_at < v.at
               AND sessions.id IN (SELECT id FROM sessions WHERE id = ANY($1)
                                   ORDER BY id COLLATE \"C\" FOR UPDATE)",
        )
        .bind(ids)
        .bind(times)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn delete_idle(&self, cutoff: Timestamp, batch: usize) -> Result<Vec<[u8; 32]>> {
        let mut tx = self.db.pool().begin().await?;
        let rows = sqlx::query(
            "DELETE FROM sessions WHERE id IN
                 (SELECT id FROM sessions WHERE last_seen_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING token_hash",
        )
        .bind(cutoff)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let hashes = token_hashes(&rows)?;
        self.publish(&mut tx, &hashes).await?;
        tx.commit().await?;
        Ok(hashes)
    }

    /// The row with this token hash, locked, keeps its id: its data is
    /// sealed for that id.
    #[cfg(feature = "tower-sessions")]
    async fn put_tower_record(
        &self,
        r: &super::backend::TowerRecord,
        idle_timeout: Duration,
        replace: bool,
    ) -> Result<bool> {
        let sealer = self.sealer();
        let mut tx = self.db.pool().begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM sessions WHERE token_hash = $1 FOR UPDATE")
                .bind(&r.token_hash[..])
                .fetch_optional(&mut *tx)
                .await?;
        let done = match existing {
            Some(_) if !replace => 0,
            Some(id) => sqlx::query(
                "UPDATE sessions SET data = $1, user_id = $2, expires_at = $3,
                     rotation_due_at = $3, last_seen_at = $4
                 WHERE id = $5",
            )
            .bind(seal(&sealer, &id, "data", &r.data)?)
            .bind(&r.user_id)
            .bind(r.expires_at)
            .bind(r.now)
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, client_meta, data,
                     created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $9)
                 ON CONFLICT (token_hash) DO NOTHING",
            )
            .bind(&r.id)
            .bind(&r.token_hash[..])
            .bind(&super::sha256(&r.token_hash)[..])
            .bind(&r.user_id)
            .bind(seal(&sealer, &r.id, "client_meta", "{}")?)
            .bind(seal(&sealer, &r.id, "data", &r.data)?)
            .bind(r.now)
            .bind(stored_secs(idle_timeout))
            .bind(r.expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        tx.commit().await?;
        Ok(done > 0)
    }

    #[cfg(feature = "tower-sessions")]
    async fn tower_record(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>> {
        let found = sqlx::query(
            "SELECT id, data, expires_at FROM sessions
             WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        found
            .map(|r| {
                let id: String = r.try_get(0)?;
                let data = open(&self.sealer(), &id, "data", &r.try_get::<Vec<u8>, _>(1)?)?;
                Ok((data, r.try_get(2)?))
            })
            .transpose()
    }

    #[cfg(feature = "tower-sessions")]
    async fn delete_by_token(&self, token_hash: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(&token_hash[..])
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

/// Opens every session's sealed `client_meta` and `data` (`statevault
/// check`).
pub(crate) async fn check_sealed(db: &Database) -> Result<crate::Check> {
    let sealer = db.sealer().table("sessions");
    db.open_every(
        "sealed_sessions",
        "SELECT id, client_meta, data FROM sessions WHERE id > $1 ORDER BY id LIMIT $2",
        "",
        |row| {
            let id: String = row.try_get(0)?;
            let mut failed = Vec::new();
            for (i, column) in [(1, "client_meta"), (2, "data")] {
                if open(&sealer, &id, column, &row.try_get::<Vec<u8>, _>(i)?).is_err() {
                    failed.push(format!("session {id}: {column} does not open"));
                }
            }
            Ok((id, failed))
        },
    )
    .await
}

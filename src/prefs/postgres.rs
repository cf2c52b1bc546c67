//! Every statement of the preferences facet on PostgreSQL (feature
//! `postgres`). Implements [`PreferencesBackend`]: the document is sealed
//! for its user (the user id and the column's name are the associated
//! data), and an update reads the row `FOR UPDATE`, so two instances
//! patching one user's preferences take turns and neither patch is lost.

use serde_json::Value;
use sqlx::Row as _;

use super::backend::{Overrides, PreferencesBackend};
use super::types::StoredPreferences;
use crate::Result;
use crate::postgres::Database;
use crate::postgres::reseal::Sealed;
use crate::seal::TableSealer;

/// The preferences table of a PostgreSQL vault.
pub(crate) struct Postgres<'a> {
    db: &'a Database,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(db: &'a Database) -> Self {
        Postgres { db }
    }

    fn sealer(&self) -> TableSealer {
        self.db.sealer().table("preferences")
    }
}

/// The sealed column, for re-sealing under a new key.
pub(crate) const SEALED: &[Sealed] = &[Sealed {
    table: "preferences",
    key: "user_id",
    uuid_key: false,
    column: "document",
    aad,
}];

/// The associated data of a user's document.
fn aad(user_id: &str) -> Vec<u8> {
    [user_id.as_bytes(), b"\0document"].concat()
}

fn open(sealer: &TableSealer, user_id: &str, sealed: &[u8]) -> Result<Value> {
    Ok(serde_json::from_slice(
        &sealer.open(&aad(user_id), sealed)?,
    )?)
}

/// The user's stored document, opened, read with `conn` (the pool, or the
/// transaction of a user's export).
pub(crate) async fn stored<'c>(
    db: &Database,
    conn: impl sqlx::PgExecutor<'c>,
    user_id: &str,
) -> Result<Option<StoredPreferences>> {
    let row = sqlx::query(
        "SELECT document, schema_version, updated_at FROM preferences WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(StoredPreferences {
            document: open(
                &db.sealer().table("preferences"),
                user_id,
                &r.try_get::<Vec<u8>, _>(0)?,
            )?,
            schema_version: r.try_get(1)?,
            updated_at: r.try_get(2)?,
        })
    })
    .transpose()
}

/// Reads a user's row and locks it for the transaction.
const LOCK: &str = "SELECT document, schema_version FROM preferences WHERE user_id = $1 FOR UPDATE";

impl PreferencesBackend for Postgres<'_> {
    async fn stored(&self, user_id: &str) -> Result<Option<StoredPreferences>> {
        stored(self.db, self.db.pool(), user_id).await
    }

    /// Locks the user's row (`FOR UPDATE`) and rewrites it. A user with no
    /// row yet gets an empty one first (`ON CONFLICT DO NOTHING`, which
    /// waits for another instance inserting the same user and then finds
    /// its row): the empty row is locked as it is inserted, and is never
    /// seen, as the update replaces it before the commit, or the rollback
    /// takes it away.
    async fn update<T: Send>(
        &self,
        user_id: &str,
        replace: bool,
        change: impl FnOnce(Option<Overrides>) -> Result<(StoredPreferences, T)> + Send,
    ) -> Result<T> {
        let sealer = self.sealer();
        let mut tx = self.db.pool().begin().await?;
        let mut row = sqlx::query(LOCK)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
        let mut created = false;
        if row.is_none() {
            created = sqlx::query(
                "INSERT INTO preferences (user_id, document, schema_version, created_at, updated_at)
                 VALUES ($1, '\\x', 0, 'epoch', 'epoch') ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !created {
                row = sqlx::query(LOCK)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            }
        }
        let stored = match row {
            Some(r) if !replace => Some(Overrides {
                document: open(&sealer, user_id, &r.try_get::<Vec<u8>, _>(0)?)?,
                schema_version: r.try_get(1)?,
            }),
            _ => None,
        };
        let (new, out) = change(stored)?;
        let document = sealer.seal(&aad(user_id), new.document.to_string().as_bytes())?;
        let created_at = if created { "$4" } else { "created_at" };
        let sql = format!(
            "UPDATE preferences SET document = $2, schema_version = $3, updated_at = $4,
                 created_at = {created_at}
             WHERE user_id = $1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(document)
            .bind(new.schema_version)
            .bind(new.updated_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn reset(&self, user_id: &str) -> Result<bool> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(erase_user(&mut conn, user_id).await? > 0)
    }
}

/// Deletes `user_id`'s document on `conn` (in the caller's transaction, for
/// a user's erasure); how many rows went.
pub(crate) async fn erase_user(conn: &mut sqlx::PgConnection, user_id: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM preferences WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Opens every user's sealed document (`statevault check`).
pub(crate) async fn check_sealed(db: &Database) -> Result<crate::Check> {
    let sealer = db.sealer().table("preferences");
    db.open_every(
        "sealed_preferences",
        "SELECT user_id, document FROM preferences WHERE user_id > $1 ORDER BY user_id LIMIT $2",
        "",
        |row| {
            let user: String = row.try_get(0)?;
            let failed = match open(&sealer, &user, &row.try_get::<Vec<u8>, _>(1)?) {
                Ok(_) => Vec::new(),
                Err(_) => vec![format!(
                    "preferences of {user:?}: the document does not open"
                )],
            };
            Ok((user, failed))
        },
    )
    .await
}

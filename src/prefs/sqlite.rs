//! Every statement of the preferences facet, for both drivers: rusqlite for
//! reads on the caller's thread, sqlx for writes. Implements
//! [`PreferencesBackend`]; the functions taking a connection run inside a
//! transaction the vault opens across facets (legacy import, user erasure).

use rusqlite::OptionalExtension as _;
use serde_json::Value;
use sqlx::SqliteConnection;

use super::backend::{Overrides, PreferencesBackend};
use super::types::StoredPreferences;
use crate::Result;
use crate::clock::Timestamp;
use crate::store::{Store, closed_or};

/// The preferences table of a SQLite vault.
pub(crate) struct Sqlite<'a> {
    store: &'a Store,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Sqlite { store }
    }
}

impl PreferencesBackend for Sqlite<'_> {
    async fn stored(&self, user_id: &str) -> Result<Option<StoredPreferences>> {
        parsed(self.store.read_here(|conn| stored_row(conn, user_id))?)
    }

    async fn update<T: Send>(
        &self,
        user_id: &str,
        replace: bool,
        change: impl FnOnce(Option<Overrides>) -> Result<(StoredPreferences, T)> + Send,
    ) -> Result<T> {
        self.store
            .write_here(|conn| {
                let stored = if replace {
                    None
                } else {
                    conn.prepare_cached(
                        "SELECT document, schema_version FROM preferences WHERE user_id = ?1",
                    )?
                    .query_row([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .optional()?
                    .map(|(document, schema_version)| {
                        Ok::<_, crate::Error>(Overrides {
                            document: serde_json::from_str(&document)?,
                            schema_version,
                        })
                    })
                    .transpose()?
                };
                let (new, out) = change(stored)?;
                conn.prepare_cached(
                    "INSERT INTO preferences (user_id, document, schema_version, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (user_id) DO UPDATE SET document = excluded.document,
                         schema_version = excluded.schema_version, updated_at = excluded.updated_at",
                )?
                .execute(rusqlite::params![
                    user_id,
                    new.document.to_string(),
                    new.schema_version,
                    new.updated_at
                ])?;
                Ok(out)
            })
            .await
    }

    async fn reset(&self, user_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM preferences WHERE user_id = ?1")
            .bind(user_id)
            .execute(self.store.sqlx_writer())
            .await
            .map_err(closed_or)?;
        Ok(done.rows_affected() > 0)
    }
}

/// The user's stored document, as [`PreferencesBackend::stored`] has it:
/// its part of a user's export, read in the export's snapshot.
pub(crate) fn export_user(
    conn: &rusqlite::Connection,
    user_id: &str,
) -> Result<Option<StoredPreferences>> {
    parsed(stored_row(conn, user_id)?)
}

/// The user's row: its document (JSON text), schema version and update time.
fn stored_row(
    conn: &rusqlite::Connection,
    user_id: &str,
) -> rusqlite::Result<Option<(String, i64, Timestamp)>> {
    conn.prepare_cached(
        "SELECT document, schema_version, updated_at FROM preferences WHERE user_id = ?1",
    )?
    .query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .optional()
}

fn parsed(row: Option<(String, i64, Timestamp)>) -> Result<Option<StoredPreferences>> {
    row.map(|(document, schema_version, updated_at)| {
        Ok(StoredPreferences {
            document: serde_json::from_str(&document)?,
            schema_version,
            updated_at,
        })
    })
    .transpose()
}

/// Stores `document` as the user's overrides on `conn`, unless the user
/// has some. Returns whether it was stored.
pub(crate) async fn insert_new(
    conn: &mut SqliteConnection,
    user_id: &str,
    document: &Value,
    schema_version: i64,
    now: Timestamp,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO preferences (user_id, document, schema_version, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(document.to_string())
    .bind(schema_version)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Inside the whole-user erase transaction: deletes the user's overrides.
pub(crate) async fn erase_user(conn: &mut SqliteConnection, user_id: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM preferences WHERE user_id = ?1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

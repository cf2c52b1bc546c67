//! The statements on `vault_meta`. Only `core::meta` calls them: it knows
//! the keys and what their values mean.

use sqlx::SqliteConnection;

use super::Store;
use crate::Result;
use crate::clock::Timestamp;

impl Store {
    /// A value's bytes (read as a BLOB: the column may hold bytes that are
    /// not UTF-8), on a hot reader on this thread.
    pub(crate) fn meta_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_here(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT CAST(value AS BLOB) FROM vault_meta WHERE key = ?1")?;
            let mut rows = stmt.query([key])?;
            rows.next()?.map(|row| row.get(0)).transpose()
        })
    }
}

/// A value's bytes, inside the caller's transaction on `conn`.
pub(crate) async fn meta_bytes_in(
    conn: &mut SqliteConnection,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT CAST(value AS BLOB) FROM vault_meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Sets `key` to `value` on `conn` (inside the caller's transaction, if any).
pub(crate) async fn set_meta(
    conn: &mut SqliteConnection,
    key: &str,
    value: &str,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vault_meta (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(key)
    .bind(value)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets `key` to `value` unless it is already set; whether it was set now.
pub(crate) async fn set_meta_once(
    conn: &mut SqliteConnection,
    key: &str,
    value: &str,
    now: Timestamp,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO vault_meta (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(value)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

//! `vault_meta`: the file's facts (origin, key date, hash salt, audit chain
//! ends, legacy ledger, preferences schema). This module is the only one
//! that reads or writes the table.

use sqlx::SqliteConnection;

use crate::clock::Timestamp;
use crate::store::Store;
use crate::{Error, Result};

/// The keyed-hash secret (64 hex digits).
pub(crate) const HASH_SALT: &str = "hash_salt";
/// When the file was created (RFC 3339).
pub(crate) const CREATED_AT: &str = "created_at";
/// When the current key was set (RFC 3339).
pub(crate) const KEY_CREATED_AT: &str = "key_created_at";
/// The application's preferences schema (JSON).
pub(crate) const PREFERENCES_SCHEMA: &str = "preferences_schema";
/// The audit chain's start after retention: `<seq> <64 hex digits>`.
pub(crate) const AUDIT_ANCHOR: &str = "audit_anchor";
/// The audit chain's last link: `<seq> <64 hex digits>`.
pub(crate) const AUDIT_HEAD: &str = "audit_head";

/// A fact, read on this thread through a hot reader.
pub(crate) fn get(store: &Store, key: &str) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> = store.read_here(|conn| {
        let mut stmt =
            conn.prepare_cached("SELECT CAST(value AS BLOB) FROM vault_meta WHERE key = ?1")?;
        let mut rows = stmt.query([key])?;
        rows.next()?.map(|row| row.get(0)).transpose()
    })?;
    bytes.map(|bytes| text(key, bytes)).transpose()
}

/// A fact, read inside the caller's transaction on `conn`.
pub(crate) async fn get_in(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT CAST(value AS BLOB) FROM vault_meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    bytes.map(|bytes| text(key, bytes)).transpose()
}

/// Sets `key` to `value` on `conn` (inside the caller's transaction, if any).
pub(crate) async fn set(
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
pub(crate) async fn set_once(
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

/// Writes the facts `info` shows about the file's origin and the keyed-hash
/// secret, once, in one transaction.
pub(crate) async fn record_creation(store: &Store, now: Timestamp, encrypted: bool) -> Result<()> {
    let created_by = format!("statevault {}", env!("CARGO_PKG_VERSION"));
    let salt = crate::key::Key::generate()?
        .raw_bytes()
        .map(|bytes| crate::key::hex(bytes.as_slice()))
        .ok_or_else(|| Error::Internal {
            detail: "a generated key has no raw bytes".into(),
        })?;
    let now_text = now.to_rfc3339();
    let mut tx = store.sqlx_transaction().await?;
    set_once(&mut tx, CREATED_AT, &now_text, now).await?;
    set_once(&mut tx, "created_by", &created_by, now).await?;
    set_once(&mut tx, HASH_SALT, &salt, now).await?;
    if encrypted {
        set_once(&mut tx, KEY_CREATED_AT, &now_text, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A value as text (read as a BLOB, since the column may hold bytes that are
/// not UTF-8), or the error naming its row.
pub(crate) fn text(key: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| bad(key, "is not UTF-8 text"))
}

/// The error for a row the vault cannot use: it names the row.
pub(crate) fn bad(key: &str, problem: impl std::fmt::Display) -> Error {
    Error::BadData {
        what: format!("vault_meta {key}"),
        detail: format!("{problem} (fix that row)"),
    }
}

//! `vault_meta`: the file's facts (origin, key date, hash salt, audit chain
//! ends, legacy ledger, preferences schema). Everything above the store
//! reads and writes the table through this module; its statements are in
//! `store/meta.rs`.

use sqlx::SqliteConnection;

use crate::clock::Timestamp;
use crate::store::{self, Store};
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
    let bytes = store.meta_bytes(key)?;
    bytes.map(|bytes| text(key, bytes)).transpose()
}

/// A fact, read inside the caller's transaction on `conn`.
pub(crate) async fn get_in(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>> {
    let bytes = store::meta::meta_bytes_in(conn, key).await?;
    bytes.map(|bytes| text(key, bytes)).transpose()
}

pub(crate) use store::meta::{set_meta as set, set_meta_once as set_once};

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

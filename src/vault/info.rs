//! What the whole-file operations report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// What [`Vault::info`](super::Vault::info) reports.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The database file.
    pub path: PathBuf,
    /// Its size in bytes (without the WAL).
    pub file_bytes: u64,
    /// The size of its `-wal` file (0 when there is none).
    pub wal_bytes: u64,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// SQLCipher's version (`PRAGMA cipher_version`).
    pub cipher_version: Option<String>,
    /// The journal mode, `wal` for a vault.
    pub journal_mode: String,
    /// The newest migration applied to the file.
    pub schema_version: i64,
    /// The newest migration this build has.
    pub latest_schema_version: i64,
    /// When statevault first created or adopted the file.
    pub created_at: Option<String>,
    /// When the current key was set.
    pub key_created_at: Option<String>,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
}

/// Rows from [`Vault::query_read_only`](super::Vault::query_read_only).
#[derive(Debug, Clone, Serialize)]
pub struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One vector of values per row, in column order.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// What [`Vault::write_counts`](super::Vault::write_counts) reports: the
/// writes a request waits on, and the commits that held them. Writes that
/// arrive together share one commit (group commit), so under concurrency
/// `commits` grows slower than `writes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteCounts {
    /// Writes made (session create, rotate, revoke …; strict and shared
    /// limit checks; preference changes), since the vault opened.
    pub writes: u64,
    /// Commits that held them.
    pub commits: u64,
}

//! What an import reports.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// What kind of legacy file a report line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LegacyKind {
    /// `session.json`: the session in plain JSON.
    Session,
    /// `session.enc`: the session as a Fernet token, key in `session.key`.
    EncryptedSession,
    /// `backups/session_*.enc`: older copies of the session, never imported.
    SessionBackup,
    /// `rate_limits/<user>.json`: buckets and violations.
    RateLimits,
    /// `cache/l2/<key>.cache` (gzip JSON) and its `<key>.meta`.
    CacheEntry,
    /// `preferences/<user>.json`.
    Preferences,
}

impl LegacyKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LegacyKind::Session => "session",
            LegacyKind::EncryptedSession => "encrypted_session",
            LegacyKind::SessionBackup => "session_backup",
            LegacyKind::RateLimits => "rate_limits",
            LegacyKind::CacheEntry => "cache_entry",
            LegacyKind::Preferences => "preferences",
        }
    }
}

impl fmt::Display for LegacyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to one legacy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportOutcome {
    /// Its rows were written, with its ledger entry, in one transaction.
    Imported,
    /// The ledger has it: an earlier run imported these very bytes.
    AlreadyImported,
    /// Nothing was written; the detail says why.
    Skipped,
}

impl fmt::Display for ImportOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportOutcome::Imported => "imported",
            ImportOutcome::AlreadyImported => "already imported",
            ImportOutcome::Skipped => "skipped",
        })
    }
}

/// One legacy file in an [`ImportReport`].
#[derive(Debug, Clone, Serialize)]
pub struct LegacyFile {
    /// The file, relative to the imported directory.
    pub path: PathBuf,
    /// What kind of file it is.
    pub kind: LegacyKind,
    /// What happened to it.
    pub outcome: ImportOutcome,
    /// What was imported, or why it was skipped (`expired at …`, `not JSON: …`).
    pub detail: String,
}

/// What [`Vault::import_legacy`](crate::Vault::import_legacy) did, file by file.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The imported directory.
    pub dir: PathBuf,
    /// Files imported by this run.
    pub imported: usize,
    /// Files an earlier run imported.
    pub already_imported: usize,
    /// Files skipped, each with its reason.
    pub skipped: usize,
    /// Every legacy file found, in the order they were imported.
    pub files: Vec<LegacyFile>,
}

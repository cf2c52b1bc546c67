//! What backups are: where they go, how long they are kept, what a backup
//! or a restore reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::audit::ChainReport;
use crate::store::CheckReport;

/// How long backups in the default folder are kept by default.
pub const BACKUP_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where backups go, how long they are kept, and whether opening a damaged
/// file falls back to one ([`VaultOptions::backups`](crate::VaultOptions::backups)).
///
/// ```
/// use statevault::BackupConfig;
///
/// let mut config = BackupConfig::default();
/// config.recover_on_open = true;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupConfig {
    /// The folder of default backups (default: `backups/` beside the
    /// database).
    pub dir: Option<PathBuf>,
    /// Default backups older than this are deleted when a new one is
    /// written (default [`BACKUP_RETENTION`], 7 days).
    pub retention: Duration,
    /// When opening finds the file damaged (corrupt pages, truncated, not a
    /// database; not a wrong key), move it aside and open the newest backup
    /// in the folder that verifies instead, the seeds'
    /// `_recover_from_backup` (default `false`). [`Vault::recovery`](crate::Vault::recovery) says
    /// when it happened, and the audit log records it.
    pub recover_on_open: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            retention: BACKUP_RETENTION,
            recover_on_open: false,
        }
    }
}

impl BackupConfig {
    pub(crate) fn dir_for(&self, db: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| db.parent().unwrap_or(Path::new(".")).join("backups"))
    }
}

/// How a damaged vault was recovered on open ([`Vault::recovery`](crate::Vault::recovery)).
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// The backup the vault now holds.
    pub backup: PathBuf,
    /// Where the damaged file (and its WAL, if any) was moved.
    pub damaged_file: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// What [`Vault::backup`](crate::Vault::backup) wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Older backups deleted from the default folder.
    pub removed: Vec<PathBuf>,
}

/// What [`Vault::verify_backup`](crate::Vault::verify_backup) found.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerification {
    /// Whether every check passed and the chain holds.
    pub ok: bool,
    /// The file checks.
    pub checks: CheckReport,
    /// The audit chain.
    pub chain: Option<ChainReport>,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
}

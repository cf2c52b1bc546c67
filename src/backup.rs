//! Backup, verify, restore and rekey: the whole file at once.
//!
//! - **Backup** is `VACUUM INTO` a new file: a consistent snapshot taken
//!   while the vault is in use, encrypted with the same key and cipher
//!   settings. It is written under a temporary name (created 0600 first,
//!   since `VACUUM INTO` would otherwise use the default mode), switched to
//!   WAL, synced, and renamed into place, so a crash never leaves a
//!   half-written backup under the final name. By default it goes to a
//!   `backups/` folder beside the database, where backups older than
//!   `keep` (7 days) are deleted.
//! - **Verify** opens a backup with the vault's key and runs the file checks
//!   (every page's HMAC, `integrity_check`, foreign keys), the audit chain,
//!   and counts rows; garbage and other keys are refused with the usual
//!   typed errors.
//! - **Restore** verifies the backup, refuses while any other connection has
//!   the live file open, and copies the backup into it with SQLite's online
//!   backup API: one write transaction, so the file is either the old one or
//!   the restored one.
//! - **Rekey** re-encrypts the file with a new key (`sqlite3_rekey_v2`, also
//!   in WAL mode), records the date in `vault_meta` and in the audit log, and
//!   closes the vault: the old key stops working.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::audit::{AuditEvent, ChainReport, EventKind};
use crate::clock::Timestamp;
use crate::core::meta;
use crate::key::{Key, KeySource};
use crate::store::{CheckReport, ConnSettings, with_suffix};
use crate::{Error, Result, Vault, VaultOptions};

/// How long backups in the default folder are kept by default.
pub const BACKUP_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where backups go, how long they are kept, and whether opening a damaged
/// file falls back to one ([`VaultOptions::backups`]).
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
    /// `_recover_from_backup` (default `false`). [`Vault::recovery`] says
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
    fn dir_for(&self, db: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| db.parent().unwrap_or(Path::new(".")).join("backups"))
    }
}

/// How a damaged vault was recovered on open ([`Vault::recovery`]).
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// The backup the vault now holds.
    pub backup: PathBuf,
    /// Where the damaged file (and its WAL, if any) was moved.
    pub damaged_file: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// What [`Vault::backup`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Older backups deleted from the default folder.
    pub removed: Vec<PathBuf>,
}

/// What [`Vault::verify_backup`] found.
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

impl Vault {
    /// Writes a consistent, encrypted copy of the vault (see the module
    /// docs). `out` names the file; by default it goes to the backup folder
    /// ([`BackupConfig::dir`], `backups/` beside the database), named by the
    /// vault clock's time, and older backups there are deleted after
    /// [`BackupConfig::retention`].
    pub async fn backup(&self, out: Option<&Path>) -> Result<BackupReport> {
        self.flush().await?;
        let now = self.now();
        let (path, default_dir) = match out {
            Some(path) => (path.to_owned(), None),
            None => {
                let dir = self.backup_config().dir_for(self.path());
                fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                (dir.join(backup_name(self.path(), now)), Some(dir))
            }
        };
        if path.exists() {
            return Err(Error::invalid(
                "backup path",
                format!("{} exists already", path.display()),
            ));
        }
        let settings = self.store().settings().clone();
        let target = path.clone();
        let bytes = tokio::task::spawn_blocking(move || write_backup(&settings, &target))
            .await
            .map_err(|e| Error::invalid("backup", format!("the backup task failed: {e}")))??;
        let removed = match default_dir {
            Some(dir) => prune(&dir, self.path(), now, self.backup_config().retention)?,
            None => Vec::new(),
        };
        Ok(BackupReport {
            path,
            bytes,
            removed,
        })
    }

    /// Opens `path` with this vault's key and checks it: every page, the
    /// integrity of the file, the audit chain; counts rows per table.
    pub async fn verify_backup(&self, path: &Path) -> Result<BackupVerification> {
        let key = self.store().settings().key.clone();
        verify(path, key).await
    }

    /// Replaces the vault file at `options`' path with the verified backup
    /// `backup`. Refuses, changing nothing, if the backup does not verify or
    /// if any other connection has the vault open (stop the service first).
    /// `progress(copied_pages, total_pages)` is called as the copy goes.
    pub async fn restore(
        options: &VaultOptions,
        backup: &Path,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<BackupVerification> {
        let settings = options.resolve_settings()?;
        let verification = verify(backup, settings.key.clone()).await?;
        if !verification.ok {
            return Err(Error::Corrupt {
                path: Some(backup.to_owned()),
                detail: "the backup does not verify (run `statevault backup verify` for details)"
                    .into(),
            });
        }
        let backup = backup.to_owned();
        tokio::task::spawn_blocking(move || copy_into(&settings, &backup, progress))
            .await
            .map_err(|e| Error::invalid("restore", format!("the restore task failed: {e}")))??;
        Ok(verification)
    }

    /// Re-encrypts the file with `new_key` and closes the vault; reopen it
    /// with the new key. Refuses if another process has the file open (its
    /// connections would hold the old key). Records the date as
    /// `key_created_at` in `vault_meta` and a `key.rotate` audit event.
    pub async fn rekey(self, new_key: &Key) -> Result<()> {
        if !self.is_encrypted() {
            return Err(Error::NotEncrypted {
                path: self.path().to_owned(),
            });
        }
        let result = self.rekey_inner(new_key).await;
        let settings = ConnSettings::clone(self.store().settings());
        let closed = self.close().await;
        result.and(closed)?;
        // SQLCipher's rekey switches the connection to the new key first and
        // can report success when its own transaction failed: only a fresh
        // connection reading the file with the new key proves it took.
        let fresh = ConnSettings {
            key: Some(new_key.clone()),
            ..settings
        };
        fresh
            .open_for_check()
            .and_then(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?)
            })
            .map_err(|e| Error::Corrupt {
                path: Some(self.path().to_owned()),
                detail: format!(
                    "the rekey did not take: the file does not open with the new key ({e})"
                ),
            })
    }

    async fn rekey_inner(&self, new_key: &Key) -> Result<()> {
        self.audit()
            .append(AuditEvent::new(EventKind::Admin, "key.rotate"))?;
        self.flush().await?;
        self.store().close_readers().await;
        let mut conn = self.store().sqlx_writer_conn().await?;
        // Holding the file exclusively proves no other process has it open.
        sqlx::query("PRAGMA locking_mode = EXCLUSIVE")
            .execute(&mut *conn)
            .await?;
        let exclusive = sqlx::query("BEGIN EXCLUSIVE").execute(&mut *conn).await;
        if exclusive.is_err() {
            let _ = sqlx::query("PRAGMA locking_mode = NORMAL")
                .execute(&mut *conn)
                .await;
            return Err(Error::invalid(
                "rekey",
                "another process has the vault open; stop it and try again",
            ));
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        {
            let mut handle = conn.lock_handle().await?;
            // SAFETY: the locked handle guarantees the worker thread is not
            // using the connection during the call.
            unsafe { new_key.rekey(handle.as_raw_handle().as_ptr()) }.map_err(|rc| {
                Error::Corrupt {
                    path: Some(self.path().to_owned()),
                    detail: format!("SQLCipher refused the new key (code {rc})"),
                }
            })?;
        }
        let now = self.now();
        meta::set(&mut conn, meta::KEY_CREATED_AT, &now.to_rfc3339(), now).await
    }
}

/// `<stem>.<YYYYMMDDTHHMMSSmmmZ>.backup.db`
fn backup_name(db: &Path, now: Timestamp) -> String {
    let stem = db
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("statevault");
    let stamp: String = now
        .to_rfc3339()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{stem}.{stamp}.backup.db")
}

/// Deletes this database's backups in `dir` older than the retention.
fn prune(dir: &Path, db: &Path, now: Timestamp, keep: Duration) -> Result<Vec<PathBuf>> {
    let stem = db
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("statevault");
    let cutoff = backup_name(db, now.saturating_sub(keep));
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Names sort by time: same stem, same fixed-width stamp.
        if name.starts_with(&format!("{stem}.")) && name.ends_with(".backup.db") && name < cutoff {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

fn write_backup(settings: &ConnSettings, path: &Path) -> Result<u64> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("backup");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        let source = settings.open_for_check()?;
        let target = tmp
            .to_str()
            .ok_or_else(|| Error::invalid("backup path", "not UTF-8"))?;
        source.execute("VACUUM INTO ?1", [target])?;
        drop(source);
        // Open it once as a vault connection would: WAL, so that verifying
        // or restoring it later changes nothing in it.
        let copy = settings.for_path(&tmp).open_rusqlite(false)?;
        copy.close().map_err(|(_, e)| Error::from(e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

async fn verify(path: &Path, key: Option<Key>) -> Result<BackupVerification> {
    check_backup_file(path)?;
    let source = match key {
        Some(key) => KeySource::Key(key),
        None => KeySource::None,
    };
    let options = VaultOptions::new(path)
        .key_source(source)
        .create_if_missing(false)
        .migrate(false)
        .sweep_interval(None);
    let checks = Vault::check_file(&options).await?;
    if !checks.ok() {
        return Ok(BackupVerification {
            ok: false,
            checks,
            chain: None,
            tables: BTreeMap::new(),
        });
    }
    // Never recovering: a backup is checked as it is.
    let vault = Vault::open_as_is(options).await?;
    let result = async {
        let chain = vault.audit().verify().await?;
        let tables = vault.info().await?.tables;
        Ok::<_, Error>((chain, tables))
    }
    .await;
    vault.close().await?;
    let (chain, tables) = result?;
    Ok(BackupVerification {
        ok: checks.ok() && chain.ok,
        checks,
        chain: Some(chain),
        tables,
    })
}

/// A backup to verify or restore must be a file with something in it. Said
/// of the backup: as a vault, a missing or empty file would be one to
/// `init`.
fn check_backup_file(path: &Path) -> Result<()> {
    let problem = match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => "is not a file",
        Ok(meta) if meta.len() == 0 => "is empty (0 bytes)",
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(e) => return Err(Error::io(path, e)),
    };
    Err(Error::invalid(
        "backup",
        format!("{} {problem}", path.display()),
    ))
}

/// Copies `backup` into the live database with the online backup API,
/// after making sure no other connection has the live file open.
fn copy_into(
    settings: &ConnSettings,
    backup: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    let source = settings.for_path(backup).open_for_check()?;
    let mut live = settings.open_rusqlite(false)?;
    live.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")?;
    live.busy_timeout(Duration::ZERO)?;
    if live.execute_batch("BEGIN EXCLUSIVE; COMMIT;").is_err() {
        return Err(Error::invalid(
            "restore",
            "another process has the vault open; stop it (the service, other CLI commands) and try again",
        ));
    }
    live.busy_timeout(settings.busy_timeout)?;
    let copy = rusqlite::backup::Backup::new(&source, &mut live)?;
    loop {
        let step = copy.step(256)?;
        let p = copy.progress();
        let total = u64::try_from(p.pagecount).unwrap_or(0);
        progress(
            total.saturating_sub(u64::try_from(p.remaining).unwrap_or(0)),
            total,
        );
        match step {
            rusqlite::backup::StepResult::Done => break,
            rusqlite::backup::StepResult::More => {}
            // Busy or locked: the source's reader is in the way for a moment;
            // SQLite's own backup example pauses and steps again.
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(copy);
    live.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    live.close().map_err(|(_, e)| Error::from(e))
}

/// This database's backups in `dir`, newest first.
fn backups_of(dir: &Path, db: &Path) -> Vec<PathBuf> {
    let stem = db
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("statevault");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}.")) && n.ends_with(".backup.db"))
        })
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found
}

/// Opening `options` failed with `damage`: moves the damaged file aside and
/// puts the newest backup that verifies in its place. Fails, changing
/// nothing, when no backup verifies.
pub(crate) async fn recover(options: &VaultOptions, damage: &Error) -> Result<Recovery> {
    let db = options.path();
    let dir = options.backup_config().dir_for(db);
    let key = options.resolve_key()?;
    let mut chosen = None;
    for backup in backups_of(&dir, db) {
        match verify(&backup, key.clone()).await {
            Ok(v) if v.ok => {
                chosen = Some(backup);
                break;
            }
            Ok(_) => {
                tracing::warn!(backup = %backup.display(), "backup does not verify; trying an older one")
            }
            Err(e) => {
                tracing::warn!(backup = %backup.display(), error = %e, "backup unusable; trying an older one")
            }
        }
    }
    let Some(backup) = chosen else {
        return Err(Error::Corrupt {
            path: Some(db.to_owned()),
            detail: format!(
                "{damage}; recovery found no backup that verifies in {}",
                dir.display()
            ),
        });
    };
    let stamp: String = options
        .clock_now()
        .to_rfc3339()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    // The copy is made (and synced) before anything is moved: if it fails,
    // the damaged file is where it was.
    let staged = stage_copy(&backup, db)?;
    let damaged_file = with_suffix(db, &format!(".damaged-{stamp}"));
    if let Err(e) = fs::rename(db, &damaged_file) {
        let _ = fs::remove_file(&staged);
        return Err(Error::io(db, e));
    }
    // The WAL belongs to the damaged file: it must never be replayed into
    // the backup. Keep it beside the damaged file; the shm is rebuilt.
    let wal = with_suffix(db, "-wal");
    if wal.exists()
        && let Err(e) = fs::rename(&wal, with_suffix(&damaged_file, "-wal"))
    {
        let _ = fs::rename(&damaged_file, db);
        let _ = fs::remove_file(&staged);
        return Err(Error::io(&wal, e));
    }
    let shm = with_suffix(db, "-shm");
    if shm.exists() {
        fs::remove_file(&shm).map_err(|e| Error::io(&shm, e))?;
    }
    fs::rename(&staged, db).map_err(|e| Error::io(db, e))?;
    Ok(Recovery {
        backup,
        damaged_file,
        reason: damage.to_string(),
    })
}

/// Copies `from` to a 0600 temporary file beside `to`, synced, and returns
/// its path: renaming it to `to` then never leaves `to` half-written.
fn stage_copy(from: &Path, to: &Path) -> Result<PathBuf> {
    let tmp = with_suffix(to, &format!(".tmp-{}", std::process::id()));
    let copied = (|| {
        let mut src = fs::File::open(from).map_err(|e| Error::io(from, e))?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        std::io::copy(&mut src, &mut dst).map_err(|e| Error::io(&tmp, e))?;
        dst.sync_all().map_err(|e| Error::io(&tmp, e))
    })();
    match copied {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

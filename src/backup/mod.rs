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

use crate::audit::{AuditEvent, EventKind};
use crate::clock::Timestamp;
use crate::core::meta;
use crate::key::{Key, KeySource};
use crate::store::{ConnSettings, with_suffix};
use crate::{Error, Result, Vault, VaultOptions};

mod types;

pub use types::{BACKUP_RETENTION, BackupConfig, BackupReport, BackupVerification, Recovery};

impl Vault {
    /// Writes a consistent, encrypted copy of the vault (see the module
    /// docs). `out` names the file; by default it goes to the backup folder
    /// ([`BackupConfig::dir`], `backups/` beside the database), named by the
    /// vault clock's time, and older backups there are deleted after
    /// [`BackupConfig::retention`].
    #[tracing::instrument(name = "vault.backup", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn backup(&self, out: Option<&Path>) -> Result<BackupReport> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
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
                let settings = self.store()?.settings().clone();
                let target = path.clone();
                let bytes = tokio::task::spawn_blocking(move || {
                    crate::store::write_backup(&settings, &target)
                })
                .await
                .map_err(|e| Error::Internal {
                    detail: format!("the backup task failed: {e}"),
                })??;
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
            .await,
            crate::trace::ok,
        )
    }

    /// Opens `path` with this vault's key and checks it: every page, the
    /// integrity of the file, the audit chain; counts rows per table.
    pub async fn verify_backup(&self, path: &Path) -> Result<BackupVerification> {
        let key = self.store()?.settings().key.clone();
        Vault::verify_file(path, key).await
    }

    /// Replaces the vault file at `options`' path with the verified backup
    /// `backup`. Refuses, changing nothing, if the backup does not verify or
    /// if any other connection has the vault open (stop the service first).
    /// `progress(copied_pages, total_pages)` is called as the copy goes.
    #[tracing::instrument(name = "vault.restore", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn restore(
        options: &VaultOptions,
        backup: &Path,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<BackupVerification> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
            let settings = options.resolve_settings()?;
            if same_file(backup, options.path()) {
                return Err(Error::invalid(
                    "backup",
                    format!(
                        "{} is the vault itself: restore from a backup of it",
                        backup.display()
                    ),
                ));
            }
            let verification = Vault::verify_file(backup, settings.key.clone()).await?;
            if !verification.ok {
                return Err(Error::Corrupt {
                    path: Some(backup.to_owned()),
                    detail: "the backup does not verify (run `statevault backup verify` for details)"
                        .into(),
                });
            }
            let backup = backup.to_owned();
            tokio::task::spawn_blocking(move || crate::store::copy_into(&settings, &backup, progress))
                .await
                .map_err(|e| Error::Internal {
                    detail: format!("the restore task failed: {e}"),
                })??;
            Ok(verification)
        }
            .await,
            crate::trace::ok,
        )
    }

    /// Re-encrypts the file with `new_key` and closes the vault; reopen it
    /// with the new key. Refuses if another process has the file open (its
    /// connections would hold the old key). Records the date as
    /// `key_created_at` in `vault_meta` and a `key.rotate` audit event.
    ///
    /// On PostgreSQL it re-seals every sealed value under `new_key` instead,
    /// in one transaction that holds the sealed tables against writes, and
    /// refuses ([`Error::AlreadyOpen`]) while another statevault handle has
    /// a connection to the database (an instance left running would go on
    /// sealing with the old key). A value that does not open with the
    /// current key refuses it too, naming the row, and changes nothing.
    #[tracing::instrument(name = "vault.rekey", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn rekey(self, new_key: &Key) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                #[cfg(feature = "postgres")]
                if let crate::core::Storage::Postgres(db) = self.core().storage() {
                    let result = self.reseal(db, new_key).await;
                    let closed = self.close().await;
                    return result.and(closed);
                }
                if !self.is_encrypted() {
                    return Err(Error::NotEncrypted {
                        path: self.path().to_owned(),
                    });
                }
                let result = self.rekey_inner(new_key).await;
                let settings = ConnSettings::clone(self.store()?.settings());
                let closed = self.close().await;
                result.and(closed)?;
                crate::store::proves_key(settings, new_key)
            }
            .await,
            crate::trace::ok,
        )
    }

    /// [`Vault::rekey`] on PostgreSQL.
    #[cfg(feature = "postgres")]
    async fn reseal(&self, db: &crate::postgres::Database, new_key: &Key) -> Result<()> {
        if db.others().await? > 0 {
            return Err(Error::AlreadyOpen {
                path: self.path().to_owned(),
                operation: "rekey",
            });
        }
        self.flush().await?;
        let new = db.sealer_for(new_key).await?;
        let columns = [
            crate::sessions::SEALED,
            crate::prefs::SEALED,
            crate::audit::SEALED,
            crate::limits::SEALED,
            crate::cache::SEALED,
        ]
        .concat();
        // The event goes in with what it records: a refused rekey leaves
        // neither.
        let mut tx = db.pool().begin().await?;
        db.hold_sealed(&mut tx, &columns).await?;
        self.audit()
            .append_pg(db, &mut tx, AuditEvent::new(EventKind::Admin, "key.rotate"))
            .await?;
        db.reseal(&mut tx, &new, &columns, self.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rekey_inner(&self, new_key: &Key) -> Result<()> {
        self.flush().await?;
        self.store()?.close_readers().await;
        let mut conn = self.store()?.sqlx_writer_conn().await?;
        crate::store::rekey(&mut conn, new_key, self.path()).await?;
        // Only once the file has the new key (a refused rekey records
        // nothing): the event and the key's date, in one transaction, with
        // whatever was buffered meanwhile before the event.
        let audit = self.audit();
        let _exclusive = audit.exclusive().await;
        let batch = audit.take_batch();
        let now = self.now();
        let written = self
            .store()?
            .immediate(&mut conn, None, async |tx| {
                let rotate = AuditEvent::new(EventKind::Admin, "key.rotate");
                audit.append_after(tx, &batch, rotate).await?;
                meta::set(tx, meta::KEY_CREATED_AT, &now.to_rfc3339(), now).await
            })
            .await;
        audit.settle(batch, written.as_ref().err());
        written
    }

    /// Checks the backup at `path` with `key` (see [`Vault::verify_backup`]).
    pub(crate) async fn verify_file(path: &Path, key: Option<Key>) -> Result<BackupVerification> {
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

    /// Opening `options` failed with `damage`: moves the damaged file aside and
    /// puts the newest backup that verifies in its place. Fails, changing
    /// nothing, when no backup verifies.
    pub(crate) async fn recover(options: &VaultOptions, damage: &Error) -> Result<Recovery> {
        let db = options.path();
        let dir = options.backup_config().dir_for(db);
        let key = options.resolve_key()?;
        let mut chosen = None;
        for backup in backups_of(&dir, db) {
            match Vault::verify_file(&backup, key.clone()).await {
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

/// Whether `a` and `b` name one file (through links, `..` or a symlink).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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
            // Another process pruning at the same time may have taken it first.
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(entry.path(), e)),
            }
        }
    }
    Ok(removed)
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

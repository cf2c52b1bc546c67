//! Copies of the whole file: a backup (`VACUUM INTO`), a restore (the
//! online backup API) and a new key (`sqlite3_rekey_v2`).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::ConnSettings;
use super::page_cache::Role;
use crate::key::Key;
use crate::{Error, Result};

/// Writes a consistent copy of the file to `path` (`VACUUM INTO` a 0600
/// temporary file, switched to WAL, synced, renamed into place); its size.
pub(crate) fn write_backup(settings: &ConnSettings, path: &Path) -> Result<u64> {
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
        let copy = settings.for_path(&tmp).open_rusqlite(Role::Other, false)?;
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

/// Copies `backup` into the live database with the online backup API,
/// after making sure no other connection has the live file open.
pub(crate) fn copy_into(
    settings: &ConnSettings,
    backup: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    let source = settings.for_path(backup).open_for_check()?;
    let mut live = settings.open_rusqlite(Role::Other, false)?;
    live.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")?;
    live.busy_timeout(Duration::ZERO)?;
    if live.execute_batch("BEGIN EXCLUSIVE; COMMIT;").is_err() {
        return Err(Error::AlreadyOpen {
            path: settings.path.clone(),
            operation: "restore",
        });
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

/// Re-encrypts the file under `new_key` on the writer connection `conn`.
/// Holding the file exclusively first proves that no other process has it
/// open (its connections would keep the old key): if one does,
/// [`Error::AlreadyOpen`].
pub(crate) async fn rekey(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    new_key: &Key,
    path: &Path,
) -> Result<()> {
    sqlx::query("PRAGMA locking_mode = EXCLUSIVE")
        .execute(&mut **conn)
        .await?;
    let exclusive = sqlx::query("BEGIN EXCLUSIVE").execute(&mut **conn).await;
    if exclusive.is_err() {
        let _ = sqlx::query("PRAGMA locking_mode = NORMAL")
            .execute(&mut **conn)
            .await;
        return Err(Error::AlreadyOpen {
            path: path.to_owned(),
            operation: "rekey",
        });
    }
    sqlx::query("COMMIT").execute(&mut **conn).await?;
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the locked handle guarantees the worker thread is not using
    // the connection during the call.
    unsafe { new_key.rekey(handle.as_raw_handle().as_ptr()) }.map_err(|rc| Error::Corrupt {
        path: Some(path.to_owned()),
        detail: format!("SQLCipher refused the new key (code {rc})"),
    })
}

/// Proves that a rekey took. SQLCipher's rekey switches the connection to
/// the new key first and can report success when its own transaction
/// failed: only a fresh connection reading the file with the new key shows
/// it.
pub(crate) fn proves_key(settings: ConnSettings, new_key: &Key) -> Result<()> {
    let path = settings.path.clone();
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
            path: Some(path),
            detail: format!(
                "the rekey did not take: the file does not open with the new key ({e})"
            ),
        })
}

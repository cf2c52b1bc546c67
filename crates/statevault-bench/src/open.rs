//! `open`: opening an existing vault, beside rusqlite opening the same file
//! with the same key and setup, and opening a passphrase-keyed vault.

use std::path::Path;
use std::time::{Duration, Instant};

use statevault::{Key, Result, Vault, VaultOptions};

use crate::harness::{key_pragma, median_ms, options};
use crate::report::Open;

/// Medians of `runs` opens of the existing vault at `raw_path` (ours and
/// rusqlite's), and of a passphrase-keyed vault at `pass_path`.
pub async fn open(raw_path: &Path, pass_path: &Path, runs: usize) -> Result<Open> {
    let open_ms = median_ms(runs, async || {
        let started = Instant::now();
        let vault = Vault::open(options(raw_path).create_if_missing(false)).await?;
        let took = started.elapsed();
        vault.close().await?;
        Ok(took)
    })
    .await?;
    let open_ms_rusqlite = median_ms(runs, async || rusqlite_open(raw_path)).await?;
    let pass = || {
        VaultOptions::new(pass_path).key(Key::passphrase("bench passphrase").expect("non-empty"))
    };
    Vault::open(pass()).await?.close().await?;
    let open_ms_passphrase = median_ms(runs.min(5), async || {
        let started = Instant::now();
        let vault = Vault::open(pass()).await?;
        let took = started.elapsed();
        vault.close().await?;
        Ok(took)
    })
    .await?;
    Ok(Open {
        open_ms,
        open_ms_rusqlite,
        open_ratio: open_ms_rusqlite / open_ms,
        open_ms_passphrase,
        runs,
    })
}

/// The physical limit for opening: rusqlite, same file, same key, same setup.
fn rusqlite_open(path: &Path) -> Result<Duration> {
    let key = key_pragma(path)?;
    let started = Instant::now();
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(&format!(
        "{key}PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    ))?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let took = started.elapsed();
    drop(conn);
    Ok(took)
}

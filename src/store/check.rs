//! Integrity checks of the file, run on a connection of their own.
//!
//! A check must report on files too damaged to open as a vault (a corrupt
//! schema page, a broken migration table), so it needs only the file and its
//! key: no migrations, no pools, nothing written. It reads every page, so it
//! runs on a blocking thread, never on the async workers.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use super::conn::ConnSettings;

/// What a check of the file found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Each check that ran, in order.
    pub checks: Vec<Check>,
}

impl CheckReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// One named check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `open`, `cipher_integrity`, `integrity`, `foreign_keys`, …
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// How many times it ran (see [`CIPHER_PASSES`]); 1 for every check but
    /// `cipher_integrity`.
    pub passes: u32,
}

/// How many passes `cipher_integrity` may take before a bad page is
/// believed. SQLCipher's `cipher_integrity_check` reads the file's bytes
/// directly, outside SQLite's snapshot of it. Two things then look like
/// damage on a healthy file that other processes write:
/// - a page that a checkpoint is writing at that moment can read torn;
/// - a page whose current version is still only in the WAL: a checkpoint
///   that could not copy every frame (a reader held some back) has already
///   grown the file to its new size, and the new pages read as zeros until
///   a later checkpoint copies them.
///
/// So a page that fails is not reported while the WAL holds a frame for it
/// (SQLite reads that frame, not the file's copy, and `integrity` checks it
/// through SQLite), and the check runs again while it finds problems: only
/// a problem found by every pass is reported. Damage stays put.
pub const CIPHER_PASSES: u32 = 4;

/// Runs every check; a check that cannot run counts as failed, with the reason.
///
/// SQLCipher's `cipher_integrity_check` (every page's HMAC, naming the bad
/// pages) runs first: it needs no schema, so it reports even when SQLite
/// cannot read the file's tables. A wrong key is not a report of a thousand
/// bad pages but [`crate::Error::WrongKey`].
pub(crate) fn check_file(settings: &ConnSettings) -> crate::Result<CheckReport> {
    let mut checks = Vec::new();
    let conn = match settings.open_for_check() {
        Ok(conn) => conn,
        Err(e) => {
            checks.push(Check {
                name: "open",
                ok: false,
                problems: vec![e.to_string()],
                passes: 1,
            });
            return Ok(CheckReport { checks });
        }
    };
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        match super::conn::classify(&settings.path, settings.key.as_ref(), e) {
            e @ crate::Error::WrongKey { .. } => return Err(e),
            e => checks.push(Check {
                name: "schema",
                ok: false,
                problems: vec![e.to_string()],
                passes: 1,
            }),
        }
    }
    if settings.key.is_some() {
        checks.push(cipher_integrity(&conn, &settings.path));
    }
    // One read transaction: both checks judge the same snapshot, whatever
    // other processes commit meanwhile.
    let snapshot = conn.execute_batch("BEGIN");
    checks.push(run(
        &conn,
        "integrity",
        "PRAGMA integrity_check",
        Some("ok"),
    ));
    checks.push(run(&conn, "foreign_keys", "PRAGMA foreign_key_check", None));
    if snapshot.is_ok() {
        let _ = conn.execute_batch("COMMIT");
    }
    Ok(CheckReport { checks })
}

/// Every page's HMAC, in up to [`CIPHER_PASSES`] passes: a problem is
/// reported only if every pass finds it, and never for a page the WAL has.
fn cipher_integrity(conn: &rusqlite::Connection, db: &Path) -> Check {
    let pass = || {
        let mut check = run(
            conn,
            "cipher_integrity",
            "PRAGMA cipher_integrity_check",
            None,
        );
        if !check.ok {
            let in_wal = wal_pages(&super::with_suffix(db, "-wal"));
            check
                .problems
                .retain(|p| page_of(p).is_none_or(|page| !in_wal.contains(&page)));
            check.ok = check.problems.is_empty();
        }
        check
    };
    let mut check = pass();
    while !check.ok && check.passes < CIPHER_PASSES {
        let again = pass();
        check.problems.retain(|p| again.problems.contains(p));
        check.ok = check.problems.is_empty();
        check.passes += 1;
    }
    check
}

/// The page a problem line names ("... for page 35", "... page 8488 at ..."),
/// if it names one.
fn page_of(problem: &str) -> Option<u32> {
    let (_, rest) = problem.split_once("page ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The pages that the WAL file holds frames for, in its current generation
/// (frames whose salts match its header); empty if there is no WAL or it
/// cannot be read. Frame headers are not encrypted: 4 bytes of page number,
/// 4 of database size, 8 of salt, 8 of checksum.
fn wal_pages(wal: &Path) -> HashSet<u32> {
    let mut pages = HashSet::new();
    let Ok(file) = std::fs::File::open(wal) else {
        return pages;
    };
    let mut header = [0u8; 32];
    if file.read_exact_at(&mut header, 0).is_err() {
        return pages;
    }
    let page_size = u64::from(u32::from_be_bytes([
        header[8], header[9], header[10], header[11],
    ]));
    let salt = &header[16..24];
    let len = file.metadata().map_or(0, |m| m.len());
    let mut frame = [0u8; 24];
    let mut offset = 32;
    while page_size > 0 && offset + 24 + page_size <= len {
        if file.read_exact_at(&mut frame, offset).is_err() || frame[8..16] != *salt {
            break;
        }
        pages.insert(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]));
        offset += 24 + page_size;
    }
    pages
}

/// Runs a check pragma; every row that is not `ok_row` is a problem.
fn run(conn: &rusqlite::Connection, name: &'static str, sql: &str, ok_row: Option<&str>) -> Check {
    let rows = (|| {
        let mut stmt = conn.prepare(sql)?;
        let columns = stmt.column_count();
        let lines = stmt
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i).map(|v| text(&v)))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|cells| cells.join(" "))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok::<_, rusqlite::Error>(lines)
    })();
    let problems = match rows {
        Ok(lines) => lines
            .into_iter()
            .filter(|l| Some(l.as_str()) != ok_row)
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    Check {
        name,
        ok: problems.is_empty(),
        problems,
        passes: 1,
    }
}

fn text(value: &rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::page_of;

    #[test]
    fn problem_lines_name_their_page() {
        assert_eq!(page_of("HMAC verification failed for page 35"), Some(35));
        assert_eq!(
            page_of("error reading 4096 bytes from file page 8488 at offset 1"),
            Some(8488)
        );
        assert_eq!(page_of("file is not a database"), None);
    }
}

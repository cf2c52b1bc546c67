//! Integrity checks of the file, run on a connection of their own.
//!
//! A check must report on files too damaged to open as a vault (a corrupt
//! schema page, a broken migration table), so it needs only the file and its
//! key: no migrations, no pools, nothing written. It reads every page, so it
//! runs on a blocking thread, never on the async workers.

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
/// directly, outside SQLite's snapshot of it, so a page that another
/// process's checkpoint is writing at that moment (or a tail it is
/// truncating) can read torn. Damage stays put; a torn read does not. So
/// the check runs again while it finds problems, and only a problem found by
/// every pass is reported.
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
        checks.push(cipher_integrity(&conn));
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
/// reported only if every pass finds it.
fn cipher_integrity(conn: &rusqlite::Connection) -> Check {
    let sql = "PRAGMA cipher_integrity_check";
    let mut check = run(conn, "cipher_integrity", sql, None);
    while !check.ok && check.passes < CIPHER_PASSES {
        let again = run(conn, "cipher_integrity", sql, None);
        check.problems.retain(|p| again.problems.contains(p));
        check.ok = check.problems.is_empty();
        check.passes += 1;
    }
    check
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

//! `init`, `migrate`, `info`, `sql`, `check`: the file itself.

use std::collections::BTreeMap;
use std::process::ExitCode;

use statevault::{
    Check, KeySource, MigrationStatus, Result, Vault, VaultOptions, default_key_file,
};

use super::print_json;

pub async fn init(options: VaultOptions) -> Result<ExitCode> {
    // An empty file is where the vault is made, not a vault.
    let existed = std::fs::metadata(options.path()).is_ok_and(|m| m.len() > 0);
    let key_file = match options.key_origin() {
        KeySource::File(file) => Some(file.clone()),
        KeySource::Auto => Some(default_key_file(options.path())),
        KeySource::Key(_) | KeySource::None => None,
    };
    let vault = Vault::open(options.create_if_missing(true).migrate(true)).await?;
    let path = vault.path().display().to_string();
    let key_file = key_file.filter(|f| f.exists());
    if existed {
        say!("{path}: exists, schema up to date");
    } else if let (true, Some(key_file)) = (vault.is_encrypted(), key_file) {
        say!("{path}: created, encrypted; key in {}", key_file.display());
    } else if vault.is_encrypted() {
        say!("{path}: created, encrypted");
    } else {
        say!("{path}: created, NOT encrypted (--no-encryption)");
    }
    vault.close().await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(vault: &Vault, status: bool) -> Result<ExitCode> {
    let before = vault.migration_status().await?;
    if status {
        say_status(&before)?;
        return Ok(ExitCode::SUCCESS);
    }
    vault.migrate().await?;
    let applied = before.iter().filter(|m| !m.applied).count();
    say!("applied {applied} migration(s); schema up to date");
    Ok(ExitCode::SUCCESS)
}

pub async fn info(vault: &Vault, json: bool) -> Result<ExitCode> {
    let info = vault.info().await?;
    if json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let encrypted = match (&info.encrypted, &info.cipher_version) {
        (true, Some(v)) => format!("yes (SQLCipher {v})"),
        (true, None) => "yes".into(),
        (false, _) => "no".into(),
    };
    let schema = schema_version(info.schema_version, info.latest_schema_version);
    say!("path            {}", info.path.display());
    say!("file_bytes      {}", info.file_bytes);
    say!("wal_bytes       {}", info.wal_bytes);
    say!("encrypted       {encrypted}");
    say!("journal_mode    {}", info.journal_mode);
    say!("schema_version  {schema}");
    say!(
        "created_at      {}",
        info.created_at.as_deref().unwrap_or("-")
    );
    say!(
        "key_created_at  {}",
        info.key_created_at.as_deref().unwrap_or("-")
    );
    say_tables(&info.tables)?;
    Ok(ExitCode::SUCCESS)
}

/// `info`'s schema version: the applied one, and this build's if newer.
pub(super) fn schema_version(applied: i64, latest: i64) -> String {
    if applied == latest {
        format!("{applied} (latest)")
    } else {
        format!("{applied} (this build has {latest})")
    }
}

/// `info`'s rows per table.
pub(super) fn say_tables(tables: &BTreeMap<String, i64>) -> Result<()> {
    say!("tables");
    for (name, rows) in tables {
        say!("  {name:<20} {rows:>10}");
    }
    Ok(())
}

/// `migrate --status`: each migration, applied or pending.
pub(super) fn say_status(all: &[MigrationStatus]) -> Result<()> {
    for m in all {
        let state = if m.applied { "applied" } else { "pending" };
        say!("{} {:<8} {}", m.version, state, m.description);
    }
    Ok(())
}

pub async fn sql(vault: &Vault, query: &str, json: bool) -> Result<ExitCode> {
    let rows = vault.query_read_only(query).await?;
    if json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .rows
            .iter()
            .map(|row| {
                rows.columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect()
            })
            .collect();
        print_json(&objects)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| super::escape(&text_of(v)).into_owned())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..rows.columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([super::escape(&rows.columns[i]).chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[String]| {
        values
            .iter()
            .zip(&widths)
            // Padded by hand: `format!`'s width stops at 65535.
            .map(|(v, w)| format!("{v}{}", " ".repeat(w - v.chars().count())))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    let columns: Vec<String> = rows
        .columns
        .iter()
        .map(|c| super::escape(c).into_owned())
        .collect();
    say!("{}", line(&columns));
    say!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in &cells {
        say!("{}", line(row));
    }
    say!(
        "({} row{})",
        cells.len(),
        if cells.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the file without opening it as a vault, so that a file too
/// damaged to open still gets a report naming what is wrong; then, if the
/// file is sound, opens it and verifies the audit chain.
pub async fn check(options: &VaultOptions, json: bool) -> Result<ExitCode> {
    let mut report = Vault::check_file(options).await?;
    if report.ok() {
        let vault = Vault::open(options.clone().create_if_missing(false).migrate(false)).await?;
        let chain = chain_check(&vault).await;
        vault.close().await?;
        report.checks.push(chain?);
    }
    say_report(&report, json)
}

/// `check` of a vault already open (on PostgreSQL: every sealed value
/// opens), then its audit chain.
#[cfg(feature = "postgres")]
pub async fn check_vault(vault: &Vault, json: bool) -> Result<ExitCode> {
    let mut report = vault.check().await?;
    report.checks.push(chain_check(vault).await?);
    say_report(&report, json)
}

/// The audit chain's verification, as a check.
async fn chain_check(vault: &Vault) -> Result<Check> {
    let chain = vault.audit().verify().await?;
    Ok(Check {
        name: "audit_chain",
        ok: chain.ok,
        problems: if chain.ok {
            Vec::new()
        } else {
            vec![super::audit::describe(&chain)]
        },
        passes: 1,
    })
}

/// Prints `report`; exits 1, naming the failed checks, if any failed.
fn say_report(report: &statevault::CheckReport, json: bool) -> Result<ExitCode> {
    if json {
        print_json(report)?;
    } else {
        for check in &report.checks {
            if check.ok {
                say!("ok    {}", check.name);
            } else {
                say!("FAIL  {}", check.name);
                for problem in check.problems.iter().take(20) {
                    say!("      {problem}");
                }
                if check.problems.len() > 20 {
                    say!("      … and {} more", check.problems.len() - 20);
                }
            }
        }
    }
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        let failed: Vec<_> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        super::print_error(format_args!("check failed: {}", failed.join(", ")));
        Ok(ExitCode::FAILURE)
    }
}

/// A JSON value as a table cell: strings without quotes, NULL spelled out.
fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".into(),
        v => v.to_string(),
    }
}

/// `sweep`; `on_file` adds the pages given back to the file system.
pub async fn sweep(vault: &Vault, json: bool, on_file: bool) -> Result<ExitCode> {
    let report = vault.sweep().await?;
    if json {
        print_json(&report)?;
    } else {
        for (table, rows) in &report.removed {
            say!("{table:<14} {rows:>8} removed");
        }
        if on_file {
            say!("{:<14} {:>8} pages given back", "file", report.pages_freed);
        }
    }
    Ok(ExitCode::SUCCESS)
}

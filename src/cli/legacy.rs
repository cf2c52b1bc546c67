//! `import-legacy DIR [--json]`: the seeds' old file layout into the vault,
//! one line per file (what was imported, or why not).

use std::path::Path;
use std::process::ExitCode;

use statevault::{Result, Vault};

use super::print_json;

pub async fn run(vault: &Vault, dir: &Path, json: bool) -> Result<ExitCode> {
    let report = vault.import_legacy(dir).await?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for file in &report.files {
        say!(
            "{:<16} {:<17} {}  {}",
            file.outcome.to_string(),
            file.kind.to_string(),
            file.path.display(),
            file.detail
        );
    }
    if report.files.is_empty() {
        say!(
            "nothing to import in {}: no session.json, session.enc, rate_limits/, cache/l2/ or preferences/",
            report.dir.display()
        );
    } else {
        say!(
            "{}: {} imported, {} already imported, {} skipped",
            report.dir.display(),
            report.imported,
            report.already_imported,
            report.skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

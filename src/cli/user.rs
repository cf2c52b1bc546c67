//! `user export USER [--out FILE]`, `user erase USER`.

use std::path::PathBuf;
use std::process::ExitCode;

use statevault::{Error, Result, Vault};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Everything about the user, as JSON.
    Export {
        /// The user.
        user: String,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erase the user from every table in one transaction; prints counts.
    Erase {
        /// The user.
        user: String,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    match command {
        Command::Export { user, out } => {
            let export = vault.export_user(&user).await?;
            let json = serde_json::to_string_pretty(&export)?;
            match out {
                None => say!("{json}"),
                Some(path) => {
                    write_private(&path, json.as_bytes())?;
                    say!(
                        "exported {user}: {} session(s), {} audit event(s) to {}",
                        export.sessions.len(),
                        export.audit_events.len(),
                        path.display()
                    );
                }
            }
        }
        Command::Erase { user } => {
            let report = vault.erase_user(&user).await?;
            say!("erased {user}:");
            for (table, rows) in &report.rows {
                say!("  {table:<14} {rows}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Personal data goes to a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)
}

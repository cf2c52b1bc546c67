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
        /// Write to this new file (mode 0600) instead of standard output;
        /// anything already at the path (a file, a symlink) is refused.
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
            match out {
                None => super::print_json(&export)?,
                Some(path) => {
                    write_private(&path, serde_json::to_string_pretty(&export)?.as_bytes())?;
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

/// Personal data goes to a new file only its owner can read: created
/// exclusively (`O_EXCL`, which also refuses a symlink, dangling or not),
/// never an existing file reused with its mode, never a link's target. A
/// failed write removes the file it created.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::InvalidInput {
                what: "export path",
                reason: format!("{} exists already", path.display()),
            },
            _ => io(e),
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    Ok(())
}

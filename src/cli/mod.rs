//! Argument parsing, opening the vault, and the one place errors are printed.
//!
//! Every command that opens the vault closes it before `main` returns, on
//! success and on error alike: connections left open at exit have crashed
//! processes with bundled SQLCipher.
//!
//! Everything the commands print goes through [`escape`] (`say!` for a
//! line, [`print_json`], [`print_lines`], `print_error`): text that came
//! from the file or the command line never reaches a terminal raw.

/// Prints one line on stdout, [escaped](escape) (a newline or an escape
/// sequence inside a user id shows as `\n`, `\u{1b}`), and returns from
/// the calling function if stdout is gone ([`write_line`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_line(&format!($($arg)*))?
    };
}

mod admin;
mod audit;
mod backup;
mod bench;
mod cache;
mod demo;
mod legacy;
mod limits;
mod metrics;
#[cfg(feature = "postgres")]
mod postgres;
mod prefs;
mod session;
mod user;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use statevault::{Config, DB_ENV, DEFAULT_DB, KeySource, Result, Vault, VaultOptions};

/// Keep all of a service's local state in one encrypted SQLite file.
#[derive(Debug, Parser)]
#[command(name = "statevault", version, about)]
struct Cli {
    /// The database file (default: the config's storage_paths.database, else
    /// statevault.db).
    #[arg(long, global = true, env = DB_ENV)]
    db: Option<PathBuf>,

    /// Settings (TOML); default: statevault.toml beside the database, if any.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Read the key from this file (default: $STATEVAULT_KEY, else the
    /// config's storage_paths.key_file, else <db>.key).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "no_encryption"
    )]
    key_file: Option<PathBuf>,

    /// Use (or create) a plain, unencrypted SQLite file.
    #[arg(long, global = true)]
    no_encryption: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the file and its key file if missing, and migrate it. Idempotent.
    Init,
    /// Apply pending migrations, or list applied and pending ones.
    Migrate {
        /// List migrations instead of applying them.
        #[arg(long)]
        status: bool,
    },
    /// Path, size, encryption, journal mode, schema version, rows per table.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run read-only SQL against the decrypted file and print the rows.
    Sql {
        /// The query.
        query: String,
        /// Print rows as JSON objects.
        #[arg(long)]
        json: bool,
    },
    /// Integrity checks; exit 0 when all pass, 1 otherwise.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sessions: list a user's, revoke one or all of a user's.
    #[command(subcommand)]
    Session(session::Command),
    /// The audit log: verify the chain, show the last events.
    #[command(subcommand)]
    Audit(audit::Command),
    /// A user's preferences: show or merge-patch them.
    #[command(subcommand)]
    Prefs(prefs::Command),
    /// Everything about a user: export it or erase it.
    #[command(subcommand)]
    User(user::Command),
    /// Run retention now: each facet's expired rows, in small batches; print what went.
    Sweep {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write an encrypted backup, or verify one (`backup verify FILE`).
    Backup(backup::BackupArgs),
    /// Replace the vault with a verified backup (nothing else may have it open).
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Re-encrypt the vault with the key in FILE (nothing else may have it open).
    Rekey {
        /// The new key: `x'<64 hex>'` or a passphrase, mode 0600.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// The main job: drive a realistic service workload through every facet
    /// and print a report.
    Demo(demo::Args),
    /// The standard workloads, in a temporary directory (never touches --db):
    /// runs the `statevault-bench` binary beside this one.
    Bench(bench::Args),
    /// Rate limits of a subject: status, reset.
    #[command(subcommand)]
    Limits(limits::Command),
    /// The two-level cache: stats, invalidate by tag, clear.
    #[command(subcommand)]
    Cache(cache::Command),
    /// Stored metrics as Prometheus text or JSON.
    Metrics {
        /// Output format.
        #[arg(long, value_enum, default_value = "prometheus")]
        format: metrics::Format,
        /// Quantiles (and, for JSON, everything) over the last this many
        /// seconds (at least 1).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        window: u64,
    },
    /// Import the seeds' old file layout from DIR (session, rate limits,
    /// L2 cache files, preferences); each file once, whole or not at all.
    ImportLegacy {
        /// The legacy directory (the seeds' ~/.tidal-mcp).
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Each component healthy, warning or critical; exit 0, 1 or 2.
    Health {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses, runs, prints `error: ...` on failure. Exit codes: 0 success,
/// 1 failure (or a failed check), 2 bad arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints its own `error: ...` line (or the help text).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // The reader went away (`statevault sql ... | head`): nothing to say.
        Err(statevault::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::FAILURE
        }
        Err(e) => {
            print_error(e);
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    wait_for_other_threads(std::time::Duration::from_secs(2));
    code
}

/// Returns once this is the process's only thread, or after `limit`.
///
/// `Vault::close` has closed every connection, but sqlx's connection
/// threads end a moment after they confirm: in 9 of 30 runs of `statevault
/// sql` one was still exiting when `main` returned. A thread that has run
/// SQLCipher runs OpenSSL's thread-local destructors as it ends, and
/// `exit` runs OpenSSL's global cleanup: the two at once is how a run
/// printed `double free or corruption (fasttop)` and still exited 0 (the
/// message came from the other thread, after `main` had chosen its
/// status). Linux only (`/proc/self/task`); elsewhere it returns at once.
fn wait_for_other_threads(limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() > 1)
        && started.elapsed() < limit
    {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Prints `error: <message>` as one line, [escaped](escape).
fn print_error(message: impl std::fmt::Display) {
    eprintln!("error: {}", escape(&message.to_string()));
}

/// The one rule for text that came from the file or the command line and
/// goes to a terminal: control characters (a newline, an escape sequence in
/// a user id) are shown escaped (`\n`, `\u{1b}`), never sent raw.
pub(crate) fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The vault's options: flags and environment first, then the config file,
/// then the defaults.
fn options(cli: &Cli) -> Result<VaultOptions> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => {
            let dir = cli
                .db
                .as_deref()
                .and_then(Path::parent)
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Config::discover(dir)?.unwrap_or_default()
        }
    };
    let db = cli
        .db
        .clone()
        .or_else(|| config.database())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
    let options = config.apply(VaultOptions::new(db))?;
    Ok(match (&cli.key_file, cli.no_encryption) {
        (Some(path), _) => options.key_source(KeySource::File(path.clone())),
        (None, true) => options.key_source(KeySource::None),
        (None, false) => options,
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let options = options(&cli)?;
    #[cfg(feature = "postgres")]
    if let Some(url) = options.postgres_url() {
        return postgres::run(url, &options, cli.command).await;
    }
    match cli.command {
        Command::Bench(args) => bench::launch(args),
        Command::Init => admin::init(options).await,
        Command::Demo(args) => demo::run(options, args).await,
        Command::Restore { file } => backup::restore(&options, &file).await,
        Command::Rekey { new_key_file } => backup::rekey(options, &new_key_file).await,
        Command::Check { json } => admin::check(&options, json).await,
        Command::Health { json } => metrics::health(options, json).await,
        command => {
            let vault = Vault::open(options.create_if_missing(false).migrate(false)).await?;
            warn_if_recovered(&vault);
            let result = dispatch(&vault, command).await.map_err(|e| match e {
                statevault::Error::ReadOnly { path: None, detail } => statevault::Error::ReadOnly {
                    path: Some(vault.path().to_owned()),
                    detail,
                },
                e => e,
            });
            let closed = vault.close().await;
            let code = result?;
            closed?;
            Ok(code)
        }
    }
}

async fn dispatch(vault: &Vault, command: Command) -> Result<ExitCode> {
    match command {
        Command::Migrate { status } => admin::migrate(vault, status).await,
        Command::Info { json } => admin::info(vault, json).await,
        Command::Sql { query, json } => admin::sql(vault, &query, json).await,
        Command::Session(command) => session::run(vault, command).await,
        Command::Sweep { json } => admin::sweep(vault, json, true).await,
        Command::Backup(args) => backup::backup(vault, args).await,
        Command::Audit(command) => audit::run(vault, command).await,
        Command::Prefs(command) => prefs::run(vault, command).await,
        Command::User(command) => user::run(vault, command).await,
        Command::Limits(command) => limits::run(vault, command).await,
        Command::Cache(command) => cache::run(vault, command).await,
        Command::Metrics { format, window } => metrics::metrics(vault, format, window).await,
        Command::ImportLegacy { dir, json } => legacy::run(vault, &dir, json).await,
        Command::Init
        | Command::Health { .. }
        | Command::Check { .. }
        | Command::Bench(_)
        | Command::Demo(_)
        | Command::Restore { .. }
        | Command::Rekey { .. } => {
            unreachable!("handled before the vault is opened")
        }
    }
}

/// Says on stderr when opening fell back to a backup.
fn warn_if_recovered(vault: &Vault) {
    if let Some(r) = vault.recovery() {
        let warning = format!(
            "warning: {} was damaged ({}); opened from backup {}; the damaged file is kept as {}",
            vault.path().display(),
            r.reason,
            r.backup.display(),
            r.damaged_file.display()
        );
        eprintln!("{}", escape(&warning));
    }
}

/// Writes one line to stdout, [escaped](escape). `println!` panicked when
/// the reader had closed the pipe (`statevault info | head -1`); this is
/// an error instead, which `main` ends on quietly.
pub(crate) fn write_line(line: &str) -> Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{}", escape(line)).map_err(|e| statevault::Error::Io {
        path: PathBuf::from("standard output"),
        source: e,
    })
}

/// Prints a value as pretty JSON on stdout. serde_json escapes only the
/// C0 controls; the rest (DEL, C1) are escaped here as JSON escapes
/// (`\u009b`). Outside strings, pretty JSON has no control character but
/// its newlines.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    let escaped: String = json
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect();
    for line in escaped.lines() {
        write_line(line)?;
    }
    Ok(())
}

/// Prints text of several lines (Prometheus exposition), each line
/// [escaped](escape).
fn print_lines(text: &str) -> Result<()> {
    for line in text.lines() {
        write_line(line)?;
    }
    Ok(())
}

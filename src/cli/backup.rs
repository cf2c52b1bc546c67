//! `backup [--out FILE]`, `backup verify FILE`, `restore FILE`,
//! `rekey --new-key-file FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use statevault::{
    BackupVerification, Error, KEY_ENV, Key, KeySource, Result, Vault, VaultOptions,
    default_key_file,
};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    /// Where to write the backup (default: the backup folder, backups/
    /// beside the database, keeping 7 days unless the config says otherwise).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    verify: Option<Verify>,
}

#[derive(Debug, clap::Subcommand)]
enum Verify {
    /// Open a backup with the vault's key and check it: pages, integrity,
    /// audit chain, rows per table. Exit 0 if sound, 1 if not.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn backup(vault: &Vault, args: BackupArgs) -> Result<ExitCode> {
    match args.verify {
        Some(Verify::Verify { file, json }) => {
            let verification = vault.verify_backup(&file).await?;
            report(&file, &verification, json)
        }
        None => {
            let written = vault.backup(args.out.as_deref()).await?;
            say!(
                "backup: {} ({} bytes)",
                written.path.display(),
                written.bytes
            );
            for old in &written.removed {
                say!("removed old backup {}", old.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(file: &Path, v: &BackupVerification, json: bool) -> Result<ExitCode> {
    if json {
        super::print_json(v)?;
    } else {
        for check in &v.checks.checks {
            say!("{}  {}", if check.ok { "ok  " } else { "FAIL" }, check.name);
            for problem in check.problems.iter().take(10) {
                say!("      {problem}");
            }
        }
        if let Some(chain) = &v.chain {
            say!(
                "{}  audit_chain: {}",
                if chain.ok { "ok  " } else { "FAIL" },
                super::audit::describe(chain)
            );
        }
        for (table, rows) in &v.tables {
            say!("      {table:<20} {rows:>10}");
        }
    }
    if v.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        super::print_error(format_args!("backup {} does not verify", file.display()));
        Ok(ExitCode::FAILURE)
    }
}

pub async fn restore(options: &VaultOptions, file: &Path) -> Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("restoring [{bar:40}] {pos}/{len} pages")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let verification = Vault::restore(options, file, move |done, total| {
        progress.set_length(total);
        progress.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let verification = verification?;
    let rows: i64 = verification.tables.values().sum();
    say!(
        "restored {} from {} ({rows} rows)",
        options.path().display(),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn rekey(options: VaultOptions, new_key_file: &Path) -> Result<ExitCode> {
    let new_key = Key::read_file(new_key_file)?;
    let path = options.path().to_owned();
    // A vault whose key lives in <db>.key gets the new key there too, so
    // that the next open finds it.
    let default_file = default_key_file(&path);
    let replace_default = matches!(options.key_origin(), KeySource::Auto)
        && std::env::var_os(KEY_ENV).is_none()
        && default_file.exists();
    let vault = Vault::open(options.create_if_missing(false).migrate(false)).await?;
    vault.rekey(&new_key).await?;
    if replace_default {
        let staged = default_file.with_extension("key.new");
        let _ = std::fs::remove_file(&staged);
        new_key.write_new_file(&staged)?;
        std::fs::rename(&staged, &default_file).map_err(|source| Error::Io {
            path: default_file.clone(),
            source,
        })?;
        say!(
            "rekeyed {}; {} now holds the new key",
            path.display(),
            default_file.display()
        );
    } else {
        say!(
            "rekeyed {}; open it with the key in {}",
            path.display(),
            new_key_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! The commands on a `postgres://` URL (feature `postgres`): `init`,
//! `migrate` and `info` through [`statevault::postgres::Database`];
//! `check`, `sweep`, `metrics`, `session`, `prefs`, `limits`, `audit`,
//! `cache`, `user`, `health`, `demo` and `rekey` (re-sealing) through a
//! [`Vault`] on the database. `backup`, `restore`, `sql` and
//! `import-legacy` say what to use instead.

use std::process::ExitCode;

use statevault::postgres::Database;
use statevault::{Error, Result, Vault, VaultOptions};

use super::{Command, admin, bench, demo, metrics, print_json};

pub async fn run(url: &str, options: &VaultOptions, command: Command) -> Result<ExitCode> {
    let key = options.key_origin();
    match command {
        Command::Bench(args) => bench::launch_on(args, Some(url)),
        Command::Init => {
            let (db, created) = Database::init(url, key).await?;
            let info = db.info().await;
            db.close().await;
            let info = info?;
            let state = if created {
                "created"
            } else {
                "exists, schema up to date"
            };
            say!("{} (schema {}): {state}", info.url, info.schema);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { status } => {
            let db = Database::open(url, key).await?;
            let listed = if status {
                Some(db.migration_status().await)
            } else {
                None
            };
            let applied = if status {
                None
            } else {
                Some(db.migrate().await)
            };
            db.close().await;
            admin::say_status(&listed.transpose()?.unwrap_or_default())?;
            if let Some(applied) = applied.transpose()? {
                say!("applied {applied} migration(s); schema up to date");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { json } => {
            let db = Database::open(url, key).await?;
            let info = db.info().await;
            db.close().await;
            let info = info?;
            if json {
                print_json(&info)?;
                return Ok(ExitCode::SUCCESS);
            }
            let schema = admin::schema_version(info.schema_version, info.latest_schema_version);
            say!("url             {}", info.url);
            say!("server_version  {}", info.server_version);
            say!("schema          {}", info.schema);
            say!("schema_version  {schema}");
            say!(
                "created_at      {}",
                info.created_at.as_deref().unwrap_or("-")
            );
            admin::say_tables(&info.tables)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { json } => metrics::health(options.clone(), json).await,
        Command::Demo(args) => demo::run(options.clone(), args).await,
        Command::Rekey { new_key_file } => {
            let new_key = statevault::Key::read_file(&new_key_file)?;
            let vault =
                Vault::open(options.clone().create_if_missing(false).migrate(false)).await?;
            let url = vault.path().display().to_string();
            vault.rekey(&new_key).await?;
            say!(
                "re-sealed every value of {url}; open it with the key in {}, \
                 and start every instance with that key",
                new_key_file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        command @ (Command::Check { .. }
        | Command::Sweep { .. }
        | Command::Metrics { .. }
        | Command::User(_)
        | Command::Session(_)
        | Command::Prefs(_)
        | Command::Limits(_)
        | Command::Audit(_)
        | Command::Cache(_)) => on_vault(options, command).await,
        Command::Backup(_) | Command::Restore { .. } => Err(Error::InvalidInput {
            what: "command",
            reason: "a PostgreSQL database (postgres://) is backed up and restored with its own \
                     tools (pg_dump, pg_restore, or the server's base backups): its sealed \
                     values stay sealed in them"
                .into(),
        }),
        Command::Sql { .. } => Err(Error::InvalidInput {
            what: "command",
            reason: "`sql` reads a SQLite file; on a PostgreSQL database (postgres://) use \
                     psql (statevault's tables are in schema statevault, their values sealed)"
                .into(),
        }),
        Command::ImportLegacy { .. } => Err(Error::InvalidInput {
            what: "command",
            reason: "`import-legacy` imports into a SQLite file only, so far, not into a \
                     PostgreSQL database (postgres://): import into a file"
                .into(),
        }),
    }
}

/// Runs `command` on a vault opened on the database (which must exist and
/// be migrated), and closes it.
async fn on_vault(options: &VaultOptions, command: Command) -> Result<ExitCode> {
    let vault = Vault::open(options.clone().create_if_missing(false).migrate(false)).await?;
    let result = match command {
        Command::Check { json } => admin::check_vault(&vault, json).await,
        Command::Sweep { json } => admin::sweep(&vault, json, false).await,
        command => super::dispatch(&vault, command).await,
    };
    let closed = vault.close().await;
    let code = result?;
    closed?;
    Ok(code)
}

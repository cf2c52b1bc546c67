//! `session list USER`, `session revoke ID`, `session revoke --user USER`.

use std::process::ExitCode;

use statevault::{Result, Vault};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A user's live sessions, oldest first.
    List {
        /// The user.
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one session by id, or every session of a user.
    Revoke {
        /// The session's id (as `session list` shows it).
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<String>,
        /// Revoke every session of this user ("log out everywhere").
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    let sessions = vault.sessions();
    match command {
        Command::List { user, json } => {
            let list = sessions.list(&user).await?;
            if json {
                super::print_json(&list)?;
            } else if list.is_empty() {
                say!("{user} has no live sessions");
            } else {
                say!(
                    "{:<36}  {:<24}  {:<24}  {:<24}  bound",
                    "id",
                    "created",
                    "last seen",
                    "expires"
                );
                for s in &list {
                    say!(
                        "{:<36}  {:<24}  {:<24}  {:<24}  {}",
                        s.id,
                        s.created_at,
                        s.last_seen_at,
                        s.expires_at.min(s.idle_expires_at),
                        if s.device_bound { "yes" } else { "no" }
                    );
                }
            }
        }
        Command::Revoke { id: Some(id), .. } => {
            if sessions.revoke(&id).await? {
                say!("revoked session {id}");
            } else {
                say!("no live session {id}");
            }
        }
        Command::Revoke {
            user: Some(user), ..
        } => {
            let n = sessions.revoke_user(&user).await?;
            say!("revoked {n} session(s) of {user}");
        }
        Command::Revoke {
            id: None,
            user: None,
        } => unreachable!("clap requires an id or --user"),
    }
    Ok(ExitCode::SUCCESS)
}

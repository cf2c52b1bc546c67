//! `prefs get USER`, `prefs set USER PATCH_JSON`.
//!
//! The defaults come from the config file (`[user_preferences]`); without
//! one, the CLI knows none and shows and patches the stored overrides as
//! they are, as JSON merge patches (`null` deletes a key).

use std::process::ExitCode;

use statevault::{Error, Result, Vault};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The user's preferences: `effective` (the defaults with their
    /// overrides applied) and `stored` (the overrides, or null).
    Get {
        /// The user.
        user: String,
    },
    /// Apply a JSON merge patch (RFC 7386) to the user's preferences.
    Set {
        /// The user.
        user: String,
        /// The patch, e.g. '{"audio_quality": "LOSSLESS", "privacy": {"enable_analytics": null}}'.
        patch: String,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    match command {
        Command::Get { user } => {
            let prefs = vault.preferences();
            super::print_json(&serde_json::json!({
                "user": user,
                "effective": prefs.get(&user).await?,
                "stored": prefs.stored(&user).await?,
            }))?;
        }
        Command::Set { user, patch } => {
            let patch: serde_json::Value =
                serde_json::from_str(&patch).map_err(|e| Error::InvalidInput {
                    what: "patch",
                    reason: format!("not JSON: {e}"),
                })?;
            let merged = vault.preferences().patch(&user, &patch).await?;
            super::print_json(&merged)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

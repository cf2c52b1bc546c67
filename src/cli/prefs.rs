//! `prefs get USER`, `prefs set USER PATCH_JSON`.
//!
//! The CLI does not know an application's defaults: it shows and patches
//! the stored overrides, as JSON merge patches (`null` deletes a key).

use std::process::ExitCode;

use statevault::{Error, Result, Vault};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The user's stored preferences (their overrides of the defaults).
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
        Command::Get { user } => match vault.preferences().stored(&user)? {
            Some(stored) => super::print_json(&stored)?,
            None => println!("{user} has no stored preferences"),
        },
        Command::Set { user, patch } => {
            let patch: serde_json::Value =
                serde_json::from_str(&patch).map_err(|e| Error::InvalidPreference {
                    field: String::new(),
                    reason: format!("the patch is not JSON: {e}"),
                })?;
            let merged = vault.preferences().patch(&user, &patch).await?;
            super::print_json(&merged)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

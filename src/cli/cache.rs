//! `cache stats`, `cache invalidate --tag TAG`, `cache clear [--user USER]`.
//!
//! The CLI is a process of its own: its L1 is empty and its counters start
//! at zero, so `stats` shows what the file holds (L2 per namespace, expired
//! rows) and says that the counters are this process's.

use std::process::ExitCode;

use statevault::{Result, Vault};

use super::print_json;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What L2 holds per namespace, expired rows, and this process's counters.
    Stats {
        /// Print JSON: {"namespaces": [...], "l2": {...}, "process": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry tagged TAG.
    Invalidate {
        /// The tag.
        #[arg(long)]
        tag: String,
    },
    /// Remove every entry, or only USER's.
    Clear {
        /// Only this user's entries.
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    let cache = vault.cache();
    match command {
        Command::Stats { json } => {
            let namespaces = cache.namespaces().await?;
            let stats = cache.stats().await?;
            if json {
                print_json(&serde_json::json!({
                    "namespaces": namespaces,
                    "l2": {
                        "entries": stats.l2.entries,
                        "bytes": stats.l2.bytes,
                        "value_bytes": stats.l2.value_bytes,
                        "expired_entries": stats.l2.expired_entries,
                        "max_bytes": stats.l2.max_bytes,
                    },
                    "process": stats,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            say!(
                "{:<20} {:>10} {:>14} {:>14} {:>8}",
                "namespace",
                "entries",
                "value bytes",
                "stored bytes",
                "expired"
            );
            for n in &namespaces {
                say!(
                    "{:<20} {:>10} {:>14} {:>14} {:>8}",
                    n.namespace,
                    n.entries,
                    n.value_bytes,
                    n.stored_bytes,
                    n.expired_entries
                );
            }
            let ratio = if stats.l2.bytes == 0 {
                1.0
            } else {
                stats.l2.value_bytes as f64 / stats.l2.bytes as f64
            };
            say!(
                "L2: {} entries, {} stored bytes of {} cap, {} expired awaiting sweep, compression {ratio:.2}x",
                stats.l2.entries,
                stats.l2.bytes,
                stats.l2.max_bytes,
                stats.l2.expired_entries
            );
            say!("hit/miss counters and L1 are per process; this CLI process has served no gets");
        }
        Command::Invalidate { tag } => {
            let n = cache.invalidate_tag(&tag).await?;
            say!("invalidated {n} entr{} tagged {tag:?}", plural(n));
        }
        Command::Clear { user: Some(user) } => {
            let n = cache.clear_user(&user).await?;
            say!("cleared {n} entr{} of user {user:?}", plural(n));
        }
        Command::Clear { user: None } => {
            let n = cache.clear().await?;
            say!("cleared {n} entr{}", plural(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

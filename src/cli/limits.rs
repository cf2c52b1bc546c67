//! `limits status SUBJECT [--json]`, `limits reset SUBJECT`: a subject's
//! rate-limit state, as the file has it (the CLI is its own process, so it
//! sees what services have flushed, and strict limits at once).

use std::process::ExitCode;

use statevault::{Result, Vault};

use super::print_json;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Tokens per window, recent violations and any running penalty.
    Status {
        /// The subject (user id, API key id, IP …).
        subject: String,
        /// Print JSON: {"subject": S, "limits": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Delete the subject's buckets and violations (fresh budget, no penalty).
    Reset {
        /// The subject.
        subject: String,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    match command {
        Command::Status { subject, json } => status(vault, &subject, json).await,
        Command::Reset { subject } => {
            let counts = vault.limits().reset(&subject).await?;
            say!(
                "reset {subject}: {} bucket(s), {} violation(s) deleted",
                counts.buckets,
                counts.violations
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn status(vault: &Vault, subject: &str, json: bool) -> Result<ExitCode> {
    let limits = vault.limits().status(subject).await?;
    if json {
        print_json(&serde_json::json!({ "subject": subject, "limits": limits }))?;
        return Ok(ExitCode::SUCCESS);
    }
    say!("subject {subject}");
    for l in &limits {
        let mode = match (l.shared, l.strict) {
            (true, _) => "shared",
            (false, true) => "strict",
            (false, false) => "in memory",
        };
        say!(
            "{:<16} {mode:<10} violations (1 h) {:<4} penalty until {}",
            l.limit,
            l.recent_violations,
            l.penalty_until.as_deref().unwrap_or("-")
        );
        for w in &l.windows {
            say!(
                "    {:>6} s window  {:>9.2} / {:<9} full at {}",
                w.period_secs,
                w.tokens,
                w.capacity,
                w.full_at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

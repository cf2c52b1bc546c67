//! `audit verify`, `audit tail [-n N]`.

use std::process::ExitCode;

use statevault::{ChainReport, Result, Vault};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Walk the hash chain; exit 0 if it holds, 1 naming the first broken link.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last events, oldest first.
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(vault: &Vault, command: Command) -> Result<ExitCode> {
    match command {
        Command::Verify { json } => {
            let report = vault.audit().verify().await?;
            if json {
                super::print_json(&report)?;
            } else {
                say!("{}", describe(&report));
            }
            if report.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                super::print_error("the audit chain is broken");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Tail { n, json } => {
            let events = vault.audit().tail(n).await?;
            if json {
                super::print_json(&events)?;
            } else {
                for e in &events {
                    let erased = if e.erased_at.is_some() {
                        " (erased)"
                    } else {
                        ""
                    };
                    say!(
                        "{:>6}  {}  {:<11} {:<24} user={} {}{erased}",
                        e.seq,
                        e.occurred_at,
                        e.kind,
                        e.action,
                        e.user_id.as_deref().unwrap_or("-"),
                        e.details
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line on the chain: what `audit verify` and `check` print.
pub fn describe(report: &ChainReport) -> String {
    match (&report.broken, report.last_seq) {
        (Some(link), _) => format!("BROKEN at event {}: {}", link.seq, link.reason),
        (None, None) => "ok: the log is empty".into(),
        (None, Some(last)) => format!(
            "ok: {} events ({} erased), {} to {last}, head {}",
            report.events,
            report.erased,
            report.first_seq.unwrap_or(last),
            report.head_digest.as_deref().unwrap_or("-")
        ),
    }
}

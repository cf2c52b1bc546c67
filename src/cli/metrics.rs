//! `statevault metrics` and `statevault health`.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use statevault::{HealthReport, Result, Timestamp, Vault, VaultOptions};

/// Output format of `statevault metrics`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Prometheus text exposition (passes `promtool check metrics`).
    Prometheus,
    /// JSON: every series over the window, error rates, auth, sessions, sizes.
    Json,
}

/// Prints the stored metrics: quantiles (Prometheus) or everything (JSON)
/// over the last `window_secs`.
pub async fn metrics(vault: &Vault, format: Format, window_secs: u64) -> Result<ExitCode> {
    let window = Duration::from_secs(window_secs);
    match format {
        Format::Prometheus => super::print_lines(&vault.metrics().prometheus(window).await?)?,
        Format::Json => {
            let now = vault.now();
            let report = vault
                .metrics()
                .report(now.saturating_sub(window), Timestamp::MAX)
                .await?;
            super::print_json(&report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the health checks; exit 0 healthy, 1 warning, 2 critical. A vault
/// that cannot be opened is reported as critical, not as an error.
pub async fn health(options: VaultOptions, json: bool) -> Result<ExitCode> {
    let report = match Vault::open(options.create_if_missing(false).migrate(false)).await {
        Ok(vault) => {
            let report = vault.health().await;
            vault.close().await?;
            report
        }
        Err(e) => HealthReport::cannot_open(&e),
    };
    if json {
        super::print_json(&report)?;
    } else {
        say!("{}", report.status);
        for c in &report.components {
            say!("  {:<11} {:<8} {}", c.name, c.status.to_string(), c.reason);
        }
    }
    Ok(ExitCode::from(report.status.exit_code()))
}

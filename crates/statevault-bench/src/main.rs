//! `statevault-bench` (also run as `statevault bench`): measures the
//! standard workloads and prints the report as a table or JSON.
//!
//! Exit codes as the `statevault` CLI's: 0 success, 1 failure (one
//! `error:` line), 2 bad arguments.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use statevault::{Error, Result};
use statevault_bench::{Settings, measure};

/// The standard workloads, in a temporary directory (never touches a vault
/// of yours).
#[derive(Debug, Parser)]
#[command(name = "statevault-bench", version, about)]
struct Args {
    /// Print JSON: {"open_ms": X, "workloads": {NAME: {"ops_per_sec": X, ...}}, ...}.
    #[arg(long)]
    json: bool,
    /// Fewer repetitions: seconds instead of a minute, noisier figures.
    #[arg(long)]
    quick: bool,
    /// Plain (unencrypted) files on both sides, to weigh SQLCipher's cost
    /// against a run without it.
    #[arg(long)]
    plain: bool,
    /// Expired sessions for `sweep_expired` (default 200 000; 20 000 with --quick).
    #[arg(long, value_name = "N")]
    sweep_rows: Option<u64>,
    /// Run only these workloads (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Vec<String>,
    /// Instead of the standard workloads, the durable writes and the hot
    /// reads at each level of concurrent callers (e.g. 1,8,64), beside
    /// rusqlite and Redis at the same concurrency.
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    concurrency: Vec<usize>,
    /// With --concurrency: the workloads that run on PostgreSQL, on the
    /// server this postgres:// URL names, in a database the bench creates
    /// there and drops (feature `postgres`).
    #[arg(long, value_name = "URL")]
    db: Option<String>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
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
    let settings = Settings {
        quick: args.quick,
        plain: args.plain,
        sweep_rows: args.sweep_rows,
        only: args.only,
        concurrency: args.concurrency,
        db: args.db,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&settings, args.json));
    drop(runtime);
    wait_for_other_threads(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`statevault-bench | head`): nothing to say.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", escape(&e.to_string(), false));
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings, json: bool) -> Result<()> {
    let report = measure(settings).await?;
    let lines = if json {
        serde_json::to_string_pretty(&report)?
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        report.lines()
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{}", escape(&line, json)).map_err(|source| Error::Io {
            path: "standard output".into(),
            source,
        })?;
    }
    Ok(())
}

/// Control characters (from `/proc/cpuinfo`, or an error's text) are
/// never sent raw to a terminal: `\u{1b}` in text, `\u001b` (still valid
/// JSON) in a JSON line. Pretty JSON has none outside its strings.
fn escape(line: &str, json: bool) -> String {
    line.chars()
        .map(|c| match c {
            c if !c.is_control() => c.to_string(),
            c if json => format!("\\u{:04x}", u32::from(c)),
            c => c.escape_default().to_string(),
        })
        .collect()
}

/// Returns once this is the process's only thread, or after `limit`: a
/// SQLCipher connection thread still ending while `exit` runs OpenSSL's
/// cleanup has crashed the process (the `statevault` CLI does the same).
fn wait_for_other_threads(limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() > 1)
        && started.elapsed() < limit
    {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

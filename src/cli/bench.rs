//! `statevault bench`: the standard workloads, each beside the physical limit
//! measured in the same run. Vaults live in a temporary directory of the
//! bench's own, removed at the end; `--db` is never touched.
//!
//! Figures are medians over several runs; nothing here asserts a timing.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use statevault::{Error, Key, Result, Vault, VaultOptions, default_key_file};

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

/// Set once by `run` from `--plain`, before any workload starts.
static PLAIN: AtomicBool = AtomicBool::new(false);

fn plain() -> bool {
    PLAIN.load(Ordering::Relaxed)
}

/// Options for a bench vault: encrypted with a key file, or plain under
/// `--plain`.
pub fn options(path: &Path) -> VaultOptions {
    let options = VaultOptions::new(path);
    if plain() {
        options.no_encryption()
    } else {
        options
    }
}

/// `PRAGMA key = "...";` for the rusqlite side of `path`, or nothing under
/// `--plain`.
fn key_pragma(path: &Path) -> Result<String> {
    if plain() {
        return Ok(String::new());
    }
    Ok(format!("PRAGMA key = \"{}\"; ", key_text(path)?))
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    /// Opening (absent when `--only` leaves out `open`).
    #[serde(flatten)]
    open: Option<Open>,
    /// Whether the files were encrypted (false under `--plain`).
    encrypted: bool,
    /// Throughput workloads, by name (SPEC §7), each as ops/s with its limit.
    workloads: serde_json::Map<String, serde_json::Value>,
    machine: Machine,
}

/// Opening an existing vault, beside rusqlite opening the same file.
#[derive(Debug, Serialize)]
struct Open {
    /// Median time to open the existing encrypted vault (raw-key file).
    open_ms: f64,
    /// The same file opened by rusqlite with the same key: open, key, WAL, read the schema.
    open_ms_rusqlite: f64,
    /// `open_ms_rusqlite / open_ms` (1.0 = as fast as the limit).
    open_ratio: f64,
    /// Median time to open a vault keyed with a passphrase (PBKDF2, 256k iterations).
    open_ms_passphrase: f64,
    /// Opens measured per figure.
    runs: usize,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    os: &'static str,
    sqlcipher: String,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let runs = if args.quick { 5 } else { 25 };
    PLAIN.store(args.plain, Ordering::Relaxed);
    let known = [
        "open",
        "session_create",
        "session_validate",
        "audit_append",
        "ratelimit_check",
        "metrics_record",
        "ratelimit_check_shared",
        "sweep_expired",
        "cache_l1_get",
        "cache_l2_get",
        "cache_set",
    ];
    if let Some(name) = args.only.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(Error::InvalidInput {
            what: "bench --only",
            reason: format!(
                "no workload {name:?}; the workloads are {}",
                known.join(", ")
            ),
        });
    }
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);

    let raw_path = dir.path().join("raw.db");
    let vault = Vault::open(options(&raw_path)).await?;
    let sqlcipher = vault.info().await?.cipher_version.unwrap_or_default();
    vault.close().await?;
    let open = if selected("open") {
        Some(open(&raw_path, &dir.path().join("passphrase.db"), runs).await?)
    } else {
        None
    };

    let budget = if args.quick {
        Budget::QUICK
    } else {
        Budget::FULL
    };
    let mut workloads = serde_json::Map::new();
    if selected("session_create") {
        workloads.insert(
            "session_create".into(),
            super::bench_sessions::create(dir.path(), budget).await?,
        );
    }
    if selected("session_validate") {
        workloads.insert(
            "session_validate".into(),
            super::bench_sessions::validate(dir.path(), budget).await?,
        );
    }
    if selected("audit_append") {
        workloads.insert(
            "audit_append".into(),
            super::bench_audit::append(dir.path(), budget).await?,
        );
    }
    if selected("ratelimit_check") {
        workloads.insert(
            "ratelimit_check".into(),
            super::bench_limits::ratelimit_check(dir.path(), args.quick).await?,
        );
    }
    if selected("metrics_record") {
        workloads.insert(
            "metrics_record".into(),
            super::bench_metrics::record_metrics(dir.path(), budget, args.quick).await?,
        );
    }
    if selected("ratelimit_check_shared") {
        workloads.insert(
            "ratelimit_check_shared".into(),
            super::bench_limits::ratelimit_check_shared(dir.path(), args.quick).await?,
        );
    }
    if selected("sweep_expired") {
        workloads.insert(
            "sweep_expired".into(),
            super::bench_sweep::sweep_expired(dir.path(), args.quick, args.sweep_rows).await?,
        );
    }
    if selected("cache_l1_get") {
        workloads.insert(
            "cache_l1_get".into(),
            super::bench_cache::l1_get(dir.path(), args.quick).await?,
        );
    }
    if selected("cache_l2_get") {
        workloads.insert(
            "cache_l2_get".into(),
            super::bench_cache::l2_get(dir.path(), args.quick).await?,
        );
    }
    if selected("cache_set") {
        workloads.insert(
            "cache_set".into(),
            super::bench_cache::set(dir.path(), args.quick).await?,
        );
    }

    let report = Report {
        open,
        encrypted: !args.plain,
        workloads,
        machine: machine(sqlcipher),
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        let m = &report.machine;
        say!(
            "machine: {} ({} cores), {}, SQLCipher {}",
            m.cpu,
            m.cores,
            m.os,
            m.sqlcipher
        );
        if let Some(o) = &report.open {
            say!(
                "open (raw-key file)   {:>8.2} ms   rusqlite {:>8.2} ms   ratio {:.2}",
                o.open_ms,
                o.open_ms_rusqlite,
                o.open_ratio
            );
            say!(
                "open (passphrase)     {:>8.2} ms   (medians of {} opens)",
                o.open_ms_passphrase,
                o.runs
            );
        }
        say!("");
        say!(
            "{:<20} {:>12} {:>14} {:>6}  baseline (same run)",
            "workload",
            "ops/s",
            "baseline ops/s",
            "ratio"
        );
        for (name, w) in &report.workloads {
            let number = |key: &str| {
                w.get(key)
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(f64::NAN)
            };
            let baseline = w
                .get("baseline")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            say!(
                "{name:<20} {:>12.0} {:>14.0} {:>6.2}  {baseline}",
                number("ops_per_sec"),
                number("baseline_ops_per_sec"),
                number("ratio"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Medians of `runs` opens of the existing vault at `raw_path` (ours and
/// rusqlite's), and of a passphrase-keyed vault at `pass_path`.
async fn open(raw_path: &Path, pass_path: &Path, runs: usize) -> Result<Open> {
    let open_ms = median_ms(runs, async || {
        let started = Instant::now();
        let vault = Vault::open(options(raw_path).create_if_missing(false)).await?;
        let took = started.elapsed();
        vault.close().await?;
        Ok(took)
    })
    .await?;
    let open_ms_rusqlite = median_ms(runs, async || rusqlite_open(raw_path)).await?;
    let pass = || {
        VaultOptions::new(pass_path).key(Key::passphrase("bench passphrase").expect("non-empty"))
    };
    Vault::open(pass()).await?.close().await?;
    let open_ms_passphrase = median_ms(runs.min(5), async || {
        let started = Instant::now();
        let vault = Vault::open(pass()).await?;
        let took = started.elapsed();
        vault.close().await?;
        Ok(took)
    })
    .await?;
    Ok(Open {
        open_ms,
        open_ms_rusqlite,
        open_ratio: open_ms_rusqlite / open_ms,
        open_ms_passphrase,
        runs,
    })
}

/// The physical limit for opening: rusqlite, same file, same key, same setup.
fn rusqlite_open(path: &Path) -> Result<Duration> {
    let key = key_pragma(path)?;
    let started = Instant::now();
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(&format!(
        "{key}PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    ))?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let took = started.elapsed();
    drop(conn);
    Ok(took)
}

fn key_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(default_key_file(path)).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

/// A rusqlite connection to a bench vault set up like statevault's own:
/// same key, WAL, `synchronous=NORMAL`, 64 MiB page cache. The baseline
/// each workload is compared with.
pub fn raw_connection(path: &Path) -> Result<rusqlite::Connection> {
    let key = key_pragma(path)?;
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(&format!(
        "{key}PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA cache_size = -65536; PRAGMA foreign_keys = ON;"
    ))?;
    Ok(conn)
}

/// How long a workload runs: until `seconds` pass or `max_ops` are done.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    seconds: f64,
    max_ops: u64,
}

impl Budget {
    const FULL: Budget = Budget {
        seconds: 3.0,
        max_ops: 10_000_000,
    };
    const QUICK: Budget = Budget {
        seconds: 0.3,
        max_ops: 1_000_000,
    };

    /// Whether a run that started at `started` and did `ops` should stop.
    pub fn spent(&self, started: Instant, ops: u64) -> bool {
        ops >= self.max_ops || started.elapsed().as_secs_f64() >= self.seconds
    }
}

/// A workload's figures beside its baseline, measured in the same run:
/// `{"ops_per_sec", "baseline", "baseline_ops_per_sec", "ratio"}`; callers
/// add their own extra keys.
pub fn workload(
    ours: f64,
    baseline: &str,
    limit: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("ops_per_sec".into(), ours.round().into());
    m.insert("baseline".into(), baseline.into());
    m.insert("baseline_ops_per_sec".into(), limit.round().into());
    m.insert("ratio".into(), (ours / limit).into());
    m
}

/// Operations per second.
pub fn per_sec(ops: u64, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64().max(1e-9)
}

async fn median_ms(runs: usize, mut once: impl AsyncFnMut() -> Result<Duration>) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(once().await?);
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

fn machine(sqlcipher: String) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS,
        sqlcipher,
    }
}

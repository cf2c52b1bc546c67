//! What every workload shares: its vault's options, the rusqlite baseline
//! connection set up the same way, how long it runs, and how its figures
//! are reported.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use statevault::{Error, Result, VaultOptions, default_key_file};

/// Set once by [`measure`](crate::measure) from [`Settings::plain`](crate::Settings::plain),
/// before any workload starts.
static PLAIN: AtomicBool = AtomicBool::new(false);

pub fn set_plain(plain: bool) {
    PLAIN.store(plain, Ordering::Relaxed);
}

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
pub fn key_pragma(path: &Path) -> Result<String> {
    if plain() {
        return Ok(String::new());
    }
    Ok(format!("PRAGMA key = \"{}\"; ", key_text(path)?))
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
    pub const FULL: Budget = Budget {
        seconds: 3.0,
        max_ops: 10_000_000,
    };
    pub const QUICK: Budget = Budget {
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

/// Adds to a [`workload`]'s figures a second measurement of the same
/// workload done another way (from the file instead of memory, committed
/// per call instead of written behind), with its own baseline, under
/// `"variants": {name: {...}}`.
pub fn variant(
    figures: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    ours: f64,
    baseline: &str,
    limit: f64,
) {
    let variants = figures
        .entry("variants")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(variants) = variants.as_object_mut() {
        variants.insert(
            name.into(),
            serde_json::Value::Object(workload(ours, baseline, limit)),
        );
    }
}

/// Operations per second.
pub fn per_sec(ops: u64, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64().max(1e-9)
}

/// The median of `runs` timings of `once`, in milliseconds.
pub async fn median_ms(
    runs: usize,
    mut once: impl AsyncFnMut() -> Result<Duration>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(once().await?);
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

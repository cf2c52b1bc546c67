//! What a run measured, as JSON (its `Serialize`) or as the text table.

use serde::Serialize;
use serde_json::Value;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Opening (absent when `--only` leaves out `open`).
    #[serde(flatten)]
    pub(crate) open: Option<Open>,
    /// Whether the files were encrypted (false under `--plain`).
    pub(crate) encrypted: bool,
    /// Throughput workloads, by name (SPEC §7), each as ops/s with its limit.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub(crate) workloads: serde_json::Map<String, Value>,
    /// The concurrency report (`--concurrency`), instead of the workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<crate::concurrency::Concurrency>,
    pub(crate) machine: Machine,
}

/// Opening an existing vault, beside rusqlite opening the same file.
#[derive(Debug, Serialize)]
pub(crate) struct Open {
    /// Median time to open the existing encrypted vault (raw-key file).
    pub(crate) open_ms: f64,
    /// The same file opened by rusqlite with the same key: open, key, WAL, read the schema.
    pub(crate) open_ms_rusqlite: f64,
    /// `open_ms_rusqlite / open_ms` (1.0 = as fast as the limit).
    pub(crate) open_ratio: f64,
    /// Median time to open a vault keyed with a passphrase (PBKDF2, 256k iterations).
    pub(crate) open_ms_passphrase: f64,
    /// Opens measured per figure.
    pub(crate) runs: usize,
}

/// Where the figures were measured.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    cpu: String,
    cores: usize,
    os: &'static str,
    sqlcipher: String,
}

impl Machine {
    /// This machine, with the SQLCipher version the vault reported.
    pub(crate) fn this(sqlcipher: String) -> Machine {
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
}

impl Report {
    /// The report as a table for a terminal: the machine, the opens, then
    /// one row per workload beside its baseline.
    pub fn lines(&self) -> Vec<String> {
        let m = &self.machine;
        let mut lines = vec![format!(
            "machine: {} ({} cores), {}, SQLCipher {}",
            m.cpu, m.cores, m.os, m.sqlcipher
        )];
        if let Some(o) = &self.open {
            lines.push(format!(
                "open (raw-key file)   {:>8.2} ms   rusqlite {:>8.2} ms   ratio {:.2}",
                o.open_ms, o.open_ms_rusqlite, o.open_ratio
            ));
            lines.push(format!(
                "open (passphrase)     {:>8.2} ms   (medians of {} opens)",
                o.open_ms_passphrase, o.runs
            ));
        }
        if let Some(concurrency) = &self.concurrency {
            lines.extend(concurrency.lines());
            return lines;
        }
        lines.push(String::new());
        lines.push(format!(
            "{:<20} {:>12} {:>14} {:>6}  baseline (same run)",
            "workload", "ops/s", "baseline ops/s", "ratio"
        ));
        for (name, w) in &self.workloads {
            lines.push(workload_line(name, w));
            if let Some(variants) = w.get("variants").and_then(Value::as_object) {
                lines.extend(
                    variants
                        .iter()
                        .map(|(how, v)| workload_line(&format!("  {how}"), v)),
                );
            }
        }
        lines
    }
}

/// One workload's row: its ops/s, its baseline's, their ratio, the
/// process's peak RSS during it when known, the baseline.
fn workload_line(name: &str, w: &Value) -> String {
    let number = |key: &str| w.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let baseline = w.get("baseline").and_then(Value::as_str).unwrap_or("");
    let rss = w
        .get("peak_rss_mib")
        .and_then(Value::as_f64)
        .map_or_else(String::new, |mib| format!("[peak RSS {mib:.0} MiB] "));
    format!(
        "{name:<20} {:>12.0} {:>14.0} {:>6.2}  {rss}{baseline}",
        number("ops_per_sec"),
        number("baseline_ops_per_sec"),
        number("ratio"),
    )
}

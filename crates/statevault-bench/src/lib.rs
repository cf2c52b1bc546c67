//! The standard statevault workloads (SPEC §7), each beside the physical
//! limit measured in the same run: the `statevault-bench` binary, which
//! `statevault bench` runs. Vaults live in a temporary directory of the
//! bench's own, removed at the end; no other file is touched.
//!
//! Figures are medians over several runs; nothing here asserts a timing.
//! This crate is a workspace member rather than part of the `statevault`
//! package so that the library's users do not build the harness.

mod audit;
mod cache;
mod concurrency;
mod harness;
mod limits;
mod metrics;
mod open;
mod report;
mod rss;
mod sessions;
mod sweep;

use std::path::Path;

use statevault::{Error, Result, Vault};

pub use concurrency::WORKLOADS as CONCURRENCY_WORKLOADS;
use harness::Budget;
pub use report::Report;

/// Every workload, in the order a run measures them.
pub const WORKLOADS: [&str; 11] = [
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

/// What to measure, and how long.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Fewer repetitions: seconds instead of a minute, noisier figures.
    pub quick: bool,
    /// Plain (unencrypted) files on both sides, to weigh SQLCipher's cost
    /// against a run without it.
    pub plain: bool,
    /// Expired sessions for `sweep_expired` (default 200 000; 20 000 when quick).
    pub sweep_rows: Option<u64>,
    /// Only these workloads ([`WORKLOADS`] names, or with `concurrency`,
    /// [`CONCURRENCY_WORKLOADS`] names); all when empty.
    pub only: Vec<String>,
    /// Levels of concurrent callers: when not empty, the run measures the
    /// concurrency report at each level instead of the standard workloads.
    pub concurrency: Vec<usize>,
    /// A PostgreSQL server (`postgres://…`, feature `postgres`): the
    /// concurrency report of the workloads that run there, in a database
    /// the bench makes on that server and drops.
    pub db: Option<String>,
}

impl Settings {
    fn selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }

    /// Refuses a name in `only` that is no workload of this run, and a
    /// level of concurrency out of 1..=1024.
    fn check(&self) -> Result<()> {
        if self.db.is_some() && self.concurrency.is_empty() {
            return Err(Error::InvalidInput {
                what: "bench --db",
                reason: "measures the concurrency report: give --concurrency LEVELS too".into(),
            });
        }
        let known: &[&str] = match (&self.db, self.concurrency.is_empty()) {
            #[cfg(feature = "postgres")]
            (Some(_), _) => &concurrency::postgres::WORKLOADS,
            #[cfg(not(feature = "postgres"))]
            (Some(_), _) => {
                return Err(Error::InvalidInput {
                    what: "bench --db",
                    reason: "this build has no PostgreSQL: build statevault-bench with \
                             --features postgres"
                        .into(),
                });
            }
            (None, true) => &WORKLOADS,
            (None, false) => &CONCURRENCY_WORKLOADS,
        };
        if let Some(name) = self.only.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(Error::InvalidInput {
                what: "bench --only",
                reason: format!(
                    "no workload {name:?}; the workloads are {}",
                    known.join(", ")
                ),
            });
        }
        if let Some(&n) = self.concurrency.iter().find(|&&n| !(1..=1024).contains(&n)) {
            return Err(Error::InvalidInput {
                what: "bench --concurrency",
                reason: format!("{n} callers is not in 1..=1024"),
            });
        }
        Ok(())
    }
}

/// Runs the selected workloads in a temporary directory and reports them.
/// A name in `only` that is no workload is refused before anything runs.
pub async fn measure(settings: &Settings) -> Result<Report> {
    settings.check()?;
    let dir = tempfile::tempdir().map_err(|e| Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    harness::set_plain(settings.plain);
    let raw_path = dir.path().join("raw.db");
    let vault = Vault::open(harness::options(&raw_path)).await?;
    let sqlcipher = vault.info().await?.cipher_version.unwrap_or_default();
    vault.close().await?;
    let machine = report::Machine::this(sqlcipher);
    if !settings.concurrency.is_empty() {
        let plan = concurrency::Plan {
            levels: &settings.concurrency,
            quick: settings.quick,
            only: &settings.only,
        };
        let report = match &settings.db {
            #[cfg(feature = "postgres")]
            Some(url) => concurrency::postgres::measure(url, dir.path(), &plan).await?,
            _ => concurrency::measure(dir.path(), &plan).await?,
        };
        return Ok(Report {
            open: None,
            encrypted: !settings.plain,
            workloads: serde_json::Map::new(),
            concurrency: Some(report),
            machine,
        });
    }
    let open = if settings.selected("open") {
        let runs = if settings.quick { 5 } else { 25 };
        let pass_path = dir.path().join("passphrase.db");
        Some(open::open(&raw_path, &pass_path, runs).await?)
    } else {
        None
    };
    let mut workloads = serde_json::Map::new();
    for name in WORKLOADS.into_iter().filter(|&n| n != "open") {
        if settings.selected(name) {
            rss::reset_peak(None);
            let mut figures = throughput(name, dir.path(), settings).await?;
            if let (Some(m), Some(mib)) = (figures.as_object_mut(), rss::peak_mib(None)) {
                m.insert("peak_rss_mib".into(), mib.into());
            }
            workloads.insert(name.into(), figures);
        }
    }
    Ok(Report {
        open,
        encrypted: !settings.plain,
        workloads,
        concurrency: None,
        machine,
    })
}

/// Runs the throughput workload `name` with its vaults in `dir`.
async fn throughput(name: &str, dir: &Path, settings: &Settings) -> Result<serde_json::Value> {
    let quick = settings.quick;
    let budget = if quick { Budget::QUICK } else { Budget::FULL };
    match name {
        "session_create" => sessions::create(dir, budget).await,
        "session_validate" => sessions::validate(dir, budget).await,
        "audit_append" => audit::append(dir, budget).await,
        "ratelimit_check" => limits::ratelimit_check(dir, quick).await,
        "metrics_record" => metrics::record_metrics(dir, budget, quick).await,
        "ratelimit_check_shared" => limits::ratelimit_check_shared(dir, quick).await,
        "sweep_expired" => sweep::sweep_expired(dir, quick, settings.sweep_rows).await,
        "cache_l1_get" => cache::l1_get(dir, quick).await,
        "cache_l2_get" => cache::l2_get(dir, quick).await,
        "cache_set" => cache::set(dir, quick).await,
        other => unreachable!("{other} is in WORKLOADS without a runner"),
    }
}

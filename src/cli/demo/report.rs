//! What the demo did: its counters, the latency per endpoint from the
//! metrics facet, and the report printed at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use statevault::{API_REQUEST_DURATION, CacheStats, Result, Timestamp, Vault};

/// An endpoint's requests (counted by the demo) and latency (from the
/// metrics facet's sketches, ±1 %).
#[derive(Debug, Serialize)]
pub struct Latency {
    pub requests: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
}

/// Each endpoint's requests in this run, with p50/p95/p99 from the stored
/// metrics over the run's period (which another demo on the same file may
/// share).
pub async fn latencies(
    vault: &Vault,
    counts: &Counts,
    from: Timestamp,
) -> Result<BTreeMap<&'static str, Latency>> {
    vault.metrics().flush_all().await?;
    // Whole metric intervals: the first one began before the run did.
    let from = from.saturating_sub(Duration::from_secs(3600));
    let to = vault.now().saturating_add(Duration::from_secs(3600));
    let mut out = BTreeMap::new();
    for (endpoint, requests) in &counts.by_endpoint {
        let s = vault
            .metrics()
            .percentiles(API_REQUEST_DURATION, &[("endpoint", endpoint)], from, to)
            .await?;
        let us = |ms: Option<f64>| ms.unwrap_or(0.0) * 1e3;
        out.insert(
            *endpoint,
            Latency {
                requests: *requests,
                p50_us: us(s.p50),
                p95_us: us(s.p95),
                p99_us: us(s.p99),
            },
        );
    }
    Ok(out)
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub allowed: u64,
    pub rate_limited: u64,
    pub logins: u64,
    pub failed_logins: u64,
    pub locked_out: u64,
    pub sessions_created: u64,
    pub sessions_rotated: u64,
    pub sessions_revoked: u64,
    pub sessions_expired: u64,
    pub preference_reads: u64,
    pub preference_patches: u64,
    pub preference_refusals: u64,
    pub cache_invalidations: u64,
    /// Requests by the endpoint they ended at; they add up to `requests`.
    pub by_endpoint: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub path: String,
    pub users: u32,
    pub simulated_hours: f64,
    pub wall_seconds: f64,
    pub counts: Counts,
    /// The demo's users' violations, those with a penalty, and their live
    /// sessions at the end.
    pub violations: u64,
    pub penalties: u64,
    pub live_sessions: u64,
    pub latency_by_endpoint: BTreeMap<&'static str, Latency>,
    pub cache: CacheStats,
    pub audit_events: u64,
    pub audit_chain_ok: bool,
    pub exported_user: String,
    pub exported_audit_events: usize,
    pub erased_user: String,
    pub erased_rows: BTreeMap<String, u64>,
    /// Rows removed by retention; `None` when the file held data before the
    /// demo (retention is then left to its owner).
    pub swept: Option<BTreeMap<String, u64>>,
    /// The backup the demo made; `None` on PostgreSQL, whose backups are
    /// the database's own.
    pub backup: Option<String>,
    pub backup_bytes: Option<u64>,
    /// Older demo backups removed (the demo keeps its newest three).
    pub backups_removed: usize,
    /// The vault file at the end; `None` on PostgreSQL.
    #[serde(flatten)]
    pub file: Option<FileFacts>,
}

/// The vault file's size, its WAL's, and whether it is encrypted.
#[derive(Debug, Serialize)]
pub struct FileFacts {
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub encrypted: bool,
}

/// The report as text, each line through the CLI's `say!`.
pub fn print(r: &Report) -> Result<()> {
    print_traffic(r)?;
    say!("");
    print_facets(r)?;
    print_records(r)
}

/// The run: where, how many requests over how long, and the latency of the
/// vault work per endpoint.
fn print_traffic(r: &Report) -> Result<()> {
    let c = &r.counts;
    say!(
        "statevault demo: {} ({} users; sessions idle out after 20 min, rotate after 30 min)",
        r.path,
        r.users
    );
    say!(
        "  {} requests over {:.1} simulated hours in {:.2} s ({:.0} requests/s)",
        c.requests,
        r.simulated_hours,
        r.wall_seconds,
        c.requests as f64 / r.wall_seconds.max(1e-9)
    );
    say!(
        "  allowed {}, rate-limited {} (429)",
        c.allowed,
        c.rate_limited
    );
    say!("");
    say!("  latency of the vault work per request (real time, from the metrics facet's sketches)");
    say!(
        "    {:<20} {:>9} {:>9} {:>9} {:>9}",
        "endpoint",
        "requests",
        "p50 µs",
        "p95 µs",
        "p99 µs"
    );
    for (endpoint, l) in &r.latency_by_endpoint {
        say!(
            "    {endpoint:<20} {:>9} {:>9.1} {:>9.1} {:>9.1}",
            l.requests,
            l.p50_us,
            l.p95_us,
            l.p99_us
        );
    }
    Ok(())
}

/// What the facets saw: logins, sessions, the cache, rate limits and
/// preferences.
fn print_facets(r: &Report) -> Result<()> {
    let c = &r.counts;
    say!(
        "  logins {} ok, {} wrong password, {} locked out by auth_attempts",
        c.logins,
        c.failed_logins,
        c.locked_out
    );
    say!(
        "  sessions: {} created, {} rotated, {} expired, {} revoked; {} live now",
        c.sessions_created,
        c.sessions_rotated,
        c.sessions_expired,
        c.sessions_revoked,
        r.live_sessions
    );
    let (l1, l2) = (&r.cache.l1, &r.cache.l2);
    let ratio = |hits: u64, misses: u64| 100.0 * hits as f64 / (hits + misses).max(1) as f64;
    say!(
        "  cache: L1 {} hits / {} misses ({:.1} %), L2 {} hits / {} misses ({:.1} %), overall {:.1} %",
        l1.hits,
        l1.misses,
        ratio(l1.hits, l1.misses),
        l2.hits,
        l2.misses,
        ratio(l2.hits, l2.misses),
        100.0 * r.cache.hit_ratio,
    );
    say!(
        "         {} entries invalidated by playlist edits",
        r.counts.cache_invalidations
    );
    say!(
        "  rate limits: {} violations of the demo's users, {} with a penalty",
        r.violations,
        r.penalties
    );
    say!(
        "  preferences: {} reads, {} patches, {} refused (422)",
        c.preference_reads,
        c.preference_patches,
        c.preference_refusals
    );
    Ok(())
}

/// What the vault kept and did at the end: the audit chain, the export and
/// erasure, the sweep, the backup and the file.
fn print_records(r: &Report) -> Result<()> {
    say!(
        "  audit: {} events, chain {}",
        r.audit_events,
        if r.audit_chain_ok {
            "verified"
        } else {
            "BROKEN"
        }
    );
    say!(
        "  export of {}: {} audit events",
        r.exported_user,
        r.exported_audit_events
    );
    let erased: Vec<String> = r
        .erased_rows
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    say!("  erasure of {}: {}", r.erased_user, erased.join(", "));
    match &r.swept {
        Some(swept) => {
            let swept: Vec<String> = swept.iter().map(|(t, n)| format!("{t} {n}")).collect();
            say!("  sweep: {}", swept.join(", "));
        }
        None => {
            say!("  sweep: skipped, the demo did not create this vault (retention is its owner's)")
        }
    }
    match (&r.backup, r.backup_bytes, &r.file) {
        (Some(backup), Some(bytes), Some(file)) => {
            say!(
                "  backup: {backup} ({bytes} bytes; {} older demo backups removed)",
                r.backups_removed
            );
            say!(
                "  file: {} bytes (+ {} bytes of WAL), {}",
                file.file_bytes,
                file.wal_bytes,
                if file.encrypted {
                    "encrypted"
                } else {
                    "NOT encrypted"
                }
            );
        }
        _ => {
            say!("  backup: none made, a database's backups are its own (pg_dump)");
            say!("  database: {}, every stored value sealed", r.path);
        }
    }
    Ok(())
}

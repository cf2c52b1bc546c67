//! `statevault demo`: the main job. Drives the workload of the seeds' music
//! service through every facet of one vault file and prints what happened.
//!
//! Time is the vault's injected clock. The demo walks its schedule of
//! requests once to learn how long it lasts, starts the clock that long
//! before the real now and moves it forward by the simulated gap between
//! requests, so hours of traffic (expiring sessions, due rotations,
//! refilling buckets, running penalties) take seconds and end at the real
//! time the demo started: no time it stores is later than the real clock.
//! Latencies in the report are real: wall-clock time of the vault work each
//! request does.
//!
//! The demo is a guest in the file, which may be a service's real one: its
//! users are `demo-user-…`, its cache namespaces, metric endpoints and
//! backups are named `demo`, it does not record its preferences defaults as
//! the application's, applies retention (`sweep`) only to a file it created,
//! and prunes only the backups it made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use statevault::{
    API_REQUEST_DURATION, AuditEvent, CacheKey, CacheStats, ClientInfo, Clock, EventKind,
    FakeClock, GdprCategory, NewSession, PreferencesConfig, Result, Secret, SessionConfig,
    SetOptions, SystemClock, Timestamp, Validation, Vault, VaultOptions,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many users.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(3..=100_000))]
    users: u32,
    /// How many API requests, in all.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    requests: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A small deterministic generator (xorshift64*): the demo needs skew, not
/// cryptography, and the same seed gives the same traffic.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index in 0..n skewed toward 0: a few hot users and queries.
    fn skewed(&mut self, n: usize) -> usize {
        ((self.unit().powi(3) * n as f64) as usize).min(n - 1)
    }
}

struct User {
    id: String,
    device: String,
    ip: String,
    token: Option<Secret>,
}

/// When each request comes and from which user: a generator of its own,
/// so the schedule can be walked once to learn how long it lasts and then
/// again, the same, to drive the requests.
#[derive(Clone)]
struct Schedule {
    rng: Rng,
    users: usize,
    left: u64,
    user: usize,
    burst_left: u32,
    in_burst: bool,
}

/// One request of the schedule.
struct Slot {
    user: usize,
    gap: Duration,
    /// The last request of the user's turn (a single one or a burst).
    turn_ends: bool,
}

impl Schedule {
    fn new(seed: u64, users: usize, requests: u64) -> Self {
        Schedule {
            rng: Rng(seed),
            users,
            left: requests,
            user: 0,
            burst_left: 0,
            in_burst: false,
        }
    }
}

impl Iterator for Schedule {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        if self.left == 0 {
            return None;
        }
        if self.burst_left == 0 {
            self.user = self.rng.skewed(self.users);
            // A hot user now and then sends a burst that the limits must
            // stop: 60 requests in 1.2 s, about 36 of them searches (25 allowed).
            self.in_burst = self.rng.unit() < 0.005;
            self.burst_left = if self.in_burst { 60 } else { 1 };
        }
        self.left -= 1;
        self.burst_left -= 1;
        let gap = if self.in_burst {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(500 + self.rng.next() % 5_000)
        };
        Some(Slot {
            user: self.user,
            gap,
            turn_ends: self.burst_left == 0 || self.left == 0,
        })
    }
}

/// An endpoint's requests (counted by the demo) and latency (from the
/// metrics facet's sketches, ±1 %).
#[derive(Debug, Serialize)]
struct Latency {
    requests: u64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
}

/// Each endpoint's requests in this run, with p50/p95/p99 from the stored
/// metrics over the run's period (which another demo on the same file may
/// share).
async fn latencies(
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
struct Counts {
    requests: u64,
    allowed: u64,
    rate_limited: u64,
    logins: u64,
    failed_logins: u64,
    locked_out: u64,
    sessions_created: u64,
    sessions_rotated: u64,
    sessions_revoked: u64,
    sessions_expired: u64,
    preference_reads: u64,
    preference_patches: u64,
    preference_refusals: u64,
    cache_invalidations: u64,
    /// Requests by the endpoint they ended at; they add up to `requests`.
    by_endpoint: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    path: String,
    users: u32,
    simulated_hours: f64,
    wall_seconds: f64,
    counts: Counts,
    violations: i64,
    penalties: i64,
    live_sessions: i64,
    latency_by_endpoint: BTreeMap<&'static str, Latency>,
    cache: CacheStats,
    audit_events: u64,
    audit_chain_ok: bool,
    exported_user: String,
    exported_audit_events: usize,
    erased_user: String,
    erased_rows: BTreeMap<String, u64>,
    /// Rows removed by retention; `None` when the file held data before the
    /// demo (retention is then left to its owner).
    swept: Option<BTreeMap<String, u64>>,
    backup: String,
    backup_bytes: u64,
    /// Older demo backups removed (the demo keeps its newest three).
    backups_removed: usize,
    file_bytes: u64,
    wal_bytes: u64,
    encrypted: bool,
}

pub async fn run(options: VaultOptions, args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let seed = 0x5eed_cafe_f00d ^ u64::from(std::process::id());
    let schedule = Schedule::new(seed, args.users as usize, args.requests);
    let span: Duration = schedule.clone().map(|slot| slot.gap).sum();
    let clock = FakeClock::new(SystemClock.now().saturating_sub(span));
    let start = clock.now();
    let fresh = !options.path().exists();
    let vault = Vault::open(
        options
            .clock(clock.clone())
            .preferences(PreferencesConfig::seeds().record_in_file(false))
            .sessions(demo_sessions()),
    )
    .await?;
    let mut rng = Rng(seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15);
    let result = drive(&vault, &clock, &args, schedule, &mut rng, fresh).await;
    let closed = vault.close().await;
    let mut report = result?;
    closed?;
    report.simulated_hours = clock.now().duration_since(start).as_secs_f64() / 3600.0;
    report.wall_seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_json(&report)?;
    } else {
        print(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Sessions that live minutes, not days, so that a few simulated hours show
/// rotation and expiry.
fn demo_sessions() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.idle_timeout = Duration::from_secs(20 * 60);
    config.rotation_interval = Duration::from_secs(30 * 60);
    config.absolute_lifetime = Duration::from_secs(4 * 3600);
    config
}

async fn drive(
    vault: &Vault,
    clock: &FakeClock,
    args: &Args,
    schedule: Schedule,
    rng: &mut Rng,
    fresh: bool,
) -> Result<Report> {
    let mut counts = Counts::default();
    let start = vault.now();
    let mut users: Vec<User> = (0..args.users)
        .map(|i| User {
            id: format!("demo-user-{i:05}"),
            device: format!("device-{i}"),
            ip: format!("198.51.100.{}", i % 250),
            token: None,
        })
        .collect();

    let progress = ProgressBar::new(args.requests);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:40}] {pos}/{len} requests ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_message("serving");

    for slot in schedule {
        clock.advance(slot.gap);
        let user = &mut users[slot.user];
        let started = Instant::now();
        let (endpoint, status) = request(vault, user, rng, &mut counts).await?;
        let took = started.elapsed();
        vault.metrics().record_api_call(
            endpoint,
            method(endpoint),
            status,
            took,
            Some(user.id.as_str()),
        );
        counts.requests += 1;
        *counts.by_endpoint.entry(endpoint).or_default() += 1;
        progress.inc(1);
        // Now and then, after a turn, someone logs out everywhere.
        if slot.turn_ends && rng.unit() < 0.002 {
            let user = &mut users[rng.skewed(args.users as usize)];
            counts.sessions_revoked += vault.sessions().revoke_user(&user.id).await?;
            user.token = None;
            vault
                .audit()
                .append(AuditEvent::new(EventKind::Auth, "logout_all").user(&user.id))?;
        }
    }
    progress.finish_and_clear();

    let exported_user = users[0].id.clone();
    let export = vault.export_user(&exported_user).await?;
    vault
        .audit()
        .append(AuditEvent::new(EventKind::DataAccess, "user.export").user(&exported_user))?;
    let erased_user = users[users.len() - 1].id.clone();
    let erased = vault.erase_user(&erased_user).await?;

    let swept = if fresh {
        Some(vault.sweep().await?.removed)
    } else {
        None
    };
    let (backup, backups_removed) = backup(vault).await?;
    let chain = vault.audit().verify().await?;
    let scalar = |sql: &'static str| async move {
        let rows = vault.query_read_only(sql).await?;
        Ok::<_, statevault::Error>(rows.rows.first().and_then(|r| r[0].as_i64()).unwrap_or(0))
    };
    let now = vault.now().to_rfc3339();
    let live_sessions = vault
        .query_read_only(&format!(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > '{now}'"
        ))
        .await?
        .rows[0][0]
        .as_i64()
        .unwrap_or(0);
    let cache = vault.cache().stats().await?;
    let info = vault.info().await?;
    let latency_by_endpoint = latencies(vault, &counts, start).await?;
    Ok(Report {
        path: vault.path().display().to_string(),
        users: args.users,
        simulated_hours: 0.0,
        wall_seconds: 0.0,
        counts,
        violations: scalar("SELECT count(*) FROM violations").await?,
        penalties: scalar("SELECT count(*) FROM violations WHERE penalty_until IS NOT NULL")
            .await?,
        live_sessions,
        latency_by_endpoint,
        cache,
        audit_events: chain.events,
        audit_chain_ok: chain.ok,
        exported_user,
        exported_audit_events: export.audit_events.len(),
        erased_user,
        erased_rows: erased.rows,
        swept,
        backup: backup.path.display().to_string(),
        backup_bytes: backup.bytes,
        backups_removed,
        file_bytes: info.file_bytes,
        wal_bytes: info.wal_bytes,
        encrypted: info.encrypted,
    })
}

/// Logs the user in: the strict `auth_attempts` limit first, then the
/// password (wrong now and then, mostly for every tenth user), then a session, regenerated
/// after login as a web framework would. Returns the status of a failed
/// login (429 locked out, 401 wrong password), `None` once logged in.
async fn login(
    vault: &Vault,
    user: &mut User,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<Option<u16>> {
    let client = ClientInfo::none().ip(&user.ip);
    let attempt = vault
        .limits()
        .check(&user.id, "auth_attempts", 1, &client)
        .await?;
    if !attempt.allowed {
        counts.locked_out += 1;
        vault.audit().append(
            AuditEvent::new(EventKind::Auth, "login.locked_out")
                .user(&user.id)
                .client_ip(&user.ip),
        )?;
        return Ok(Some(429));
    }
    // Every tenth user cannot type their password (not the hottest one,
    // user 0, or the whole run would be one lockout).
    let wrong = if user.id.ends_with('7') { 0.7 } else { 0.05 };
    if rng.unit() < wrong {
        counts.failed_logins += 1;
        vault.metrics().record_auth(false);
        vault.audit().append(
            AuditEvent::new(EventKind::Auth, "login.failed")
                .user(&user.id)
                .client_ip(&user.ip),
        )?;
        return Ok(Some(401));
    }
    let issued = vault
        .sessions()
        .create(
            NewSession::new(&user.id)
                .device_fingerprint(&user.device)
                .client_ip(&user.ip)
                .client_meta("route", "/mcp")
                .data(&json!({"upstream_access_token": "demo", "country": "NO"}))?,
        )
        .await?;
    let issued = vault
        .sessions()
        .regenerate(issued.token.expose(), Some(&user.device))
        .await?;
    counts.logins += 1;
    counts.sessions_created += 1;
    vault.metrics().record_auth(true);
    vault.audit().append(
        AuditEvent::new(EventKind::Auth, "login")
            .user(&user.id)
            .session(&issued.id)
            .client_ip(&user.ip),
    )?;
    user.token = Some(issued.token);
    Ok(None)
}

/// One API request: session, rate limits, the work, the audit event.
/// Returns the endpoint it ended at and the HTTP status it would answer.
async fn request(
    vault: &Vault,
    user: &mut User,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<(&'static str, u16)> {
    if user.token.is_none()
        && let Some(status) = login(vault, user, rng, counts).await?
    {
        return Ok(("demo.login", status));
    }
    let endpoint = match rng.unit() {
        r if r < 0.60 => "demo.search",
        r if r < 0.85 => "demo.playlist.read",
        r if r < 0.95 => "demo.playlist.edit",
        _ => "demo.preferences",
    };
    let token = user
        .token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    let session = match vault
        .sessions()
        .validate(&token, Some(&user.device))
        .await?
    {
        Validation::Valid(session) => session,
        other => {
            if matches!(other, Validation::Expired { .. }) {
                counts.sessions_expired += 1;
            }
            user.token = None;
            return Ok(("demo.session", 401));
        }
    };
    if session.rotation_due {
        user.token = Some(
            vault
                .sessions()
                .rotate(&token, Some(&user.device))
                .await?
                .token,
        );
        counts.sessions_rotated += 1;
    }
    let client = ClientInfo::none().ip(&user.ip);
    let mut allowed = vault
        .limits()
        .check(&user.id, "api_calls", 1, &client)
        .await?
        .allowed;
    let specific = match endpoint {
        "demo.search" => Some("search_queries"),
        "demo.playlist.edit" => Some("playlist_ops"),
        _ => None,
    };
    if let Some(limit) = specific.filter(|_| allowed) {
        allowed = vault
            .limits()
            .check(&user.id, limit, 1, &client)
            .await?
            .allowed;
    }
    if !allowed {
        counts.rate_limited += 1;
        return Ok(("demo.rate_limited", 429));
    }
    counts.allowed += 1;
    match endpoint {
        // Searches are shared by everyone, and a few queries are hot.
        "demo.search" => {
            let query = format!("query-{}", rng.skewed(120));
            let key = CacheKey::derive("demo.search", "tracks", &json!({ "q": query }), None)?;
            let options = SetOptions::new().tag("search");
            let _: serde_json::Value = vault
                .cache()
                .get_or_load(&key, &options, || async {
                    Ok::<_, statevault::Error>(upstream(&query))
                })
                .await?;
        }
        // A playlist is the user's own; editing one invalidates its tag.
        "demo.playlist.read" | "demo.playlist.edit" => {
            let playlist = format!("pl-{}", rng.next() % 5);
            let tag = format!("playlist:{}:{playlist}", user.id);
            if endpoint == "demo.playlist.edit" {
                counts.cache_invalidations += vault.cache().invalidate_tag(&tag).await?;
            } else {
                let key = CacheKey::derive(
                    "demo.playlists",
                    "get",
                    &json!({ "id": playlist }),
                    Some(&user.id),
                )?;
                let options = SetOptions::new().tag(tag);
                let _: serde_json::Value = vault
                    .cache()
                    .get_or_load(&key, &options, || async {
                        Ok::<_, statevault::Error>(upstream(&playlist))
                    })
                    .await?;
            }
        }
        _ => {}
    }
    let mut status = 200;
    if endpoint == "demo.preferences" {
        // Someone else may have stored preferences for a demo user that
        // these defaults refuse: a service answers 422, and so does the demo.
        let answer = if rng.unit() < 0.5 {
            let quality = ["LOW", "HIGH", "LOSSLESS"][rng.next() as usize % 3];
            counts.preference_patches += 1;
            vault
                .preferences()
                .patch(&user.id, &json!({"audio_quality": quality}))
                .await
        } else {
            counts.preference_reads += 1;
            vault.preferences().get(&user.id)
        };
        match answer {
            Ok(_) => {}
            Err(statevault::Error::InvalidPreference { .. }) => {
                counts.preference_refusals += 1;
                status = 422;
            }
            Err(e) => return Err(e),
        }
    }
    vault.audit().append(
        AuditEvent::new(EventKind::ApiCall, endpoint)
            .user(&user.id)
            .session(&session.id)
            .details(json!({ "status": status }))
            .category(GdprCategory::Necessary),
    )?;
    Ok((endpoint, status))
}

/// Writes a backup of the file beside the service's own, named as the
/// demo's (`<stem>.demo.<time>.backup.db`, which the default backups'
/// retention never matches), and deletes the demo's older ones beyond the
/// newest three. Returns the report and how many were deleted.
async fn backup(vault: &Vault) -> Result<(statevault::BackupReport, usize)> {
    let db = vault.path();
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("backups");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let stem = db
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("statevault");
    let prefix = format!("{stem}.demo.");
    let stamp: String = SystemClock
        .now()
        .to_rfc3339()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let path = dir.join(format!("{prefix}{stamp}.{}.backup.db", std::process::id()));
    let report = vault.backup(Some(&path)).await?;
    let mut ours: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| io(&dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".backup.db"))
        })
        .collect();
    ours.sort();
    let old = ours.len().saturating_sub(3);
    for path in &ours[..old] {
        std::fs::remove_file(path).map_err(|e| io(path, e))?;
    }
    Ok((report, old))
}

fn io(path: &Path, source: std::io::Error) -> statevault::Error {
    statevault::Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn method(endpoint: &str) -> &'static str {
    if endpoint.ends_with(".edit") {
        "POST"
    } else {
        "GET"
    }
}

/// What the upstream API would answer: a page of tracks (~1 KiB of JSON).
fn upstream(query: &str) -> serde_json::Value {
    let tracks: Vec<_> = (0..8)
        .map(|i| json!({"id": format!("{query}-{i}"), "title": format!("Track {i} for {query}"), "duration": 180 + i}))
        .collect();
    json!({"query": query, "tracks": tracks})
}

/// The report as text, each line through the CLI's `say!`.
fn print(r: &Report) -> Result<()> {
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
    say!("");
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
        "  rate limits: {} violations, {} with a penalty",
        r.violations,
        r.penalties
    );
    say!(
        "  preferences: {} reads, {} patches, {} refused (422)",
        c.preference_reads,
        c.preference_patches,
        c.preference_refusals
    );
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
        None => say!("  sweep: skipped, the file held data before the demo"),
    }
    say!(
        "  backup: {} ({} bytes; {} older demo backups removed)",
        r.backup,
        r.backup_bytes,
        r.backups_removed
    );
    say!(
        "  file: {} bytes (+ {} bytes of WAL), {}",
        r.file_bytes,
        r.wal_bytes,
        if r.encrypted {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    );
    Ok(())
}

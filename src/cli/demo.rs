//! `statevault demo`: the main job. Drives the workload of the seeds' music
//! service through every facet of one vault file and prints what happened.
//!
//! Time is the vault's injected clock: the demo starts it at the real time
//! and moves it forward by the simulated gap between requests, so hours of
//! traffic (expiring sessions, due rotations, refilling buckets, running
//! penalties) take seconds. Latencies in the report are real: wall-clock
//! time of the vault work each request does.

use std::collections::BTreeMap;
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

/// An endpoint's latency, from the metrics facet's sketches (±1 %).
#[derive(Debug, Serialize)]
struct Latency {
    requests: u64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
}

const ENDPOINTS: [&str; 5] = [
    "search",
    "playlist.read",
    "playlist.edit",
    "preferences",
    "rate_limited",
];

/// p50/p95/p99 of each endpoint over the run, from the stored metrics.
async fn latencies(vault: &Vault, from: Timestamp) -> Result<BTreeMap<&'static str, Latency>> {
    vault.metrics().flush_all().await?;
    let to = vault.now().saturating_add(Duration::from_secs(3600));
    let mut out = BTreeMap::new();
    for endpoint in ENDPOINTS {
        let s = vault
            .metrics()
            .percentiles(API_REQUEST_DURATION, &[("endpoint", endpoint)], from, to)
            .await?;
        if s.count > 0 {
            let us = |ms: Option<f64>| ms.unwrap_or(0.0) * 1e3;
            out.insert(
                endpoint,
                Latency {
                    requests: s.count,
                    p50_us: us(s.p50),
                    p95_us: us(s.p95),
                    p99_us: us(s.p99),
                },
            );
        }
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
    cache_invalidations: u64,
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
    swept: BTreeMap<String, u64>,
    backup: String,
    backup_bytes: u64,
    file_bytes: u64,
    wal_bytes: u64,
    encrypted: bool,
}

pub async fn run(options: VaultOptions, args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let clock = FakeClock::new(SystemClock.now());
    let start = clock.now();
    let vault = Vault::open(
        options
            .clock(clock.clone())
            .preferences(PreferencesConfig::seeds().record_in_file(false))
            .sessions(demo_sessions()),
    )
    .await?;
    let result = drive(&vault, &clock, &args).await;
    let closed = vault.close().await;
    let mut report = result?;
    closed?;
    report.simulated_hours = clock.now().duration_since(start).as_secs_f64() / 3600.0;
    report.wall_seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_json(&report)?;
    } else {
        print(&report);
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

async fn drive(vault: &Vault, clock: &FakeClock, args: &Args) -> Result<Report> {
    let mut rng = Rng(0x5eed_cafe_f00d ^ u64::from(std::process::id()));
    let mut counts = Counts::default();
    let start = vault.now();
    let mut users: Vec<User> = (0..args.users)
        .map(|i| User {
            id: format!("user-{i:05}"),
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

    let mut i = 0;
    while i < args.requests {
        let u = rng.skewed(users.len());
        // A hot user now and then sends a burst that the limits must stop:
        // 60 requests in 1.2 s, about 36 of them searches (25 allowed).
        let burst = if rng.unit() < 0.005 { 60 } else { 1 };
        for _ in 0..burst.min(args.requests - i) {
            clock.advance(Duration::from_millis(if burst > 1 {
                20
            } else {
                500 + rng.next() % 5_000
            }));
            request(vault, &mut users[u], &mut rng, &mut counts).await?;
            i += 1;
            progress.inc(1);
        }
        // Now and then someone logs out everywhere.
        if rng.unit() < 0.002 {
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

    let swept = vault.sweep().await?.removed;
    let backup = vault.backup(None).await?;
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
        latency_by_endpoint: latencies(vault, start).await?,
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
        file_bytes: info.file_bytes,
        wal_bytes: info.wal_bytes,
        encrypted: info.encrypted,
    })
}

/// Logs the user in: the strict `auth_attempts` limit first, then the
/// password (wrong now and then, mostly for every tenth user), then a session, regenerated
/// after login as a web framework would.
async fn login(vault: &Vault, user: &mut User, rng: &mut Rng, counts: &mut Counts) -> Result<bool> {
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
        return Ok(false);
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
        return Ok(false);
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
    Ok(true)
}

/// One API request: session, rate limits, the work, the audit event.
async fn request(vault: &Vault, user: &mut User, rng: &mut Rng, counts: &mut Counts) -> Result<()> {
    counts.requests += 1;
    if user.token.is_none() && !login(vault, user, rng, counts).await? {
        return Ok(());
    }
    let endpoint = match rng.unit() {
        r if r < 0.60 => "search",
        r if r < 0.85 => "playlist.read",
        r if r < 0.95 => "playlist.edit",
        _ => "preferences",
    };
    let started = Instant::now();
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
            return Ok(());
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
        "search" => Some("search_queries"),
        "playlist.edit" => Some("playlist_ops"),
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
        let (uid, took) = (Some(user.id.as_str()), started.elapsed());
        vault
            .metrics()
            .record_api_call("rate_limited", method(endpoint), 429, took, uid);
        return Ok(());
    }
    counts.allowed += 1;
    match endpoint {
        // Searches are shared by everyone, and a few queries are hot.
        "search" => {
            let query = format!("query-{}", rng.skewed(120));
            let key = CacheKey::derive("search", "tracks", &json!({ "q": query }), None)?;
            let options = SetOptions::new().tag("search");
            let _: serde_json::Value = vault
                .cache()
                .get_or_load(&key, &options, || async {
                    Ok::<_, statevault::Error>(upstream(&query))
                })
                .await?;
        }
        // A playlist is the user's own; editing one invalidates its tag.
        "playlist.read" | "playlist.edit" => {
            let playlist = format!("pl-{}", rng.next() % 5);
            let tag = format!("playlist:{}:{playlist}", user.id);
            if endpoint == "playlist.edit" {
                counts.cache_invalidations += vault.cache().invalidate_tag(&tag).await?;
            } else {
                let key = CacheKey::derive(
                    "playlists",
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
    if endpoint == "preferences" {
        if rng.unit() < 0.5 {
            let quality = ["LOW", "HIGH", "LOSSLESS"][rng.next() as usize % 3];
            vault
                .preferences()
                .patch(&user.id, &json!({"audio_quality": quality}))
                .await?;
            counts.preference_patches += 1;
        } else {
            vault.preferences().get(&user.id)?;
            counts.preference_reads += 1;
        }
    }
    vault.audit().append(
        AuditEvent::new(EventKind::ApiCall, endpoint)
            .user(&user.id)
            .session(&session.id)
            .details(json!({"status": 200}))
            .category(GdprCategory::Necessary),
    )?;
    let (uid, took) = (Some(user.id.as_str()), started.elapsed());
    vault
        .metrics()
        .record_api_call(endpoint, method(endpoint), 200, took, uid);
    Ok(())
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

fn print(r: &Report) {
    let c = &r.counts;
    println!(
        "statevault demo: {} ({} users; sessions idle out after 20 min, rotate after 30 min)",
        r.path, r.users
    );
    println!(
        "  {} requests over {:.1} simulated hours in {:.2} s ({:.0} requests/s)",
        c.requests,
        r.simulated_hours,
        r.wall_seconds,
        c.requests as f64 / r.wall_seconds.max(1e-9)
    );
    println!(
        "  allowed {}, rate-limited {} (429)",
        c.allowed, c.rate_limited
    );
    println!();
    println!(
        "  latency of the vault work per request (real time, from the metrics facet's sketches)"
    );
    println!(
        "    {:<14} {:>9} {:>9} {:>9} {:>9}",
        "endpoint", "requests", "p50 µs", "p95 µs", "p99 µs"
    );
    for (endpoint, l) in &r.latency_by_endpoint {
        println!(
            "    {endpoint:<14} {:>9} {:>9.1} {:>9.1} {:>9.1}",
            l.requests, l.p50_us, l.p95_us, l.p99_us
        );
    }
    println!();
    println!(
        "  logins {} ok, {} wrong password, {} locked out by auth_attempts",
        c.logins, c.failed_logins, c.locked_out
    );
    println!(
        "  sessions: {} created, {} rotated, {} expired, {} revoked; {} live now",
        c.sessions_created,
        c.sessions_rotated,
        c.sessions_expired,
        c.sessions_revoked,
        r.live_sessions
    );
    let (l1, l2) = (&r.cache.l1, &r.cache.l2);
    let ratio = |hits: u64, misses: u64| 100.0 * hits as f64 / (hits + misses).max(1) as f64;
    println!(
        "  cache: L1 {} hits / {} misses ({:.1} %), L2 {} hits / {} misses ({:.1} %), overall {:.1} %",
        l1.hits,
        l1.misses,
        ratio(l1.hits, l1.misses),
        l2.hits,
        l2.misses,
        ratio(l2.hits, l2.misses),
        100.0 * r.cache.hit_ratio,
    );
    println!(
        "         {} entries invalidated by playlist edits",
        r.counts.cache_invalidations
    );
    println!(
        "  rate limits: {} violations, {} with a penalty",
        r.violations, r.penalties
    );
    println!(
        "  preferences: {} reads, {} patches",
        c.preference_reads, c.preference_patches
    );
    println!(
        "  audit: {} events, chain {}",
        r.audit_events,
        if r.audit_chain_ok {
            "verified"
        } else {
            "BROKEN"
        }
    );
    println!(
        "  export of {}: {} audit events",
        r.exported_user, r.exported_audit_events
    );
    let erased: Vec<String> = r
        .erased_rows
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    println!("  erasure of {}: {}", r.erased_user, erased.join(", "));
    let swept: Vec<String> = r.swept.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("  sweep: {}", swept.join(", "));
    println!("  backup: {} ({} bytes)", r.backup, r.backup_bytes);
    println!(
        "  file: {} bytes (+ {} bytes of WAL), {}",
        r.file_bytes,
        r.wal_bytes,
        if r.encrypted {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    );
}

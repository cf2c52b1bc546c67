//! `statevault demo`: the main job. Drives the workload of the seeds' music
//! service through every facet of one vault (a file, or a PostgreSQL
//! database with feature `postgres`) and prints what happened.
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
//! the application's, applies retention (`sweep`) only to a file (or a
//! database's schema) it created, prunes only the backups it made, and
//! reports on its own users only. On PostgreSQL it makes no backup: the
//! database's are its owner's (`pg_dump`).

mod report;
mod request;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use statevault::{
    AuditEvent, Clock, EventKind, FakeClock, PreferencesConfig, Result, SessionConfig, SystemClock,
    Timestamp, Vault, VaultOptions,
};

use report::{Counts, Report};
use traffic::{Rng, Schedule, User};

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

pub async fn run(options: VaultOptions, args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let seed = 0x5eed_cafe_f00d ^ u64::from(std::process::id());
    let schedule = Schedule::new(seed, args.users as usize, args.requests);
    let span: Duration = schedule.clone().map(|slot| slot.gap).sum();
    let clock = FakeClock::new(SystemClock.now().saturating_sub(span));
    let start = clock.now();
    let fresh = creates(&options).await;
    let on_file = options.postgres_url().is_none();
    let vault = Vault::open(
        options
            .clock(clock.clone())
            .preferences(PreferencesConfig::seeds().record_in_file(false))
            .sessions(demo_sessions()),
    )
    .await?;
    let mut rng = Rng(seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15);
    let setting = Setting { fresh, on_file };
    let result = drive(&vault, &clock, &args, schedule, &mut rng, setting).await;
    let closed = vault.close().await;
    let mut report = result?;
    closed?;
    report.simulated_hours = clock.now().duration_since(start).as_secs_f64() / 3600.0;
    report.wall_seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_json(&report)?;
    } else {
        report::print(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the demo is about to create the state it runs on, and may then
/// apply retention to it: a file that does not exist, a database without
/// statevault's schema. (A key file that does not exist yet is made for a
/// new database: opening an existing one with it would fail.)
async fn creates(options: &VaultOptions) -> bool {
    #[cfg(feature = "postgres")]
    if let Some(url) = options.postgres_url() {
        let key = options.key_origin();
        return match statevault::postgres::Database::open(url, key).await {
            Ok(db) => {
                db.close().await;
                false
            }
            Err(statevault::Error::Missing { .. }) => true,
            Err(_) => matches!(key, statevault::KeySource::File(path) if !path.exists()),
        };
    }
    !options.path().exists()
}

/// Where the demo runs.
#[derive(Clone, Copy)]
struct Setting {
    /// It created the state (see [`creates`]).
    fresh: bool,
    /// The state is a file (not a database).
    on_file: bool,
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

/// Serves the schedule's requests, then does the end-of-run work and
/// reports it all; `run` adds the simulated and wall-clock times.
async fn drive(
    vault: &Vault,
    clock: &FakeClock,
    args: &Args,
    schedule: Schedule,
    rng: &mut Rng,
    setting: Setting,
) -> Result<Report> {
    let mut counts = Counts::default();
    let start = vault.now();
    let mut users: Vec<User> = (0..args.users).map(User::new).collect();
    serve(vault, clock, schedule, rng, &mut users, &mut counts).await?;
    finish(vault, args, &users, counts, start, setting).await
}

/// Sends the schedule's requests, moving the clock by each one's gap and
/// timing the vault work in metrics, behind a progress bar.
async fn serve(
    vault: &Vault,
    clock: &FakeClock,
    schedule: Schedule,
    rng: &mut Rng,
    users: &mut [User],
    counts: &mut Counts,
) -> Result<()> {
    let progress = ProgressBar::new(schedule.left());
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
        let (endpoint, status) = request::request(vault, user, rng, counts).await?;
        let took = started.elapsed();
        vault.metrics().record_api_call(
            endpoint,
            request::method(endpoint),
            status,
            took,
            Some(user.id.as_str()),
        );
        counts.requests += 1;
        *counts.by_endpoint.entry(endpoint).or_default() += 1;
        progress.inc(1);
        // Now and then, after a turn, someone logs out everywhere.
        if slot.turn_ends && rng.unit() < 0.002 {
            let user = &mut users[rng.skewed(users.len())];
            counts.sessions_revoked += vault.sessions().revoke_user(&user.id).await?;
            user.token = None;
            vault
                .audit()
                .append(AuditEvent::new(EventKind::Auth, "logout_all").user(&user.id))?;
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// After the traffic: one user exported and another erased, a sweep (of a
/// file the demo created), a backup (of a file), and the report of it all.
async fn finish(
    vault: &Vault,
    args: &Args,
    users: &[User],
    counts: Counts,
    start: Timestamp,
    setting: Setting,
) -> Result<Report> {
    let exported_user = users[0].id.clone();
    let export = vault.export_user(&exported_user).await?;
    vault
        .audit()
        .append(AuditEvent::new(EventKind::DataAccess, "user.export").user(&exported_user))?;
    let erased_user = users[users.len() - 1].id.clone();
    let erased = vault.erase_user(&erased_user).await?;

    let swept = if setting.fresh {
        Some(vault.sweep().await?.removed)
    } else {
        None
    };
    let (backup, backups_removed) = if setting.on_file {
        let (report, removed) = backup(vault).await?;
        (Some(report), removed)
    } else {
        (None, 0)
    };
    let chain = vault.audit().verify().await?;
    let own = OwnRecords::of(vault, users).await?;
    let cache = vault.cache().stats().await?;
    let file = if setting.on_file {
        let info = vault.info().await?;
        Some(report::FileFacts {
            file_bytes: info.file_bytes,
            wal_bytes: info.wal_bytes,
            encrypted: info.encrypted,
        })
    } else {
        None
    };
    let latency_by_endpoint = report::latencies(vault, &counts, start).await?;
    Ok(Report {
        path: vault.path().display().to_string(),
        users: args.users,
        simulated_hours: 0.0,
        wall_seconds: 0.0,
        counts,
        violations: own.violations,
        penalties: own.penalties,
        live_sessions: own.live_sessions,
        latency_by_endpoint,
        cache,
        audit_events: chain.events,
        audit_chain_ok: chain.ok,
        exported_user,
        exported_audit_events: export.audit_events.len(),
        erased_user,
        erased_rows: erased.rows,
        swept,
        backup: backup.as_ref().map(|b| b.path.display().to_string()),
        backup_bytes: backup.map(|b| b.bytes),
        backups_removed,
        file,
    })
}

/// What the vault holds of the demo's own users at the end (not of anyone
/// else using the same state), through the public API, so the same on
/// every backend.
struct OwnRecords {
    live_sessions: u64,
    violations: u64,
    penalties: u64,
}

impl OwnRecords {
    async fn of(vault: &Vault, users: &[User]) -> Result<OwnRecords> {
        let mut own = OwnRecords {
            live_sessions: 0,
            violations: 0,
            penalties: 0,
        };
        for user in users {
            own.live_sessions += vault.sessions().list(&user.id).await?.len() as u64;
            let violations = vault.limits().violations_of(&user.id).await?;
            own.violations += violations.len() as u64;
            own.penalties += violations
                .iter()
                .filter(|v| v.penalty_until.is_some())
                .count() as u64;
        }
        Ok(own)
    }
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
    let pruned = remove_present(&ours[..ours.len().saturating_sub(3)])?;
    Ok((report, pruned))
}

/// Removes `paths` and says how many this call removed. A path already gone
/// is no error: another demo pruning at the same time took it first.
fn remove_present(paths: &[PathBuf]) -> statevault::Result<usize> {
    let mut removed = 0;
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path, e)),
        }
    }
    Ok(removed)
}

fn io(path: &Path, source: std::io::Error) -> statevault::Error {
    statevault::Error::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::remove_present;

    /// Two demos pruning at once: what the other took first is not an error.
    #[test]
    fn a_backup_already_pruned_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, gone) = (
            dir.path().join("a.backup.db"),
            dir.path().join("b.backup.db"),
        );
        std::fs::write(&kept, b"backup").unwrap();
        assert_eq!(remove_present(&[kept.clone(), gone]).unwrap(), 1);
        assert!(!kept.exists());
    }
}

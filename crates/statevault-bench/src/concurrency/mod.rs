//! `--concurrency 1,8,64`: each workload at each level N of concurrent
//! callers, three ways, one after the other on the same machine:
//!
//! - statevault: N tokio tasks on the bench's multi-thread runtime sharing
//!   one vault, through the public API ([`ours`]);
//! - rusqlite: N threads with a connection each, doing the same rows and
//!   statements one transaction per call, same `synchronous` ([`raw`]);
//! - Redis: `redis-benchmark -c N` with an explicit command line per role,
//!   against a server the bench starts and stops ([`redis`]).
//!
//! Every figure is ops/s, p50 and p99 of a call's latency, and the peak
//! RSS of the process that did the work (the bench's, or the server's).

mod drive;
mod fixtures;
mod ours;
#[cfg(feature = "postgres")]
pub mod postgres;
mod raw;
mod redis;
mod roles;
mod table;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use statevault::{Result, Vault};

pub use drive::Figures;
use fixtures::{Shared, names, sessions};
use redis::{Peer, Server};
use roles::Role;

/// The workloads `--concurrency` runs, in order.
pub const WORKLOADS: [&str; 10] = [
    "session_create",
    "session_rotate",
    "session_revoke",
    "session_validate",
    "ratelimit_check_strict",
    "ratelimit_check_shared",
    "audit_append_durable",
    "prefs_patch",
    "cache_l2_get",
    "cache_set",
];

/// The concurrency report.
#[derive(Debug, Serialize)]
pub struct Concurrency {
    /// The levels of concurrency, in callers.
    pub levels: Vec<usize>,
    /// How long each figure's run lasts (at most; revocations may end
    /// sooner, when their prepared sessions are used up).
    pub seconds_per_figure: f64,
    /// How statevault's callers run.
    pub statevault: String,
    /// The baseline's name (`rusqlite` for the file, `raw_sqlx` for
    /// PostgreSQL), and how its callers run.
    #[serde(flatten)]
    pub baseline: Named<String>,
    /// The Redis servers and client, or why they were skipped.
    pub redis: RedisSetup,
    /// By workload name.
    pub workloads: serde_json::Map<String, serde_json::Value>,
}

/// The Redis servers the figures came from.
#[derive(Debug, Serialize)]
pub struct RedisSetup {
    /// `redis-server --version`'s version, when it ran.
    version: Option<String>,
    /// The memory-only server's flags, or why it did not run.
    server: String,
    /// The durable server's flags, or why it did not run.
    durable_server: String,
    client: &'static str,
}

/// One workload at every level.
#[derive(Debug, Serialize)]
struct Workload {
    /// What one statevault call does.
    statevault: &'static str,
    /// What one call of the baseline does, under its name.
    #[serde(flatten)]
    baseline: Named<&'static str>,
    /// The redis-benchmark command line of the role.
    redis: String,
    /// Whether the role also runs against the durable server.
    redis_durable: bool,
    levels: Vec<Level>,
}

/// One workload at one level.
#[derive(Debug, Serialize)]
struct Level {
    callers: usize,
    statevault: Figures,
    /// The baseline's figures, under its name.
    #[serde(flatten)]
    baseline: Named<Figures>,
    redis: Peer,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_durable: Option<Peer>,
}

/// A value under the baseline's name, as one JSON member.
pub type Named<T> = std::collections::BTreeMap<&'static str, T>;

/// `value` under `name`.
fn named<T>(name: &'static str, value: T) -> Named<T> {
    Named::from([(name, value)])
}

/// What to run and how long.
pub struct Plan<'a> {
    pub levels: &'a [usize],
    pub quick: bool,
    /// Only these workloads ([`WORKLOADS`] names); all when empty.
    pub only: &'a [String],
}

impl Plan<'_> {
    fn run(&self) -> Duration {
        if self.quick {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(2)
        }
    }
}

/// The flags of the two Redis servers: memory only, and durable.
const MEMORY: &str = "--appendonly no";
const DURABLE: &str = "--appendonly yes --appendfsync always";

/// Runs the plan's workloads at each level, in `dir`.
pub async fn measure(dir: &Path, plan: &Plan<'_>) -> Result<Concurrency> {
    let mut peers = Peers::default();
    let mut workloads = serde_json::Map::new();
    for name in WORKLOADS {
        if !plan.only.is_empty() && !plan.only.iter().any(|n| n == name) {
            continue;
        }
        let (servers, role) = peers.start(name);
        let [memory, durable] = &servers;
        let workload = workload(name, dir, plan, &role, (memory, durable)).await?;
        workloads.insert(name.into(), serde_json::to_value(workload)?);
    }
    Ok(Concurrency {
        levels: plan.levels.to_vec(),
        seconds_per_figure: plan.run().as_secs_f64(),
        statevault: format!(
            "N tokio tasks on a multi-thread runtime of {} worker threads, sharing one vault",
            tokio::runtime::Handle::current().metrics().num_workers()
        ),
        baseline: named(
            "rusqlite",
            "N OS threads, a connection each, one transaction per call (BEGIN IMMEDIATE for writes)"
                .to_owned(),
        ),
        redis: peers.setup(),
        workloads,
    })
}

/// The Redis servers of a run: started afresh for each workload (so that
/// each peak RSS is its own), with what they said when they would not.
#[derive(Default)]
struct Peers {
    version: Option<String>,
    /// Why the memory-only and the durable server did not run, once said.
    skipped: [Option<String>; 2],
}

impl Peers {
    /// Fresh servers for workload `name` (memory-only, durable), and its
    /// role on them.
    fn start(&mut self, name: &str) -> ([std::result::Result<Server, String>; 2], Role) {
        let servers = [Server::start(MEMORY), Server::start(DURABLE)];
        for (server, skip) in servers.iter().zip(&mut self.skipped) {
            if let (Err(why), None) = (server, &skip) {
                eprintln!("*** SKIPPED: the Redis columns: {why} ***");
                *skip = Some(why.clone());
            }
        }
        let memory = servers[0].as_ref().ok();
        self.version = self.version.take().or_else(|| memory.map(Server::version));
        let script = servers.iter().flatten().next().map(|s| s.script.as_str());
        let role = Role::of(name, script.unwrap_or(""));
        (servers, role)
    }

    /// How the servers ran, for the report.
    fn setup(self) -> RedisSetup {
        let setup = |flags: &str, skipped: &Option<String>| match skipped {
            None => format!("redis-server --save '' {flags}, loopback, one per workload"),
            Some(why) => format!("skipped: {why}"),
        };
        RedisSetup {
            server: setup(MEMORY, &self.skipped[0]),
            durable_server: setup(DURABLE, &self.skipped[1]),
            version: self.version,
            client: "redis-benchmark -c N (one process, N connections), the command line per workload",
        }
    }
}

type Servers<'a> = (
    &'a std::result::Result<Server, String>,
    &'a std::result::Result<Server, String>,
);

/// Workload `name` at every level of the plan.
async fn workload(
    name: &str,
    dir: &Path,
    plan: &Plan<'_>,
    role: &Role,
    (memory, durable): Servers<'_>,
) -> Result<Workload> {
    let ours_path = dir.join(format!("concurrency-{name}.db"));
    let shared = Shared::prepare(name, &ours_path, plan.quick).await?;
    // Reads share the rows statevault reads; writers get a file of their own.
    let raw_path = if matches!(name, "session_validate" | "cache_l2_get") {
        ours_path.clone()
    } else {
        let path = dir.join(format!("concurrency-{name}-rusqlite.db"));
        Vault::open(fixtures::options(name, &path))
            .await?
            .close()
            .await?;
        path
    };
    let memory = memory.as_ref().map_err(String::as_str);
    let durable = durable.as_ref().map_err(String::as_str);
    let durable_used = durable.ok().filter(|_| role.durable);
    for server in memory.ok().into_iter().chain(durable_used) {
        role.populate(server)?;
    }
    let mut levels = Vec::new();
    for &n in plan.levels {
        let (works, limit) = our_works(name, &ours_path, n, plan, &shared)?;
        let statevault = ours::run(
            fixtures::options(name, &ours_path),
            works,
            plan.run(),
            limit,
        )
        .await?;
        let (callers, limit) = raw_callers(name, &raw_path, n, plan, &shared)?;
        let rusqlite = drive::threads(callers, plan.run(), limit)?;
        levels.push(Level {
            callers: n,
            statevault,
            baseline: named("rusqlite", rusqlite),
            redis: role.measure(memory, n, plan.run()),
            redis_durable: role.durable.then(|| role.measure(durable, n, plan.run())),
        });
    }
    std::fs::remove_file(&ours_path).ok();
    std::fs::remove_file(&raw_path).ok();
    Ok(Workload {
        statevault: roles::ours(name),
        baseline: named("rusqlite", roles::raw(name)),
        redis: role.shown(),
        redis_durable: role.durable,
        levels,
    })
}

/// Revocations use up their sessions: this many in all per level.
fn revocations(plan: &Plan<'_>) -> usize {
    if plan.quick { 400 } else { 40_000 }
}

/// statevault's callers at level `n`, and how many calls each may make.
fn our_works(
    name: &str,
    path: &Path,
    n: usize,
    plan: &Plan<'_>,
    shared: &Shared,
) -> Result<(Vec<ours::Work>, u64)> {
    let prefix = format!("v{n}");
    let mut limit = u64::MAX;
    let works = match name {
        "session_create" => (0..n).map(|_| ours::Work::Create).collect(),
        "session_rotate" => sessions(path, &prefix, n, 64)?
            .into_iter()
            .map(|mine| ours::Work::Rotate(mine.into_iter().map(|(_, t)| t).collect()))
            .collect(),
        "session_revoke" => {
            let per = (revocations(plan) / n).max(8);
            limit = per as u64;
            sessions(path, &prefix, n, per)?
                .into_iter()
                .map(|mine| ours::Work::Revoke(mine.into_iter().map(|(id, _)| id).collect()))
                .collect()
        }
        "session_validate" => (0..n)
            .map(|_| ours::Work::Validate(shared.tokens.clone()))
            .collect(),
        "ratelimit_check_strict" | "ratelimit_check_shared" => (0..n)
            .map(|c| ours::Work::Check(names(&prefix, c, 64)))
            .collect(),
        "audit_append_durable" => (0..n).map(|_| ours::Work::AppendDurable).collect(),
        "prefs_patch" => (0..n)
            .map(|c| ours::Work::Patch(names(&prefix, c, 16)))
            .collect(),
        "cache_l2_get" => (0..n)
            .map(|_| ours::Work::Get(shared.keys.clone()))
            .collect(),
        _ => (0..n)
            .map(|_| ours::Work::Set(shared.keys.clone(), shared.values.clone()))
            .collect(),
    };
    Ok((works, limit))
}

/// rusqlite's callers at level `n`, and how many calls each may make.
fn raw_callers(
    name: &str,
    path: &Path,
    n: usize,
    plan: &Plan<'_>,
    shared: &Shared,
) -> Result<(Vec<raw::Caller>, u64)> {
    let prefix = format!("r{n}");
    let mut limit = u64::MAX;
    let works: Vec<raw::Work> = match name {
        "session_create" => (0..n).map(|_| raw::Work::Create).collect(),
        "session_rotate" => sessions(path, &prefix, n, 64)?
            .into_iter()
            .map(|mine| {
                let hashes = mine
                    .iter()
                    .map(|(_, t)| crate::sessions::sha256(t.as_bytes()));
                raw::Work::Rotate(hashes.collect())
            })
            .collect(),
        "session_revoke" => {
            let per = (revocations(plan) / n).max(8);
            limit = per as u64;
            sessions(path, &prefix, n, per)?
                .into_iter()
                .map(|mine| raw::Work::Revoke(mine.into_iter().map(|(id, _)| id).collect()))
                .collect()
        }
        "session_validate" => (0..n)
            .map(|_| raw::Work::Validate(shared.tokens.clone()))
            .collect(),
        "ratelimit_check_strict" => (0..n)
            .map(|c| {
                let now = statevault::Clock::now(&statevault::SystemClock).as_millis();
                let buckets = names(&prefix, c, 64).into_iter();
                raw::Work::Strict(buckets.map(|s| (s, crate::limits::PLENTY, now)).collect())
            })
            .collect(),
        "ratelimit_check_shared" => (0..n)
            .map(|c| raw::Work::Shared(names(&prefix, c, 64)))
            .collect(),
        "audit_append_durable" => (0..n).map(|_| raw::Work::AppendDurable).collect(),
        "prefs_patch" => (0..n)
            .map(|c| raw::Work::Patch(names(&prefix, c, 16)))
            .collect(),
        "cache_l2_get" => (0..n)
            .map(|_| Ok(raw::Work::Get(shared.keys.clone(), decompressor()?)))
            .collect::<Result<_>>()?,
        _ => (0..n)
            .map(|_| {
                let zstd = crate::cache::compressor()?;
                Ok(raw::Work::Set(
                    shared.keys.clone(),
                    shared.values.clone(),
                    zstd,
                ))
            })
            .collect::<Result<_>>()?,
    };
    let callers = works
        .into_iter()
        .enumerate()
        .map(|(id, work)| raw::caller(path, id, work))
        .collect::<Result<_>>()?;
    Ok((callers, limit))
}

fn decompressor() -> Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new().map_err(|source| statevault::Error::Io {
        path: "(zstd)".into(),
        source,
    })
}

impl Concurrency {
    /// The report as text: one table per workload.
    pub fn lines(&self) -> Vec<String> {
        table::lines(self)
    }
}

//! What each workload's call does on each side, in words for the report,
//! and as a redis-benchmark command line for Redis.

use std::time::Duration;

use super::redis::{Peer, Server};
use statevault::Result;

/// What one statevault call of workload `name` does.
pub fn ours(name: &str) -> &'static str {
    match name {
        "session_create" => "sessions().create for a new user (cap check + insert, one commit)",
        "session_rotate" => {
            "sessions().rotate of one of the caller's 64 sessions (validate, then update + change-feed row, one commit)"
        }
        "session_revoke" => {
            "sessions().revoke of one of the caller's sessions by id (update + change-feed row, one commit)"
        }
        "session_validate" => {
            "sessions().validate of one of 1000 live tokens, shared by all callers (from memory once read)"
        }
        "ratelimit_check_strict" => {
            "limits().check of a strict limit, one of the caller's 64 subjects (bucket row written before it returns)"
        }
        "ratelimit_check_shared" => {
            "limits().check of a shared limit, one of the caller's 64 subjects (one upsert-returning transaction)"
        }
        "audit_append_durable" => {
            "audit().append_durable of one event (hash chain; committed with synchronous=FULL before it returns)"
        }
        "prefs_patch" => {
            "preferences().patch of one of the caller's 16 users, one field (read, merge, check, write, one commit)"
        }
        "cache_l2_get" => {
            "cache().get of one of the rows shared by all callers, L1 off (point read + zstd)"
        }
        _ => {
            "cache().set of a 1 KiB JSON value (written behind; the final flush counts in the run's time)"
        }
    }
}

/// What one rusqlite call of workload `name` does.
pub fn raw(name: &str) -> &'static str {
    match name {
        "session_create" => {
            "BEGIN IMMEDIATE; SELECT the user's live sessions; INSERT the session row; COMMIT"
        }
        "session_rotate" => {
            "BEGIN IMMEDIATE; SELECT the row by token hash; UPDATE its hashes; INSERT a changes row; COMMIT"
        }
        "session_revoke" => {
            "BEGIN IMMEDIATE; UPDATE … RETURNING token_hash by id; INSERT a changes row; COMMIT"
        }
        "session_validate" => {
            "the token's key (SHA-256, issue time), SELECT of the same 14 columns by the token-hash index"
        }
        "ratelimit_check_strict" => {
            "bucket refilled in the thread's memory; BEGIN IMMEDIATE; upsert its row; COMMIT"
        }
        "ratelimit_check_shared" => {
            "BEGIN IMMEDIATE; INSERT … ON CONFLICT DO UPDATE … RETURNING (refill in SQL); COMMIT"
        }
        "audit_append_durable" => {
            "synchronous=FULL; BEGIN IMMEDIATE; SELECT the chain's tip; INSERT the event with its SHA-256 digests; COMMIT"
        }
        "prefs_patch" => {
            "BEGIN IMMEDIATE; SELECT the document; JSON merge patch; upsert it; COMMIT (no type check)"
        }
        "cache_l2_get" => "SELECT value by key; zstd decompress (a context per thread)",
        _ => "zstd compress; BEGIN IMMEDIATE; upsert the row; COMMIT (each set committed)",
    }
}

/// A session as a hash: the fields statevault's row holds.
fn session_hash() -> Vec<String> {
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let at = "2026-11-29T08:00:00.000Z";
    [
        "HSET",
        "session:__rand_int__",
        "user_id",
        "user-__rand_int__",
        "token_hash",
        hex,
        "csrf_hash",
        hex,
        "client_meta",
        "{\"route\":\"/mcp\"}",
        "data",
        "{}",
        "created_at",
        at,
        "last_seen_at",
        at,
        "idle_timeout_secs",
        "43200",
        "expires_at",
        at,
        "rotation_due_at",
        at,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

/// The 1 KiB JSON value the cache roles set.
fn value() -> String {
    String::from_utf8_lossy(&crate::cache::json_value(0)).into_owned()
}

/// The command each request of workload `name`'s role sends.
fn command(name: &str, script: &str) -> Vec<String> {
    let hex = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    let at = "2026-11-29T08:00:00.000Z";
    match name {
        "session_create" => session_hash(),
        "session_rotate" => owned(&[
            "HSET",
            "session:__rand_int__",
            "token_hash",
            hex,
            "csrf_hash",
            hex,
            "rotation_due_at",
            at,
        ]),
        "session_revoke" => owned(&[
            "HSET",
            "session:__rand_int__",
            "revoked_at",
            at,
            "revoked_reason",
            "revoked",
        ]),
        "session_validate" => owned(&["HGETALL", "session:__rand_int__"]),
        "ratelimit_check_strict" | "ratelimit_check_shared" => {
            let rate = (crate::limits::PLENTY / 3_600_000.0).to_string();
            let cap = crate::limits::PLENTY.to_string();
            owned(&[
                "EVALSHA",
                script,
                "1",
                "bucket:user-__rand_int__",
                &rate,
                &cap,
                "1",
            ])
        }
        "audit_append_durable" => owned(&[
            "XADD",
            "audit",
            "*",
            "kind",
            "api_call",
            "action",
            "search",
            "user_id",
            "user-__rand_int__",
            "resource_type",
            "query",
            "resource_id",
            "__rand_int__",
            "details",
            "{\"status\":200,\"ms\":12}",
        ]),
        "prefs_patch" => owned(&["HSET", "prefs:user-__rand_int__", "audio_quality", "LOW"]),
        "cache_l2_get" => owned(&["GET", "cache:__rand_int__"]),
        _ => owned(&["SET", "cache:__rand_int__", &value()]),
    }
}

/// A workload's Redis role.
pub struct Role {
    /// The command each request sends (`__rand_int__` is redis-benchmark's
    /// random number below `keyspace`).
    command: Vec<String>,
    keyspace: u64,
    /// Run first, pipelined, so that the keys the command reads exist.
    populate: Option<Vec<String>>,
    /// Whether the role also runs against the fsync-always server (the
    /// workloads statevault commits before returning).
    pub durable: bool,
}

impl Role {
    /// Workload `name`'s role; `script` is the token bucket's SHA-1.
    pub fn of(name: &str, script: &str) -> Role {
        let (keyspace, populate) = match name {
            "session_create" => (100_000_000, None),
            "session_rotate" | "session_revoke" => (10_000, Some(session_hash())),
            "session_validate" => (1_000, Some(session_hash())),
            "audit_append_durable" => (100, None),
            "cache_l2_get" => (
                10_000,
                Some(owned(&["SET", "cache:__rand_int__", &value()])),
            ),
            "cache_set" => (10_000, None),
            _ => (1_000, None),
        };
        Role {
            command: command(name, script),
            keyspace,
            populate,
            durable: !matches!(name, "session_validate" | "cache_l2_get" | "cache_set"),
        }
    }

    /// Writes the keys the role reads, if it reads any.
    pub fn populate(&self, server: &Server) -> Result<()> {
        match &self.populate {
            Some(command) => server.populate(command, self.keyspace),
            None => Ok(()),
        }
    }

    /// The role at `clients` connections for about `run` on `server`, or
    /// why not.
    pub fn measure(
        &self,
        server: std::result::Result<&Server, &str>,
        clients: usize,
        run: Duration,
    ) -> Peer {
        let server = match server {
            Ok(server) => server,
            Err(why) => return Peer::skipped(why),
        };
        match server.measure(clients, self.keyspace, &self.command, run) {
            Ok(figures) => Peer::Measured(figures),
            Err(e) => {
                eprintln!("*** SKIPPED: a Redis figure: {e} ***");
                Peer::skipped(format!("failed: {e}"))
            }
        }
    }

    /// The command line, for the report.
    pub fn shown(&self) -> String {
        super::redis::shown("N", self.keyspace, &self.command)
    }
}

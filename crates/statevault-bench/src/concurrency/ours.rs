//! statevault's side: each workload's call through the public API, made by
//! N tokio tasks sharing one vault.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statevault::{
    AuditEvent, CacheKey, ClientInfo, Error, EventKind, NewSession, Result, Vault, VaultOptions,
};

use super::drive::{self, Figures};
use crate::sessions::pick;

/// What a caller does on each call, with the rows it was given.
pub enum Work {
    /// Creates a session for a user of its own (no eviction).
    Create,
    /// Rotates its sessions' tokens in turn, keeping each new token.
    Rotate(Vec<String>),
    /// Revokes its sessions, one per call, by id.
    Revoke(Vec<String>),
    /// Validates live tokens shared by every caller, in a scattered order.
    Validate(Arc<[String]>),
    /// Checks limit `bench` for its subjects in turn (strict or shared, as
    /// the vault's limits configure it).
    Check(Vec<String>),
    /// Appends an audit event durably.
    AppendDurable,
    /// Patches its users' preferences in turn, switching one field.
    Patch(Vec<String>),
    /// Gets cache entries shared by every caller (from L2: L1 is off).
    Get(Arc<[CacheKey]>),
    /// Sets cache entries (written behind).
    Set(Arc<[CacheKey]>, Arc<[Vec<u8>]>),
}

/// One task's vault handle and work.
pub struct Caller {
    vault: Vault,
    id: usize,
    work: Work,
}

impl Caller {
    /// Makes call number `i` of this caller.
    pub async fn call(&mut self, i: u64) -> Result<()> {
        let (vault, id) = (&self.vault, self.id);
        let n = usize::try_from(i).unwrap_or(usize::MAX);
        match &mut self.work {
            Work::Create => {
                let new = NewSession::new(format!("user-{id}-{i}")).client_meta("route", "/mcp");
                vault.sessions().create(new).await?;
            }
            Work::Rotate(tokens) => {
                let k = n % tokens.len();
                let issued = vault.sessions().rotate(&tokens[k], None).await?;
                tokens[k] = issued.token.expose().to_owned();
            }
            Work::Revoke(ids) => {
                let id = ids.get(n).ok_or_else(|| unexpected("no session left"))?;
                if !vault.sessions().revoke(id).await? {
                    return Err(unexpected("a live session was not revoked"));
                }
            }
            Work::Validate(tokens) => {
                let token = &tokens[pick(i + id as u64 * 7, tokens.len())];
                if vault
                    .sessions()
                    .validate(token, None)
                    .await?
                    .valid()
                    .is_none()
                {
                    return Err(unexpected("a live session failed validation"));
                }
            }
            Work::Check(subjects) => {
                let subject = &subjects[n % subjects.len()];
                let client = ClientInfo::none();
                if !vault
                    .limits()
                    .check(subject, "bench", 1, &client)
                    .await?
                    .allowed
                {
                    return Err(unexpected("a check was refused"));
                }
            }
            Work::AppendDurable => {
                vault.audit().append_durable(event(i)).await?;
            }
            Work::Patch(users) => {
                let patch =
                    json!({"audio_quality": if i.is_multiple_of(2) { "LOW" } else { "HIGH" }});
                vault
                    .preferences()
                    .patch(&users[n % users.len()], &patch)
                    .await?;
            }
            Work::Get(keys) => {
                let key = &keys[pick(i + id as u64 * 7, keys.len())];
                vault
                    .cache()
                    .get(key)
                    .await?
                    .ok_or_else(|| unexpected("a miss"))?;
            }
            Work::Set(keys, values) => {
                let key = &keys[pick(i + id as u64 * 7, keys.len())];
                vault.cache().set(key, &values[n % values.len()]).await?;
            }
        }
        Ok(())
    }
}

/// The audit event of call `i`, as `audit_append` appends.
pub fn event(i: u64) -> AuditEvent {
    AuditEvent::new(EventKind::ApiCall, "search")
        .user(format!("user-{}", i % 100))
        .resource("query", i.to_string())
        .details(event_details())
}

pub fn event_details() -> Value {
    json!({"status": 200, "ms": 12})
}

fn unexpected(what: &str) -> Error {
    Error::InvalidInput {
        what: "bench",
        reason: what.into(),
    }
}

/// Opens the vault, runs one caller per element of `works` for `run` (or
/// `limit` calls each), closes it. Written-behind sets count the flush
/// that writes what they left: the run lasts until it is done.
pub async fn run(
    options: VaultOptions,
    works: Vec<Work>,
    run: Duration,
    limit: u64,
) -> Result<Figures> {
    let vault = Vault::open(options).await?;
    let writes_behind = matches!(works.first(), Some(Work::Set(..)));
    let callers = works
        .into_iter()
        .enumerate()
        .map(|(id, work)| Caller {
            vault: vault.clone(),
            id,
            work,
        })
        .collect();
    let before = vault.write_counts();
    let (callers, mut figures) = drive::tasks(callers, run, limit).await?;
    drop(callers);
    let after = vault.write_counts();
    let commits = after.commits - before.commits;
    if commits > 0 {
        let writes = (after.writes - before.writes) as f64;
        figures.writes_per_commit = Some((writes / commits as f64 * 100.0).round() / 100.0);
    }
    if writes_behind {
        let started = Instant::now();
        vault.flush().await?;
        figures = figures.stretched(started.elapsed());
    }
    vault.close().await?;
    Ok(figures)
}

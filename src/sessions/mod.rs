//! Sessions: opaque bearer tokens, device binding, idle and absolute
//! expiry, rotation, revocation, a per-user cap, CSRF tokens, and typed
//! session data.
//!
//! # Guarantees
//!
//! 1. **A copy of the file is not a copy of the sessions.** A token is its
//!    issue time (48 bits) and 256 random bits, returned once by
//!    [`Sessions::create`]; the table keeps only that time and its SHA-256
//!    (`token_hash`: the time, then 208 bits of the hash, so that sessions
//!    made together sit together in the index and a sweep rewrites few of
//!    its pages), and the CSRF token's SHA-256. A token an older version
//!    issued (64 hex digits) is kept under its whole SHA-256. Device
//!    fingerprints, IPs and user agents are stored as keyed hashes
//!    ([`crate::Vault::keyed_hash`]).
//! 2. **Validation is a read.** [`Sessions::validate`] looks the token hash
//!    up on the caller's thread (a rusqlite reader, no thread hop) or, for
//!    a session validated in the last [`SessionConfig::memory_ttl`], in
//!    memory. It writes nothing: the last-seen time goes to a buffer that
//!    the vault flushes every `flush_interval` as one multi-row `UPDATE`.
//! 3. **Idle expiry is exact in this process**: validation compares with the
//!    newest of the file's last-seen time and the buffered one. Another
//!    process sees this one's activity once it is flushed, so across
//!    processes idle expiry can be late by at most one flush interval.
//! 4. **Revocation and rotation take effect at once in this process**: they
//!    commit before returning and drop the session from memory. An epoch
//!    counter keeps a validation that read the file before the change from
//!    putting the old row back. Another process sees them within its
//!    `memory_ttl` (default 1 s).
//! 5. **The cap holds under concurrency.** Creation counts the user's live
//!    sessions and inserts in one `BEGIN IMMEDIATE` transaction, which
//!    serialises creators in every process; on PostgreSQL, in one
//!    transaction holding a lock on the user's `session_users` row, which
//!    serialises one user's creators in every instance.
//!
//! # Layout
//!
//! This file holds the [`Sessions`] handle and its decisions (expiry, the
//! cap); `lookup.rs` how `validate` finds a token and what refuses it;
//! `config.rs`, `types.rs` and `state.rs` its
//! settings, values and memory; `backend.rs` the storage contract,
//! `sqlite.rs` and `postgres.rs` every statement of each backend and
//! `storage.rs` the enum that picks one; `tower.rs` the rows of the tower-sessions
//! store.

mod backend;
mod config;
mod lookup;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{
    SEALED, check_sealed, erase_user as erase_user_pg, export_user as export_user_pg,
};
mod sqlite;
pub(crate) use sqlite::export_user as export_user_in_file;
mod state;
mod storage;
#[cfg(feature = "tower-sessions")]
mod tower;
mod types;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::clock::Timestamp;
use crate::core::{Core, Storage, lock};
use crate::ids::check_user;
use crate::{Error, Result};
#[cfg(feature = "tower-sessions")]
pub(crate) use backend::TowerRecord;
use backend::{Candidate, NewRow, Regenerated, SessionsBackend as _, Tokens};
use config::check_lifetime;
pub use config::{MAX_SESSION_MEMORY_ENTRIES, SessionConfig, WhenFull};
pub(crate) use state::State;
use storage::Backend;
pub use types::{
    ExpiryReason, ExportedSession, IssuedSession, NewSession, Secret, Session, Validation,
};
pub(crate) use types::{ImportedSession, SessionImport, sha256, token_key};

/// The sessions facet of a vault; from [`Vault::sessions`](crate::Vault::sessions).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use statevault::{NewSession, Validation, Vault, VaultOptions};
///
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// let issued = vault.sessions().create(NewSession::new("alice")).await?;
///
/// // On every request:
/// match vault.sessions().validate(issued.token.expose(), None).await? {
///     Validation::Valid(session) => assert_eq!(session.user_id, "alice"),
///     other => panic!("401: {other:?}"),
/// }
/// vault.sessions().revoke(&issued.id).await?;
/// assert!(matches!(
///     vault.sessions().validate(issued.token.expose(), None).await?,
///     Validation::Revoked { .. }
/// ));
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Sessions<'a> {
    core: &'a Core,
    pub(crate) state: &'a State,
}

/// The refusal of a rotation or regeneration that lost a race.
const CONCURRENT: Error = Error::SessionNotValid {
    reason: "rotated or revoked concurrently",
};

impl<'a> Sessions<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a State) -> Self {
        Sessions { core, state }
    }

    fn backend(&self) -> Backend<'a> {
        Backend::of(self.core)
    }

    /// Creates a session and returns its token and CSRF token, once.
    ///
    /// If the user already has `max_per_user` live sessions, the oldest are
    /// revoked ([`WhenFull::EvictOldest`]) or the call fails with
    /// [`Error::SessionLimit`] ([`WhenFull::Refuse`]).
    #[tracing::instrument(name = "sessions.create", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = %new.user_id))]
    pub async fn create(&self, new: NewSession) -> Result<IssuedSession> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let config = &self.state.config;
                self.check_new(&new.user_id, &new.data)?;
                let idle = new.idle_timeout.unwrap_or(config.idle_timeout);
                let lifetime = new.absolute_lifetime.unwrap_or(config.absolute_lifetime);
                check_lifetime("idle_timeout", idle)?;
                check_lifetime("absolute_lifetime", lifetime)?;
                let client_meta = serde_json::Value::Object(new.client_meta).to_string();
                let now = self.core.now();
                let (token, csrf) = (Secret::token(now)?, Secret::generate()?);
                let id = uuid::Uuid::now_v7().to_string();
                let row = NewRow {
                    id: &id,
                    token_hash: token_key(token.expose()),
                    csrf_hash: sha256(csrf.expose().as_bytes()),
                    user_id: &new.user_id,
                    org_id: new.org_id.as_deref(),
                    device_fingerprint: self.keyed("device_fingerprint", &new.fingerprint)?,
                    ip_hash: self.keyed("ip", &new.ip)?,
                    user_agent_hash: self.keyed("user_agent", &new.user_agent)?,
                    client_meta: &client_meta,
                    data: &new.data,
                    created_at: now,
                    idle_timeout: idle,
                    expires_at: now.saturating_add(lifetime),
                    rotation_due_at: now.saturating_add(config.rotation_interval),
                };
                let evicted = self
                    .backend()
                    .create(&row, |candidates| {
                        self.make_room(candidates, &new.user_id, now)
                    })
                    .await?;
                let expires_at = row.expires_at;
                self.state
                    .forget(&evicted.iter().map(|c| c.token_hash).collect::<Vec<_>>());
                Ok(IssuedSession {
                    id,
                    token,
                    csrf_token: csrf,
                    expires_at,
                    evicted: evicted.into_iter().map(|c| c.id).collect(),
                })
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Checks a new session's user id and data (its size against
    /// `max_data_bytes`).
    fn check_new(&self, user_id: &str, data: &str) -> Result<()> {
        check_user(user_id)?;
        crate::json::check_text(
            "data",
            data,
            self.state.config.max_data_bytes,
            "max_data_bytes",
        )
    }

    /// The keyed hash of an identifying value, if there is one.
    fn keyed(&self, domain: &str, value: &Option<Zeroizing<String>>) -> Result<Option<[u8; 32]>> {
        value
            .as_ref()
            .map(|v| self.core.keyed_hash(domain, v.as_bytes()))
            .transpose()
    }

    /// Within an import transaction: creates a session whose bearer token
    /// is the legacy credential (hashed like every token), with a fresh
    /// CSRF token nobody holds (a rotation issues one) and rotation due at
    /// once, so that the first request trades the legacy credential for a
    /// statevault token. Respects the per-user cap like [`Sessions::create`].
    pub(crate) async fn import(
        &self,
        tx: &mut sqlx::SqliteConnection,
        session: ImportedSession,
    ) -> Result<SessionImport> {
        let config = &self.state.config;
        self.check_new(&session.user_id, &session.data)?;
        let now = self.core.now();
        let expires_at = session
            .expires_at
            .unwrap_or_else(|| now.saturating_add(config.absolute_lifetime));
        check_lifetime("absolute_lifetime", expires_at.duration_since(now))?;
        let device_fingerprint = self.keyed("device_fingerprint", &session.device_fingerprint)?;
        let token_hash = token_key(&session.token);
        if sqlite::token_taken(tx, &token_hash).await? {
            return Ok(SessionImport::TokenTaken);
        }
        let user_id = &session.user_id;
        let evicted = sqlite::make_room_in(tx, user_id, now, |candidates| {
            self.make_room(candidates, user_id, now)
        })
        .await?;
        let id = uuid::Uuid::now_v7().to_string();
        let row = NewRow {
            id: &id,
            token_hash,
            csrf_hash: sha256(Secret::generate()?.expose().as_bytes()),
            user_id,
            org_id: None,
            device_fingerprint,
            ip_hash: None,
            user_agent_hash: None,
            client_meta: "{}",
            data: &session.data,
            created_at: now,
            idle_timeout: config.idle_timeout,
            expires_at,
            rotation_due_at: now,
        };
        sqlite::insert(tx, &row).await?;
        Ok(SessionImport::Created {
            id,
            expires_at,
            evicted: evicted.into_iter().map(|c| c.token_hash).collect(),
        })
    }

    /// Within the creating transaction: picks the oldest live sessions to
    /// revoke so that one more fits, or refuses. A candidate is live if its
    /// idle timeout has not passed since it was last seen, in the file or
    /// in this process's buffer.
    fn make_room(
        &self,
        candidates: Vec<Candidate>,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<Candidate>> {
        let live: Vec<_> = {
            let touches = lock(&self.state.touches);
            candidates
                .into_iter()
                .filter(|c| {
                    let last_seen = touches
                        .get(&c.id)
                        .map_or(c.last_seen, |t| c.last_seen.max(*t));
                    last_seen.saturating_add(c.idle_timeout) > now
                })
                .collect()
        };
        let max = self.state.config.max_per_user;
        if live.len() < max {
            return Ok(Vec::new());
        }
        if self.state.config.when_full == WhenFull::Refuse {
            return Err(Error::SessionLimit {
                user_id: user_id.to_owned(),
                max,
            });
        }
        let excess = live.len() + 1 - max;
        Ok(live.into_iter().take(excess).collect())
    }

    /// Checks a bearer token (and the device, if the session is bound to one).
    ///
    /// Runs on the caller's thread and writes nothing; the last-seen time is
    /// buffered (see the module docs). `Err` means the vault could not
    /// answer (closed, I/O); every answer about the token is a [`Validation`].
    pub async fn validate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<Validation> {
        let validate = async {
            let hash = token_key(token);
            let now = self.core.now();
            let Some(row) = self.row(&hash, now).await? else {
                return Ok(Validation::Unknown);
            };
            if let Some(refusal) = self.refusal(&row, now, device_fingerprint)? {
                return Ok(refusal);
            }
            row.seen_at(now);
            lock(&self.state.touches).insert(row.id.clone(), now);
            Ok(Validation::Valid(row.session(now)))
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            let span = tracing::trace_span!("sessions.validate", outcome = tracing::field::Empty);
            return Box::pin(crate::trace::traced(span, validate, Validation::outcome)).await;
        }
        validate.await
    }

    /// Issues a new token (and CSRF token) for a live session: the old token
    /// is dead when this returns; id, data and lifetimes carry over, and the
    /// next rotation is due `rotation_interval` from now.
    #[tracing::instrument(name = "sessions.rotate", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn rotate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<IssuedSession> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let session = self.require_valid(token, device_fingerprint).await?;
                let now = self.core.now();
                let (new_token, csrf) = (Secret::token(now)?, Secret::generate()?);
                let old_hash = token_key(token);
                let rotation_due_at = now.saturating_add(self.state.config.rotation_interval);
                let tokens = Tokens::of(&new_token, &csrf);
                if !self
                    .backend()
                    .rotate(&old_hash, &tokens, rotation_due_at)
                    .await?
                {
                    return Err(CONCURRENT);
                }
                self.state.forget(&[old_hash]);
                Ok(IssuedSession {
                    id: session.id,
                    token: new_token,
                    csrf_token: csrf,
                    expires_at: session.expires_at,
                    evicted: Vec::new(),
                })
            }
            .await,
            crate::trace::ok,
        )
    }

    /// After a login (or any change of privilege): a new session id and new
    /// tokens, with the same user and data and fresh lifetimes; the old
    /// session is revoked (`regenerated`). Defeats session fixation.
    #[tracing::instrument(name = "sessions.regenerate", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn regenerate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<IssuedSession> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let session = self.require_valid(token, device_fingerprint).await?;
                let now = self.core.now();
                let (new_token, csrf) = (Secret::token(now)?, Secret::generate()?);
                let id = uuid::Uuid::now_v7().to_string();
                let old_hash = token_key(token);
                let lifetime = session.expires_at.duration_since(session.created_at);
                let new = Regenerated {
                    id: &id,
                    tokens: Tokens::of(&new_token, &csrf),
                    created_at: now,
                    expires_at: now.saturating_add(lifetime),
                    rotation_due_at: now.saturating_add(self.state.config.rotation_interval),
                };
                if !self
                    .backend()
                    .regenerate(&old_hash, &session.id, &new)
                    .await?
                {
                    return Err(CONCURRENT);
                }
                self.state.forget(&[old_hash]);
                let expires_at = new.expires_at;
                Ok(IssuedSession {
                    id,
                    token: new_token,
                    csrf_token: csrf,
                    expires_at,
                    evicted: Vec::new(),
                })
            }
            .await,
            crate::trace::ok,
        )
    }

    async fn require_valid(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<Session> {
        match self.validate(token, device_fingerprint).await? {
            Validation::Valid(session) => Ok(session),
            other => Err(Error::SessionNotValid {
                reason: other.refusal(),
            }),
        }
    }

    /// Replaces a live session's data. Takes effect at once in this process.
    #[tracing::instrument(name = "sessions.set_data", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn set_data<T: Serialize + ?Sized>(&self, token: &str, data: &T) -> Result<()> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let json = serde_json::to_string(data)?;
                let max = self.state.config.max_data_bytes;
                crate::json::check_text("data", &json, max, "max_data_bytes")?;
                let hash = token_key(token);
                let found = self.backend().set_data(&hash, &json).await?;
                self.state.forget(&[hash]);
                if !found {
                    return Err(Error::SessionNotValid {
                        reason: "unknown token",
                    });
                }
                Ok(())
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Revokes one session by its public id. Returns whether it was live.
    #[tracing::instrument(name = "sessions.revoke", level = "debug", skip_all, fields(outcome = tracing::field::Empty, session_id = session_id))]
    pub async fn revoke(&self, session_id: &str) -> Result<bool> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let hashes = self.backend().revoke(session_id, self.core.now()).await?;
                self.state.forget(&hashes);
                Ok(!hashes.is_empty())
            }
            .await,
            |live| if *live { "revoked" } else { "not_live" },
        )
    }

    /// Revokes every session of a user ("log out everywhere"). Returns how many.
    #[tracing::instrument(name = "sessions.revoke_user", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn revoke_user(&self, user_id: &str) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_user(user_id)?;
                let hashes = self.backend().revoke_user(user_id, self.core.now()).await?;
                self.state.forget(&hashes);
                Ok(hashes.len() as u64)
            }
            .await,
            crate::trace::ok,
        )
    }

    /// A user's live sessions (not revoked, not expired), oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>> {
        check_user(user_id)?;
        let now = self.core.now();
        let rows = self.backend().unrevoked_of_user(user_id, now).await?;
        let touches = lock(&self.state.touches).clone();
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                if let Some(t) = touches.get(&row.id) {
                    row.seen_at(*t);
                }
                (now < row.idle_expires_at()).then(|| row.session(now))
            })
            .collect())
    }

    /// Within the whole-user erase transaction: deletes the user's sessions
    /// and publishes their tokens to the change feed, returning their token
    /// hashes (to forget once committed).
    pub(crate) async fn erase_user(
        &self,
        tx: &mut sqlx::SqliteConnection,
        user_id: &str,
    ) -> Result<Vec<[u8; 32]>> {
        sqlite::erase_user(self.core, tx, user_id).await
    }

    /// How many sessions are live now (not revoked, not past their absolute
    /// expiry or their idle timeout, as last written), for metrics. Revoked
    /// and expired rows, kept until the retention sweep, cost it nothing.
    pub(crate) async fn count_live(&self) -> Result<u64> {
        self.backend().count_live(self.core.now()).await
    }

    /// Drops sessions whose rows are gone from memory; call after commit.
    pub(crate) fn forget(&self, hashes: &[[u8; 32]]) {
        self.state.forget(hashes);
    }

    /// Writes the buffered last-seen times in one transaction. On failure
    /// they stay buffered.
    pub(crate) async fn flush(&self) -> Result<()> {
        let touches = std::mem::take(&mut *lock(&self.state.touches));
        if touches.is_empty() {
            return Ok(());
        }
        let result = self.backend().write_last_seen(&touches).await;
        if result.is_err() {
            let mut pending = lock(&self.state.touches);
            for (id, at) in touches {
                let slot = pending.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }

    /// Deletes sessions unused for longer than `retention` (revoked or not),
    /// at most `batch` rows per transaction so that writers never wait long,
    /// with the writer's page cache and checkpoints set up for a sweep
    /// meanwhile (see `store/bulk.rs`). Writes buffered last-seen times
    /// first. Returns how many went.
    #[tracing::instrument(name = "sessions.sweep", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn sweep(&self, batch: usize) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                if batch == 0 {
                    return Err(Error::invalid("batch", "must be at least 1"));
                }
                self.flush().await?;
                let cutoff = self.core.now().saturating_sub(self.state.config.retention);
                let delete = async {
                    let mut removed = 0;
                    loop {
                        let hashes = self.backend().delete_idle(cutoff, batch).await?;
                        self.state.forget(&hashes);
                        removed += hashes.len() as u64;
                        if hashes.len() < batch {
                            return Ok(removed);
                        }
                    }
                };
                match self.core.storage() {
                    Storage::File(store) => store.sweeping(delete).await,
                    #[cfg(feature = "postgres")]
                    Storage::Postgres(_) => delete.await,
                }
            }
            .await,
            crate::trace::ok,
        )
    }
}

impl Tokens {
    /// The hashes of a new bearer token and CSRF token.
    fn of(token: &Secret, csrf: &Secret) -> Tokens {
        Tokens {
            token_hash: token_key(token.expose()),
            csrf_hash: sha256(csrf.expose().as_bytes()),
        }
    }
}

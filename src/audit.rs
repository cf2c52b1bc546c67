//! The audit log: append-only, hash-chained, and still verifiable after GDPR
//! erasure and retention.
//!
//! # The chain
//!
//! Each event has a sequence number `seq` (1, 2, 3 …, no gaps), a
//! `content_digest` = SHA-256 over its content (every column but the digests
//! and `erased_at`, length-prefixed), and a `chain_digest` =
//! SHA-256(`"statevault-audit-v1"` ‖ previous chain digest ‖ `seq` ‖
//! `content_digest`). The chain starts from 32 zero bytes, or from the anchor
//! that retention left (below).
//!
//! [`Audit::verify`] walks the events in `seq` order and names the first
//! broken link. It catches a changed field (the content digest no longer
//! matches), a deleted row (a gap in `seq`), reordered or re-digested rows (the
//! chain digest no longer matches), rows cut from the end (the head recorded
//! in `vault_meta` no longer matches), and rows cut from the start (the anchor
//! no longer matches).
//!
//! # Erasure keeps the chain
//!
//! Erasing a user clears the content of their events (user, session,
//! resource, details, IP and user-agent hashes) and sets `erased_at`. Both
//! digests stay, so the chain still links. For an erased row the content
//! digest cannot be recomputed, so the tombstone must be protected another
//! way: the same transaction appends an `admin`/`erasure` event whose details
//! list the erased sequence numbers (and nothing about the user). `verify`
//! accepts an erased row only if a later erasure event names it, so wiping a
//! row's content and setting `erased_at` by hand is detected.
//!
//! # Retention keeps the chain
//!
//! Retention deletes events from the start of the log in small batches. It
//! records the last deleted event's `seq` and chain digest as the anchor, in
//! `vault_meta` (`audit_anchor`) and in an `admin`/`retention` event appended in
//! the same transaction. `verify` starts from the anchor and checks that the
//! newest retention event names it.
//!
//! # What this does and does not prove
//!
//! The digests are not keyed. Someone who can write the file and recompute
//! every digest after the row they change (and the recorded head) is not
//! caught by any chain kept inside that file. Copy
//! [`ChainReport::head_digest`] somewhere else now and then, and later
//! compare it with the file.
//!
//! # Writes
//!
//! [`Audit::append`] buffers the event (the id is returned at once). The
//! vault's flusher writes buffered events in one transaction, as multi-row
//! inserts (group commit). [`Audit::append_durable`] waits for that commit,
//! made with `synchronous=FULL`, so the event survives a power cut. A batch
//! that fails is rolled back whole: its plain events stay buffered for the
//! next flush, and each durable one is handed back to its caller as the
//! error, never written later. A whole-user erasure writes the buffer in its
//! own transaction and answers durable callers only once that commits.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Row as _, SqliteConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::clock::Timestamp;
use crate::core::{Core, lock, meta};
use crate::{Error, Result};

/// The columns [`stored_event`] reads.
macro_rules! event_columns {
    () => {
        "seq, id, occurred_at, user_id, session_id, kind, action, resource_type, resource_id, details, \
         gdpr_category, erased_at"
    };
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request to the service's API.
    ApiCall,
    /// Login, logout, token refresh, failed authentication.
    Auth,
    /// Reading or exporting someone's data.
    DataAccess,
    /// Something failed.
    Error,
    /// Consent given or withdrawn.
    Consent,
    /// An operator's action (erasure, retention, key rotation …).
    Admin,
}

/// Why the event may be kept (GDPR lawful basis, roughly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GdprCategory {
    /// Needed to provide the service.
    Necessary,
    /// Usage analytics.
    Analytics,
    /// Marketing.
    Marketing,
    /// The user's preferences.
    Preferences,
}

fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An event to append.
///
/// ```
/// use statevault::{AuditEvent, EventKind, GdprCategory};
///
/// let event = AuditEvent::new(EventKind::DataAccess, "playlist.read")
///     .user("alice")
///     .resource("playlist", "pl-42")
///     .details(serde_json::json!({"tracks": 12}))
///     .category(GdprCategory::Necessary)
///     .client_ip("203.0.113.7");
/// ```
#[derive(Clone)]
pub struct AuditEvent {
    kind: EventKind,
    action: String,
    user_id: Option<String>,
    session_id: Option<String>,
    resource: Option<(String, String)>,
    details: serde_json::Value,
    category: GdprCategory,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl AuditEvent {
    /// An event of `kind`, named `action` (`"login"`, `"playlist.update"` …),
    /// category [`GdprCategory::Necessary`].
    pub fn new(kind: EventKind, action: impl Into<String>) -> Self {
        AuditEvent {
            kind,
            action: action.into(),
            user_id: None,
            session_id: None,
            resource: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
            category: GdprCategory::Necessary,
            ip: None,
            user_agent: None,
        }
    }

    /// Who did it.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// In which session (its public id).
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// To what.
    pub fn resource(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.resource = Some((kind.into(), id.into()));
        self
    }

    /// Anything else, as JSON.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The GDPR category.
    pub fn category(mut self, category: GdprCategory) -> Self {
        self.category = category;
        self
    }

    /// The client's IP, stored as a keyed hash.
    pub fn client_ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// The client's user agent, stored as a keyed hash.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("kind", &self.kind)
            .field("action", &self.action)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// An event as the log has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the chain.
    pub seq: i64,
    /// uuid v7.
    pub id: String,
    /// When it was appended (the vault's clock).
    pub occurred_at: Timestamp,
    /// Who (cleared by erasure).
    pub user_id: Option<String>,
    /// In which session (cleared by erasure).
    pub session_id: Option<String>,
    /// `api_call`, `auth`, `data_access`, `error`, `consent`, `admin`.
    pub kind: String,
    /// What.
    pub action: String,
    /// To what kind of thing (cleared by erasure).
    pub resource_type: Option<String>,
    /// To which one (cleared by erasure).
    pub resource_id: Option<String>,
    /// Details (`{}` after erasure).
    pub details: serde_json::Value,
    /// `necessary`, `analytics`, `marketing`, `preferences`.
    pub gdpr_category: String,
    /// When its content was erased.
    pub erased_at: Option<Timestamp>,
}

/// A filter for [`Audit::query`]; every part is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this user's events.
    pub user_id: Option<String>,
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
    /// At most this many, newest first (default 100, at most 100 000).
    pub limit: Option<u32>,
}

/// What [`Audit::verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// Of which erased.
    pub erased: u64,
    /// The first `seq` checked (after the anchor).
    pub first_seq: Option<i64>,
    /// The last `seq` checked.
    pub last_seq: Option<i64>,
    /// The chain digest of the last event (hex): keep a copy elsewhere.
    pub head_digest: Option<String>,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenLink {
    /// The `seq` at which it breaks (or where a missing event should be).
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

/// Buffered, not yet written: the event, its digest inputs, and who waits.
struct Pending {
    content: Content,
    waiter: Option<oneshot::Sender<Result<(), String>>>,
}

/// Buffered events taken for one transaction ([`Audit::take_batch`]).
pub(crate) struct Batch {
    events: Vec<Pending>,
}

impl Batch {
    /// Whether a caller waits for the batch to be on disk.
    pub(crate) fn durable(&self) -> bool {
        self.events.iter().any(|p| p.waiter.is_some())
    }

    /// Appends the events to the chain inside `tx`.
    async fn insert(&self, tx: &mut SqliteConnection) -> Result<()> {
        let contents: Vec<&Content> = self.events.iter().map(|p| &p.content).collect();
        insert_chained(tx, &contents).await
    }
}

/// The hashed content of an event, in column order.
#[derive(Clone)]
struct Content {
    id: String,
    occurred_at: Timestamp,
    user_id: Option<String>,
    session_id: Option<String>,
    kind: String,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    details: String,
    gdpr_category: String,
    ip_hash: Option<Vec<u8>>,
    user_agent_hash: Option<Vec<u8>>,
}

impl Content {
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |value: Option<&[u8]>| match value {
            None => h.update([0u8]),
            Some(bytes) => {
                h.update([1u8]);
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(bytes);
            }
        };
        let occurred_at = self.occurred_at.to_rfc3339();
        field(Some(self.id.as_bytes()));
        field(Some(occurred_at.as_bytes()));
        field(self.user_id.as_deref().map(str::as_bytes));
        field(self.session_id.as_deref().map(str::as_bytes));
        field(Some(self.kind.as_bytes()));
        field(Some(self.action.as_bytes()));
        field(self.resource_type.as_deref().map(str::as_bytes));
        field(self.resource_id.as_deref().map(str::as_bytes));
        field(Some(self.details.as_bytes()));
        field(Some(self.gdpr_category.as_bytes()));
        field(self.ip_hash.as_deref());
        field(self.user_agent_hash.as_deref());
        h.finalize().into()
    }
}

fn chain(prev: &[u8; 32], seq: i64, content_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"statevault-audit-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(content_digest);
    h.finalize().into()
}

/// Retention for the audit log.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditConfig {
    /// [`Audit::sweep`] deletes events older than this (default 90 days).
    pub retention: std::time::Duration,
    /// The largest `details` JSON (default 64 KiB).
    pub max_details_bytes: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: std::time::Duration::from_secs(90 * 24 * 3600),
            max_details_bytes: 64 << 10,
        }
    }
}

impl AuditConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.retention < std::time::Duration::from_secs(3600) {
            return Err(Error::invalid("audit.retention", "shorter than an hour"));
        }
        if self.max_details_bytes > 16 << 20 {
            return Err(Error::invalid(
                "audit.max_details_bytes",
                "more than 16 MiB",
            ));
        }
        Ok(())
    }
}

/// The audit facet's state in the vault.
pub(crate) struct State {
    config: AuditConfig,
    pending: Mutex<Vec<Pending>>,
    /// Held while a batch is written, so batches commit in the order they
    /// were taken and `seq` follows append order.
    writing: tokio::sync::Mutex<()>,
}

impl State {
    pub(crate) fn new(config: AuditConfig) -> State {
        State {
            config,
            pending: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
        }
    }
}

/// The audit facet of a vault; from [`Vault::audit`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use statevault::{AuditEvent, EventKind, Vault, VaultOptions};
///
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// vault.audit().append(AuditEvent::new(EventKind::Auth, "login").user("alice"))?;
/// vault.audit().append_durable(AuditEvent::new(EventKind::Admin, "key.rotate")).await?;
/// assert!(vault.audit().verify().await?.ok);
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Audit<'a> {
    core: &'a Core,
    state: &'a State,
}

impl<'a> Audit<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a State) -> Self {
        Audit { core, state }
    }

    fn content(&self, event: AuditEvent) -> Result<Content> {
        if event.action.is_empty() || event.action.len() > 256 {
            return Err(Error::invalid("action", "must be 1 to 256 bytes"));
        }
        if let Some(user) = &event.user_id {
            crate::ids::check_user(user)?;
        }
        let details = serde_json::to_string(&event.details)?;
        let max = self.state.config.max_details_bytes;
        crate::json::check_text("details", &details, max, "max_details_bytes")?;
        let hash = |domain, value: Option<String>| {
            value
                .map(|v| {
                    self.core
                        .keyed_hash(domain, v.as_bytes())
                        .map(|h| h.to_vec())
                })
                .transpose()
        };
        let (resource_type, resource_id) = event.resource.unzip();
        Ok(Content {
            id: Uuid::now_v7().to_string(),
            occurred_at: self.core.now(),
            user_id: event.user_id,
            session_id: event.session_id,
            kind: name(&event.kind),
            action: event.action,
            resource_type,
            resource_id,
            details,
            gdpr_category: name(&event.category),
            ip_hash: hash("ip", event.ip)?,
            user_agent_hash: hash("user_agent", event.user_agent)?,
        })
    }

    /// Buffers an event; the vault writes it within one flush interval.
    /// Returns its id. A crash before the flush loses it.
    pub fn append(&self, event: AuditEvent) -> Result<Uuid> {
        let content = self.content(event)?;
        let id = Uuid::parse_str(&content.id).map_err(|e| Error::invalid("id", e.to_string()))?;
        lock(&self.state.pending).push(Pending {
            content,
            waiter: None,
        });
        Ok(id)
    }

    /// Appends an event and returns once it is committed with
    /// `synchronous=FULL` (on disk, surviving a power cut), together with
    /// everything buffered before it.
    ///
    /// `Ok` means the event is in the file; an error means it is not, and
    /// never will be from this call, so retrying cannot record it twice.
    pub async fn append_durable(&self, event: AuditEvent) -> Result<Uuid> {
        let content = self.content(event)?;
        let id = Uuid::parse_str(&content.id).map_err(|e| Error::invalid("id", e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        lock(&self.state.pending).push(Pending {
            content,
            waiter: Some(tx),
        });
        // Another flush may take the event first; the answer comes through
        // the waiter either way, and this flush's own error says why it failed.
        let flushed = self.flush().await;
        match rx.await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(reason)) => Err(flushed.err().unwrap_or(Error::StorageIo {
                detail: format!("the audit batch holding the event was not written: {reason}"),
            })),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Writes the buffered events in one transaction. On failure nothing is
    /// written: plain events stay buffered for the next flush, and durable
    /// ones are given back to their callers as errors.
    pub(crate) async fn flush(&self) -> Result<()> {
        let _writing = self.state.writing.lock().await;
        let batch = self.take_batch();
        if batch.events.is_empty() {
            return Ok(());
        }
        let result = match self.core.store().sqlx_writer_conn().await {
            Ok(mut conn) => {
                self.durably(&mut conn, batch.durable(), async |conn| {
                    crate::store::immediate(conn, async |tx| batch.insert(tx).await).await
                })
                .await
            }
            Err(e) => Err(e),
        };
        self.settle(batch, result.as_ref().err());
        result
    }

    /// What is buffered, taken for one transaction that writes it
    /// ([`Batch::insert`]); [`Audit::settle`] then answers for it.
    pub(crate) fn take_batch(&self) -> Batch {
        Batch {
            events: std::mem::take(&mut *lock(&self.state.pending)),
        }
    }

    /// After the transaction that wrote `batch` ended: committed (`failed`
    /// is `None`), durable callers are told so; rolled back, plain events
    /// go back to the front of the buffer and durable callers get the error.
    pub(crate) fn settle(&self, batch: Batch, failed: Option<&Error>) {
        let Some(error) = failed else {
            for pending in batch.events {
                if let Some(waiter) = pending.waiter {
                    let _ = waiter.send(Ok(()));
                }
            }
            return;
        };
        let mut kept = Vec::with_capacity(batch.events.len());
        for pending in batch.events {
            match pending.waiter {
                Some(waiter) => {
                    let _ = waiter.send(Err(error.to_string()));
                }
                None => kept.push(pending),
            }
        }
        let mut buffered = lock(&self.state.pending);
        let later = std::mem::replace(&mut *buffered, kept);
        buffered.extend(later);
    }

    /// Runs `work` on the writer connection, with `synchronous = FULL`
    /// around it when `durable`. Putting the setting back is not part of the
    /// work's outcome: once the work committed, a failure there is logged,
    /// not returned (which would have the batch written again).
    pub(crate) async fn durably<T>(
        &self,
        conn: &mut SqliteConnection,
        durable: bool,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        if durable {
            sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await?;
        }
        let result = work(conn).await;
        if durable {
            let normal = self.core.store().synchronous_pragma();
            if let Err(e) = sqlx::query(normal).execute(&mut *conn).await {
                tracing::warn!(error = %e, "could not put synchronous back after a durable audit commit; the writer stays at FULL");
            }
        }
        result
    }

    /// Events matching `filter`, newest first. Writes buffered events first.
    pub async fn query(&self, filter: &AuditQuery) -> Result<Vec<StoredEvent>> {
        self.flush().await?;
        let limit = filter.limit.unwrap_or(100);
        if limit == 0 || limit > 100_000 {
            return Err(Error::invalid("limit", "must be 1 to 100000"));
        }
        let mut q = QueryBuilder::new(concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE 1 = 1"
        ));
        if let Some(user) = &filter.user_id {
            q.push(" AND user_id = ").push_bind(user);
        }
        if let Some(kind) = &filter.kind {
            q.push(" AND kind = ").push_bind(name(kind));
        }
        if let Some(action) = &filter.action {
            q.push(" AND action = ").push_bind(action);
        }
        if let Some(since) = filter.since {
            q.push(" AND occurred_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND occurred_at < ").push_bind(until);
        }
        q.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(self.core.store().sqlx_reader())
            .await
            .map_err(crate::store::closed_or)?;
        rows.iter().map(stored_event).collect()
    }

    /// The last `n` events, oldest first.
    pub async fn tail(&self, n: u32) -> Result<Vec<StoredEvent>> {
        let mut events = self
            .query(&AuditQuery {
                limit: Some(n),
                ..AuditQuery::default()
            })
            .await?;
        events.reverse();
        Ok(events)
    }

    /// Walks the whole chain and reports the first broken link (see the
    /// module docs for what is checked). Writes buffered events first.
    pub async fn verify(&self) -> Result<ChainReport> {
        self.flush().await?;
        // One read transaction, so one snapshot: the head and anchor recorded
        // by the last write and the rows it wrote. Read apart, an append
        // committed in between (by the flusher or another process) would
        // read as events cut from the end.
        let mut tx = self
            .core
            .store()
            .sqlx_reader()
            .begin()
            .await
            .map_err(crate::store::closed_or)?;
        let anchor = meta::get_in(&mut tx, meta::AUDIT_ANCHOR).await?;
        let head = meta::get_in(&mut tx, meta::AUDIT_HEAD).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            ", ip_hash, user_agent_hash, content_digest, chain_digest FROM audit_events ORDER BY seq"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let anchor = anchor.as_deref().map(parse_anchor).transpose()?;
        let head = head.as_deref();

        let (mut prev_seq, mut prev) = anchor.unwrap_or((0, [0; 32]));
        let mut report = ChainReport {
            ok: true,
            events: 0,
            erased: 0,
            first_seq: None,
            last_seq: None,
            head_digest: None,
            broken: None,
        };
        let mut erased_rows = Vec::new();
        let mut named_erased = BTreeSet::new();
        let mut last_retention_anchor = None;
        for row in &rows {
            let event = stored_event(row)?;
            let seq = event.seq;
            let stored_content: Vec<u8> = row.try_get("content_digest")?;
            let stored_chain: Vec<u8> = row.try_get("chain_digest")?;
            let broken = |reason: String| BrokenLink { seq, reason };
            let fail = if seq != prev_seq + 1 {
                Some(broken(format!(
                    "expected event {} next: events are missing or out of order",
                    prev_seq + 1
                )))
            } else if event.erased_at.is_none() {
                let content = Content {
                    id: event.id.clone(),
                    occurred_at: event.occurred_at,
                    user_id: event.user_id.clone(),
                    session_id: event.session_id.clone(),
                    kind: event.kind.clone(),
                    action: event.action.clone(),
                    resource_type: event.resource_type.clone(),
                    resource_id: event.resource_id.clone(),
                    details: row.try_get("details")?,
                    gdpr_category: event.gdpr_category.clone(),
                    ip_hash: row.try_get("ip_hash")?,
                    user_agent_hash: row.try_get("user_agent_hash")?,
                };
                (content.digest()[..] != stored_content[..])
                    .then(|| broken("content changed: its digest does not match".into()))
            } else {
                None
            };
            let fail = fail.or_else(|| {
                let digest: [u8; 32] = stored_content.as_slice().try_into().unwrap_or([0; 32]);
                (chain(&prev, seq, &digest)[..] != stored_chain[..])
                    .then(|| broken("chain digest does not follow from the previous event".into()))
            });
            if let Some(link) = fail {
                report.ok = false;
                report.broken = Some(link);
                break;
            }
            if event.erased_at.is_some() {
                report.erased += 1;
                erased_rows.push(seq);
            }
            if event.kind == "admin" && event.action == "erasure" {
                named_erased.extend(erased_seqs(&event.details));
            }
            if event.kind == "admin" && event.action == "retention" {
                last_retention_anchor = event
                    .details
                    .get("anchor")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned);
            }
            report.events += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            prev_seq = seq;
            prev = stored_chain.as_slice().try_into().unwrap_or([0; 32]);
        }
        if report.ok {
            report.head_digest = report.last_seq.map(|_| crate::key::hex(&prev).to_string());
            report.broken = self.check_ends(
                &report,
                anchor,
                head,
                last_retention_anchor,
                &erased_rows,
                &named_erased,
            );
            report.ok = report.broken.is_none();
        }
        Ok(report)
    }

    /// The checks that need the whole walk: tombstones named by erasure
    /// events, the head recorded at the last write, the retention anchor.
    fn check_ends(
        &self,
        report: &ChainReport,
        anchor: Option<(i64, [u8; 32])>,
        head: Option<&str>,
        last_retention_anchor: Option<String>,
        erased_rows: &[i64],
        named_erased: &BTreeSet<i64>,
    ) -> Option<BrokenLink> {
        if let Some(seq) = erased_rows.iter().find(|s| !named_erased.contains(s)) {
            return Some(BrokenLink {
                seq: *seq,
                reason: "marked erased, but no erasure event names it".into(),
            });
        }
        let end = report.last_seq.unwrap_or(anchor.map_or(0, |a| a.0));
        let expected_head = report
            .last_seq
            .map(|seq| format!("{seq} {}", report.head_digest.as_deref().unwrap_or("")));
        if head.map(str::to_owned) != expected_head {
            return Some(BrokenLink {
                seq: end,
                reason: format!(
                    "the log ends at {} but the last write recorded {}",
                    expected_head.as_deref().unwrap_or("nothing"),
                    head.unwrap_or("nothing")
                ),
            });
        }
        if let Some((seq, digest)) = anchor {
            let recorded = format!("{seq} {}", *crate::key::hex(&digest));
            if last_retention_anchor.as_deref() != Some(recorded.as_str()) {
                return Some(BrokenLink {
                    seq: seq + 1,
                    reason: "the log's start does not match the last retention event".into(),
                });
            }
        }
        None
    }

    /// A user's events (for export), oldest first.
    pub async fn export_user(&self, user_id: &str) -> Result<Vec<StoredEvent>> {
        self.flush().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE user_id = ?1 ORDER BY seq"
        ))
        .bind(user_id)
        .fetch_all(self.core.store().sqlx_reader())
        .await
        .map_err(crate::store::closed_or)?;
        rows.iter().map(stored_event).collect()
    }

    /// Deletes events older than `retention` from the start of the log, at
    /// most `batch` per transaction, keeping the chain verifiable (module
    /// docs). Returns how many went.
    pub async fn sweep(&self, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(Error::invalid("batch", "must be at least 1"));
        }
        self.flush().await?;
        let _writing = self.state.writing.lock().await;
        let cutoff = self.core.now().saturating_sub(self.state.config.retention);
        let mut removed = 0;
        loop {
            let mut tx = self.core.store().sqlx_transaction().await?;
            let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, chain_digest FROM audit_events WHERE seq IN
                     (SELECT seq FROM audit_events WHERE occurred_at < ?1 ORDER BY seq LIMIT ?2)
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(cutoff)
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((through, digest)) = last else {
                return Ok(removed);
            };
            let gone = sqlx::query("DELETE FROM audit_events WHERE seq <= ?1")
                .bind(through)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let anchor = format!("{through} {}", *crate::key::hex(&digest));
            meta::set(&mut tx, meta::AUDIT_ANCHOR, &anchor, self.core.now()).await?;
            let event = self.content(
                AuditEvent::new(EventKind::Admin, "retention")
                    .details(serde_json::json!({"removed_through_seq": through, "removed": gone, "anchor": anchor})),
            )?;
            insert_chained(&mut tx, &[&event]).await?;
            tx.commit().await?;
            removed += gone;
            if gone < batch as u64 {
                return Ok(removed);
            }
        }
    }

    /// Within the whole-user erase transaction: writes `batch` (what was
    /// buffered), clears the user's events and appends the erasure event,
    /// which names the erased events and the rows removed elsewhere
    /// (`rows`), never the user. The caller holds [`Audit::exclusive`] and
    /// settles the batch ([`Audit::settle`]) once the transaction has ended.
    pub(crate) async fn erase_user(
        &self,
        tx: &mut SqliteConnection,
        batch: &Batch,
        user_id: &str,
        rows: &std::collections::BTreeMap<String, u64>,
    ) -> Result<u64> {
        batch.insert(tx).await?;
        let seqs: Vec<i64> = sqlx::query_scalar(
            "UPDATE audit_events SET user_id = NULL, session_id = NULL, resource_type = NULL, resource_id = NULL,
                 details = '{}', ip_hash = NULL, user_agent_hash = NULL, erased_at = ?1
             WHERE user_id = ?2 RETURNING seq",
        )
        .bind(self.core.now())
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;
        let event = self.content(
            AuditEvent::new(EventKind::Admin, "erasure")
                .details(serde_json::json!({"erased_seqs": seqs, "rows": rows})),
        )?;
        insert_chained(tx, &[&event]).await?;
        Ok(seqs.len() as u64)
    }

    /// Holds off flushes while a whole-user erase runs.
    pub(crate) async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.state.writing.lock().await
    }
}

/// Appends events after the current end of the chain, inside `tx`, as
/// multi-row inserts, and records the new head in `vault_meta`.
async fn insert_chained(tx: &mut SqliteConnection, contents: &[&Content]) -> Result<()> {
    if contents.is_empty() {
        return Ok(());
    }
    let tail: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, chain_digest FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (mut seq, mut prev) = match tail {
        Some((seq, digest)) => (seq, digest.as_slice().try_into().unwrap_or([0; 32])),
        None => meta::get_in(tx, meta::AUDIT_ANCHOR)
            .await?
            .as_deref()
            .map(parse_anchor)
            .transpose()?
            .unwrap_or((0, [0; 32])),
    };
    let mut rows = Vec::with_capacity(contents.len());
    for content in contents {
        seq += 1;
        let content_digest = content.digest();
        prev = chain(&prev, seq, &content_digest);
        rows.push((seq, *content, content_digest, prev));
    }
    for chunk in rows.chunks(2000) {
        let mut q = QueryBuilder::new(
            "INSERT INTO audit_events (seq, id, occurred_at, user_id, session_id, kind, action, resource_type,
                 resource_id, details, gdpr_category, ip_hash, user_agent_hash, content_digest, chain_digest) ",
        );
        q.push_values(chunk, |mut b, (seq, c, content_digest, chain_digest)| {
            b.push_bind(*seq)
                .push_bind(c.id.as_str())
                .push_bind(c.occurred_at)
                .push_bind(c.user_id.as_deref())
                .push_bind(c.session_id.as_deref())
                .push_bind(c.kind.as_str())
                .push_bind(c.action.as_str())
                .push_bind(c.resource_type.as_deref())
                .push_bind(c.resource_id.as_deref())
                .push_bind(c.details.as_str())
                .push_bind(c.gdpr_category.as_str())
                .push_bind(c.ip_hash.as_deref())
                .push_bind(c.user_agent_hash.as_deref())
                .push_bind(&content_digest[..])
                .push_bind(&chain_digest[..]);
        });
        q.build().execute(&mut *tx).await?;
    }
    let head = format!("{seq} {}", *crate::key::hex(&prev));
    let now = contents
        .last()
        .map_or(Timestamp::UNIX_EPOCH, |c| c.occurred_at);
    meta::set(tx, meta::AUDIT_HEAD, &head, now).await
}

fn parse_anchor(text: &str) -> Result<(i64, [u8; 32])> {
    let bad = || {
        meta::bad(
            meta::AUDIT_ANCHOR,
            format_args!("{text:?} is not '<seq> <64 hex digits>'"),
        )
    };
    let (seq, hex) = text.split_once(' ').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    let bytes = crate::key::parse_hex32(hex).ok_or_else(bad)?;
    Ok((seq, *bytes))
}

fn erased_seqs(details: &serde_json::Value) -> Vec<i64> {
    details
        .get("erased_seqs")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default()
}

fn stored_event(row: &sqlx::sqlite::SqliteRow) -> Result<StoredEvent> {
    let details: String = row.try_get("details")?;
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        occurred_at: row.try_get("occurred_at")?,
        user_id: row.try_get("user_id")?,
        session_id: row.try_get("session_id")?,
        kind: row.try_get("kind")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        details: serde_json::from_str(&details)?,
        gdpr_category: row.try_get("gdpr_category")?,
        erased_at: row.try_get("erased_at")?,
    })
}

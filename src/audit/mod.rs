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
//!
//! # Layout
//!
//! - `mod.rs`: the [`Audit`] handle: append, flush, query, verify, sweep,
//!   erase;
//! - `types.rs`: events and reports; `config.rs`: [`AuditConfig`];
//! - `chain.rs`: the digests and links; `verify.rs`: the walk;
//! - `state.rs`: the buffer of events not yet written;
//! - `backend.rs`: the storage contract; `sqlite.rs`, `postgres.rs`: every
//!   statement of each backend; `storage.rs`: the enum that picks one.

mod backend;
mod chain;
mod config;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{SEALED, check_sealed};
mod sqlite;
mod state;
mod storage;
mod types;
mod verify;

pub use config::AuditConfig;
pub(crate) use state::{Batch, State};
pub use types::{
    AuditEvent, AuditQuery, BrokenLink, ChainReport, EventKind, GdprCategory, StoredEvent,
};

use sqlx::SqliteConnection;
use tokio::sync::oneshot;
use uuid::Uuid;

use backend::{AuditBackend, EventRow};
use chain::Content;
use storage::Backend;
use types::name;

use crate::core::Core;
use crate::{Error, Result};

/// The audit facet of a vault; from [`Vault::audit`](crate::Vault::audit).
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

    /// The event as the chain hashes it: checked, stamped with an id and
    /// the vault clock's now, its client IP and user agent keyed-hashed.
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
    #[tracing::instrument(name = "audit.append", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub fn append(&self, event: AuditEvent) -> Result<Uuid> {
        crate::trace::done(
            tracing::Level::DEBUG,
            (|| {
                let content = self.content(event)?;
                let id = Uuid::parse_str(&content.id)
                    .map_err(|e| Error::invalid("id", e.to_string()))?;
                self.state.push(content, None);
                Ok(id)
            })(),
            crate::trace::ok,
        )
    }

    /// Appends an event and returns once it is committed with
    /// `synchronous=FULL` (on disk, surviving a power cut), together with
    /// everything buffered before it.
    ///
    /// `Ok` means the event is in the file; an error means it is not, and
    /// never will be from this call, so retrying cannot record it twice.
    #[tracing::instrument(name = "audit.append_durable", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn append_durable(&self, event: AuditEvent) -> Result<Uuid> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                let content = self.content(event)?;
                let id = Uuid::parse_str(&content.id)
                    .map_err(|e| Error::invalid("id", e.to_string()))?;
                let (tx, mut rx) = oneshot::channel();
                self.state.push(content, Some(tx));
                // Group commit: callers that arrive while a flush writes wait
                // for the next one, and whoever gets it writes every event
                // pending. A caller whose event a flush took meanwhile has its
                // answer and writes nothing (queued for the writer instead, it
                // would commit one event per caller). Its own flush's error,
                // if it wrote, says why it failed.
                let (answer, flushed) = tokio::select! {
                    biased;
                    answer = &mut rx => (answer, None),
                    writing = self.state.writing.lock() => {
                        let flushed = self.write_pending(writing).await.err();
                        (rx.await, flushed)
                    }
                };
                match answer {
                    Ok(Ok(())) => Ok(id),
                    Ok(Err(reason)) => Err(flushed.unwrap_or(Error::StorageIo {
                        detail: format!(
                            "the audit batch holding the event was not written: {reason}"
                        ),
                    })),
                    Err(_) => Err(Error::Closed),
                }
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Writes the buffered events in one transaction. On failure nothing is
    /// written: plain events stay buffered for the next flush, and durable
    /// ones are given back to their callers as errors.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.write_pending(self.state.writing.lock().await).await
    }

    /// [`Audit::flush`] with the writer taken (`_writing`).
    async fn write_pending(&self, _writing: tokio::sync::MutexGuard<'_, ()>) -> Result<()> {
        let batch = self.take_batch();
        if batch.is_empty() {
            return Ok(());
        }
        let result = self
            .backend()
            .append(&batch.contents(), batch.durable())
            .await;
        self.settle(batch, result.as_ref().err());
        result
    }

    /// What is buffered, taken for one transaction that writes it
    /// ([`Audit::erase_user`] does); [`Audit::settle`] then answers for it.
    pub(crate) fn take_batch(&self) -> Batch {
        self.state.take_batch()
    }

    /// After the transaction that wrote `batch` ended: committed (`failed`
    /// is `None`), durable callers are told so; rolled back, plain events
    /// go back to the front of the buffer and durable callers get the error.
    pub(crate) fn settle(&self, batch: Batch, failed: Option<&Error>) {
        self.state.settle(batch, failed);
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
        sqlite::durably(self.core.store()?, conn, durable, work).await
    }

    /// Events matching `filter`, newest first. Writes buffered events first.
    pub async fn query(&self, filter: &AuditQuery) -> Result<Vec<StoredEvent>> {
        self.flush().await?;
        let limit = filter.limit.unwrap_or(100);
        if limit == 0 || limit > 100_000 {
            return Err(Error::invalid("limit", "must be 1 to 100000"));
        }
        events(self.backend().query(filter, limit).await?)
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
    #[tracing::instrument(name = "audit.verify", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn verify(&self) -> Result<ChainReport> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                self.flush().await?;
                let mut verifier = verify::Verifier::new();
                self.backend().read_chain(&mut verifier).await?;
                Ok(verifier.report())
            }
            .await,
            |r| if r.ok { "ok" } else { "broken" },
        )
    }

    /// A user's events (for export), oldest first.
    pub async fn export_user(&self, user_id: &str) -> Result<Vec<StoredEvent>> {
        self.flush().await?;
        events(self.backend().user_events(user_id).await?)
    }

    /// Deletes events older than `retention` from the start of the log, at
    /// most `batch` per transaction, keeping the chain verifiable (module
    /// docs). Returns how many went.
    #[tracing::instrument(name = "audit.sweep", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn sweep(&self, batch: usize) -> Result<u64> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                if batch == 0 {
                    return Err(Error::invalid("batch", "must be at least 1"));
                }
                self.flush().await?;
                let _writing = self.state.writing.lock().await;
                let cutoff = self.core.now().saturating_sub(self.state.config.retention);
                let backend = self.backend();
                let mut removed = 0;
                loop {
                    let gone = backend
                        .remove_oldest(cutoff, batch, |removed| {
                            self.content(AuditEvent::new(EventKind::Admin, "retention").details(
                                serde_json::json!({
                                    "removed_through_seq": removed.through,
                                    "removed": removed.count,
                                    "anchor": removed.anchor,
                                }),
                            ))
                        })
                        .await?;
                    let Some(gone) = gone else {
                        return Ok(removed);
                    };
                    removed += gone;
                    if gone < batch as u64 {
                        return Ok(removed);
                    }
                }
            }
            .await,
            crate::trace::ok,
        )
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
        sqlite::append_in(tx, &batch.contents()).await?;
        let seqs = sqlite::clear_user(tx, user_id, self.core.now()).await?;
        let events = self.erasure_events(&seqs, rows)?;
        sqlite::append_in(tx, &events.iter().collect::<Vec<_>>()).await?;
        Ok(seqs.len() as u64)
    }

    /// Within the caller's transaction on the file: writes `batch` (what was
    /// buffered), then `event`. The caller holds [`Audit::exclusive`] and
    /// settles the batch ([`Audit::settle`]) once the transaction has ended.
    pub(crate) async fn append_after(
        &self,
        tx: &mut SqliteConnection,
        batch: &Batch,
        event: AuditEvent,
    ) -> Result<()> {
        sqlite::append_in(tx, &batch.contents()).await?;
        sqlite::append_in(tx, &[&self.content(event)?]).await
    }

    /// Appends `event` inside the caller's transaction on PostgreSQL (which
    /// then holds the chain's head until it ends), not through the buffer.
    #[cfg(feature = "postgres")]
    pub(crate) async fn append_pg(
        &self,
        db: &crate::postgres::Database,
        tx: &mut sqlx::PgConnection,
        event: AuditEvent,
    ) -> Result<()> {
        let content = self.content(event)?;
        postgres::Postgres::new(db).append_in(tx, &[&content]).await
    }

    /// [`Audit::erase_user`] inside a transaction on PostgreSQL.
    #[cfg(feature = "postgres")]
    pub(crate) async fn erase_user_pg(
        &self,
        db: &crate::postgres::Database,
        tx: &mut sqlx::PgConnection,
        batch: &Batch,
        user_id: &str,
        rows: &std::collections::BTreeMap<String, u64>,
    ) -> Result<u64> {
        let log = postgres::Postgres::new(db);
        log.append_in(tx, &batch.contents()).await?;
        let seqs = postgres::clear_user(db, tx, user_id, self.core.now()).await?;
        let events = self.erasure_events(&seqs, rows)?;
        log.append_in(tx, &events.iter().collect::<Vec<_>>())
            .await?;
        Ok(seqs.len() as u64)
    }

    /// The erasure's audit events: each names some of the erased `seqs`
    /// (all of them together) and the rows removed elsewhere, with as many
    /// `seqs` as keep its details within `max_details_bytes`; more than one
    /// says which part it is (`"part": "2/3"`). A user with thousands of
    /// events is erased like any other.
    fn erasure_events(
        &self,
        seqs: &[i64],
        rows: &std::collections::BTreeMap<String, u64>,
    ) -> Result<Vec<Content>> {
        let details = |seqs: &[i64], part: Option<(usize, usize)>| {
            let mut details = serde_json::json!({"erased_seqs": seqs, "rows": rows});
            if let Some((n, of)) = part {
                details["part"] = format!("{n}/{of}").into();
            }
            details
        };
        // Room for the seqs beside the rest, and a part of up to 99999/99999.
        let fixed = details(&[], Some((99_999, 99_999))).to_string().len();
        let room = self.state.config.max_details_bytes.saturating_sub(fixed);
        let mut parts: Vec<&[i64]> = Vec::new();
        let (mut start, mut used) = (0, 0);
        for (i, seq) in seqs.iter().enumerate() {
            let len = seq.to_string().len() + 1;
            if used + len > room && i > start {
                parts.push(&seqs[start..i]);
                (start, used) = (i, 0);
            }
            used += len;
        }
        parts.push(&seqs[start..]);
        let of = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, named)| {
                let part = (of > 1).then_some((i + 1, of));
                self.content(
                    AuditEvent::new(EventKind::Admin, "erasure").details(details(named, part)),
                )
            })
            .collect()
    }

    /// Holds off flushes while a whole-user erase runs.
    pub(crate) async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.state.writing.lock().await
    }

    /// The storage's side of the facet.
    fn backend(&self) -> Backend<'_> {
        Backend::of(self.core)
    }
}

/// A user's events, oldest first: their part of a user's export, read in
/// the export's snapshot of the file.
pub(crate) fn export_user_in_file(
    conn: &rusqlite::Connection,
    user_id: &str,
) -> Result<Vec<StoredEvent>> {
    events(sqlite::user_events_here(conn, user_id)?)
}

/// A user's events, oldest first: their part of a user's export, read in
/// the export's transaction.
#[cfg(feature = "postgres")]
pub(crate) async fn export_user_pg(
    db: &crate::postgres::Database,
    conn: &mut sqlx::PgConnection,
    user_id: &str,
) -> Result<Vec<StoredEvent>> {
    events(postgres::user_events(db, conn, user_id).await?)
}

/// Stored rows as the events the log shows.
fn events(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>> {
    rows.iter().map(EventRow::to_event).collect()
}

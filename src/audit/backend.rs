//! The storage contract of the audit facet: what the facet asks of the
//! file, in its own terms (event contents in, event rows out, no driver
//! types), so that another database can hold the same log behind the same
//! calls. [`sqlite`](super::sqlite) implements it.
//!
//! Every method is one transaction. Linking events into the chain
//! ([`chain::link`](super::chain::link)) happens inside the transaction
//! that appends them, after it has read the chain's end.

use super::chain::Content;
use super::types::{AuditQuery, StoredEvent};
use crate::Result;
use crate::clock::Timestamp;

/// An event row as stored (`details` still JSON text).
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) occurred_at: Timestamp,
    pub(crate) user_id: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) kind: String,
    pub(crate) action: String,
    pub(crate) resource_type: Option<String>,
    pub(crate) resource_id: Option<String>,
    pub(crate) details: String,
    pub(crate) gdpr_category: String,
    pub(crate) erased_at: Option<Timestamp>,
}

impl EventRow {
    /// The event as the log shows it (its details parsed).
    pub(crate) fn to_event(&self) -> Result<StoredEvent> {
        Ok(StoredEvent {
            seq: self.seq,
            id: self.id.clone(),
            occurred_at: self.occurred_at,
            user_id: self.user_id.clone(),
            session_id: self.session_id.clone(),
            kind: self.kind.clone(),
            action: self.action.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            details: serde_json::from_str(&self.details)?,
            gdpr_category: self.gdpr_category.clone(),
            erased_at: self.erased_at,
        })
    }
}

/// An event row with what verification needs besides: the client hashes
/// (not read for an erased row, whose content is not checked) and both
/// digests as stored.
#[derive(Debug, Clone)]
pub(crate) struct ChainRow {
    pub(crate) event: EventRow,
    pub(crate) ip_hash: Option<Vec<u8>>,
    pub(crate) user_agent_hash: Option<Vec<u8>>,
    pub(crate) content_digest: Vec<u8>,
    pub(crate) chain_digest: Vec<u8>,
}

impl ChainRow {
    /// The content its digest was made of (meaningful unless erased).
    pub(crate) fn content(&self) -> Content {
        let event = &self.event;
        Content {
            id: event.id.clone(),
            occurred_at: event.occurred_at,
            user_id: event.user_id.clone(),
            session_id: event.session_id.clone(),
            kind: event.kind.clone(),
            action: event.action.clone(),
            resource_type: event.resource_type.clone(),
            resource_id: event.resource_id.clone(),
            details: event.details.clone(),
            gdpr_category: event.gdpr_category.clone(),
            ip_hash: self.ip_hash.clone(),
            user_agent_hash: self.user_agent_hash.clone(),
        }
    }
}

/// What receives the log as [`AuditBackend::read_chain`] reads it: the
/// ends first, then every event in `seq` order. The log may be far larger
/// than a verification should hold in memory, so rows are handed over as
/// they are read, not collected.
pub(crate) trait ChainVisitor: Send {
    /// `vault_meta`'s `audit_anchor` and `audit_head`, as stored.
    fn ends(&mut self, anchor: Option<String>, head: Option<String>) -> Result<()>;

    /// The next event, decoded on its own (a row the walk does not reach
    /// cannot fail it); `false` stops the read.
    fn row(&mut self, row: Result<ChainRow>) -> Result<bool>;
}

/// What one retention step removed.
pub(crate) struct Removed {
    /// The last `seq` removed.
    pub(crate) through: i64,
    /// How many events went.
    pub(crate) count: u64,
    /// The new start of the chain as `vault_meta` records it.
    pub(crate) anchor: String,
}

/// The storage operations of the audit facet.
pub(crate) trait AuditBackend {
    /// Appends `events` after the end of the chain, in one transaction on
    /// the writer, committed with `synchronous = FULL` when `durable`.
    async fn append(&self, events: &[&Content], durable: bool) -> Result<()>;

    /// The anchor, the recorded head and every event, from one snapshot
    /// (read apart, an append committed in between would read as events cut
    /// from the end), handed to `visitor` a bounded page at a time.
    async fn read_chain(&self, visitor: &mut impl ChainVisitor) -> Result<()>;

    /// Events matching `filter`, newest first, at most `limit`.
    async fn query(&self, filter: &AuditQuery, limit: u32) -> Result<Vec<EventRow>>;

    /// `user_id`'s events, oldest first.
    async fn user_events(&self, user_id: &str) -> Result<Vec<EventRow>>;

    /// One retention step, in one write transaction: deletes the oldest
    /// events (at most `batch`) that occurred before `cutoff`, records the
    /// last one as the chain's anchor, and appends the event `record` makes
    /// of what went. `None` when no event is that old.
    async fn remove_oldest(
        &self,
        cutoff: Timestamp,
        batch: usize,
        record: impl FnOnce(&Removed) -> Result<Content>,
    ) -> Result<Option<u64>>;
}

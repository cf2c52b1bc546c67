//! What the facet keeps in memory: the events appended but not yet written,
//! each with whoever waits for it to be on disk, and the lock that keeps
//! batches in append order.

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::chain::Content;
use super::config::AuditConfig;
use crate::Error;
use crate::core::lock;

/// Buffered, not yet written: the event, its digest inputs, and who waits.
struct Pending {
    content: Content,
    waiter: Option<oneshot::Sender<Result<(), String>>>,
}

/// Buffered events taken for one transaction ([`State::take_batch`]).
pub(crate) struct Batch {
    events: Vec<Pending>,
}

impl Batch {
    /// Whether a caller waits for the batch to be on disk.
    pub(crate) fn durable(&self) -> bool {
        self.events.iter().any(|p| p.waiter.is_some())
    }

    /// Whether there is nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, in append order.
    pub(super) fn contents(&self) -> Vec<&Content> {
        self.events.iter().map(|p| &p.content).collect()
    }
}

/// The audit facet's state in the vault.
pub(crate) struct State {
    pub(super) config: AuditConfig,
    pending: Mutex<Vec<Pending>>,
    /// Held while a batch is written, so batches commit in the order they
    /// were taken and `seq` follows append order.
    pub(super) writing: tokio::sync::Mutex<()>,
}

impl State {
    pub(crate) fn new(config: AuditConfig) -> State {
        State {
            config,
            pending: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Buffers `content`; `waiter`, if any, hears whether it was written.
    pub(super) fn push(
        &self,
        content: Content,
        waiter: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        lock(&self.pending).push(Pending { content, waiter });
    }

    /// What is buffered, taken for one transaction that writes it;
    /// [`State::settle`] then answers for it.
    pub(super) fn take_batch(&self) -> Batch {
        Batch {
            events: std::mem::take(&mut *lock(&self.pending)),
        }
    }

    /// After the transaction that wrote `batch` ended: committed (`failed`
    /// is `None`), durable callers are told so; rolled back, plain events
    /// go back to the front of the buffer and durable callers get the error.
    pub(super) fn settle(&self, batch: Batch, failed: Option<&Error>) {
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
        let mut buffered = lock(&self.pending);
        let later = std::mem::replace(&mut *buffered, kept);
        buffered.extend(later);
    }
}

//! Which storage the audit facet runs on: [`Backend`] holds the file's side
//! (`sqlite.rs`) or the database's (`postgres.rs`), picked from the core's
//! storage, and passes each call of [`AuditBackend`] on to it.

use super::backend::{AuditBackend, ChainVisitor, EventRow, Removed};
use super::chain::Content;
#[cfg(feature = "postgres")]
use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::types::AuditQuery;
use crate::Result;
use crate::clock::Timestamp;
use crate::core::{Core, Storage, on_backend};

/// The audit log of the vault's storage.
pub(crate) enum Backend<'a> {
    Sqlite(Sqlite<'a>),
    #[cfg(feature = "postgres")]
    Postgres(Postgres<'a>),
}

impl<'a> Backend<'a> {
    pub(crate) fn of(core: &'a Core) -> Self {
        match core.storage() {
            Storage::File(store) => Backend::Sqlite(Sqlite::new(store)),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => Backend::Postgres(Postgres::new(db)),
        }
    }
}

impl AuditBackend for Backend<'_> {
    async fn append(&self, events: &[&Content], durable: bool) -> Result<()> {
        on_backend!(self, b => b.append(events, durable).await)
    }

    async fn read_chain(&self, visitor: &mut impl ChainVisitor) -> Result<()> {
        on_backend!(self, b => b.read_chain(visitor).await)
    }

    async fn query(&self, filter: &AuditQuery, limit: u32) -> Result<Vec<EventRow>> {
        on_backend!(self, b => b.query(filter, limit).await)
    }

    async fn user_events(&self, user_id: &str) -> Result<Vec<EventRow>> {
        on_backend!(self, b => b.user_events(user_id).await)
    }

    async fn remove_oldest(
        &self,
        cutoff: Timestamp,
        batch: usize,
        record: impl FnOnce(&Removed) -> Result<Content>,
    ) -> Result<Option<u64>> {
        on_backend!(self, b => b.remove_oldest(cutoff, batch, record).await)
    }
}

//! Which storage the limits facet runs on: [`Backend`] holds the file's
//! side (`sqlite.rs`) or the database's (`postgres.rs`), picked from the
//! core's storage, and passes each call of [`LimitsBackend`] on to it.

use super::backend::{LimitsBackend, Shared, SharedCheck, Stored, ViolationRow, Writes};
#[cfg(feature = "postgres")]
use super::coalesce::Coalescer;
#[cfg(feature = "postgres")]
use super::postgres::Postgres;
use super::sqlite::{Sqlite, Statements};
use super::types::ViolationRecord;
use crate::core::{Core, Storage, on_backend};
use crate::{Result, Timestamp};

/// The limits tables of the vault's storage.
pub(crate) enum Backend<'a> {
    Sqlite(Sqlite<'a>),
    #[cfg(feature = "postgres")]
    Postgres(Postgres<'a>),
}

/// What the backends keep for the vault's life: the file's shared-check
/// statements, the database's queue of coalesced shared checks.
#[derive(Default)]
pub(crate) struct Kept {
    pub(crate) statements: Statements,
    #[cfg(feature = "postgres")]
    pub(crate) coalescer: Coalescer,
}

impl<'a> Backend<'a> {
    /// The backend for `core`'s storage, with what it keeps in `kept`.
    pub(crate) fn of(core: &'a Core, kept: &'a Kept) -> Self {
        match core.storage() {
            Storage::File(store) => Backend::Sqlite(Sqlite::new(core, store, &kept.statements)),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => Backend::Postgres(Postgres::new(core, db, &kept.coalescer)),
        }
    }
}

impl LimitsBackend for Backend<'_> {
    async fn load(&self, subject: &str, limit: &str, since: Timestamp) -> Result<Stored> {
        on_backend!(self, b => b.load(subject, limit, since).await)
    }

    async fn violations_of(&self, subject: &str) -> Result<Vec<ViolationRecord>> {
        on_backend!(self, b => b.violations_of(subject).await)
    }

    async fn count_violations_since(&self, since: Timestamp) -> Result<u64> {
        on_backend!(self, b => b.count_violations_since(since).await)
    }

    async fn write(&self, writes: &mut Writes, fill: impl FnOnce(&mut Writes)) -> Result<()> {
        on_backend!(self, b => b.write(writes, fill).await)
    }

    async fn write_now(
        &self,
        writes: &mut Writes,
        fill: impl FnOnce(&mut Writes) + Send,
    ) -> Result<()> {
        on_backend!(self, b => b.write_now(writes, fill).await)
    }

    async fn shared_check<T>(
        &self,
        check: &SharedCheck<'_>,
        refused: impl FnOnce(Stored) -> Result<(T, Option<ViolationRow>)>,
    ) -> Result<Shared<T>> {
        on_backend!(self, b => b.shared_check(check, refused).await)
    }

    async fn delete_subject(&self, subject: &str, holding: impl FnOnce()) -> Result<(u64, u64)> {
        on_backend!(self, b => b.delete_subject(subject, holding).await)
    }

    async fn sweep_violations(&self, before: Timestamp, batch: i64) -> Result<u64> {
        on_backend!(self, b => b.sweep_violations(before, batch).await)
    }

    async fn sweep_buckets(&self, before: Timestamp, batch: i64) -> Result<u64> {
        on_backend!(self, b => b.sweep_buckets(before, batch).await)
    }
}

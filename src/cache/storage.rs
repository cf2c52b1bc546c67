//! Which storage L2 runs on: [`Backend`] holds the file's side
//! (`sqlite.rs`) or the database's (`postgres.rs`), picked from the core's
//! storage, and passes each call of [`CacheBackend`] on to it; [`BackendTx`]
//! does the same for [`CacheTx`].

use std::sync::Arc;

use super::backend::{CacheBackend, CacheTx, CounterRow, Filter, Found, Row};
#[cfg(feature = "postgres")]
use super::postgres::{PgTx, Postgres};
use super::sqlite::{Sqlite, SqliteTx};
use super::types::NamespaceStats;
use crate::core::{Core, Storage, on_backend};
use crate::{Result, Timestamp};

/// L2 in the vault's storage.
pub(crate) enum Backend<'a> {
    Sqlite(Sqlite<'a>),
    #[cfg(feature = "postgres")]
    Postgres(Postgres<'a>),
}

impl<'a> Backend<'a> {
    /// L2 where `core` keeps its state. `writer` makes this process's write
    /// transactions take turns where the storage does not (PostgreSQL; the
    /// file has one writer connection).
    #[cfg_attr(not(feature = "postgres"), expect(unused_variables))]
    pub(crate) fn of(core: &'a Core, writer: &'a tokio::sync::Mutex<()>) -> Self {
        match core.storage() {
            Storage::File(_) => Backend::Sqlite(Sqlite::new(core)),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => Backend::Postgres(Postgres::new(core, db, writer)),
        }
    }
}

/// A write transaction of either backend.
pub(crate) enum BackendTx<'a> {
    Sqlite(SqliteTx<'a>),
    #[cfg(feature = "postgres")]
    Postgres(PgTx<'a>),
}

impl<'a> CacheBackend for Backend<'a> {
    type Tx = BackendTx<'a>;

    async fn begin(&self) -> Result<BackendTx<'a>> {
        Ok(match self {
            Self::Sqlite(b) => BackendTx::Sqlite(b.begin().await?),
            #[cfg(feature = "postgres")]
            Self::Postgres(b) => BackendTx::Postgres(b.begin().await?),
        })
    }

    async fn read(&self, key: &str, now: Timestamp, max: usize) -> Result<Option<Found>> {
        on_backend!(self, b => b.read(key, now, max).await)
    }

    async fn exists(&self, key: &str, now: Timestamp) -> Result<bool> {
        on_backend!(self, b => b.exists(key, now).await)
    }

    async fn keys_of_user(&self, user: &str) -> Result<Vec<String>> {
        on_backend!(self, b => b.keys_of_user(user).await)
    }

    async fn namespaces(&self, now: Timestamp) -> Result<Vec<NamespaceStats>> {
        on_backend!(self, b => b.namespaces(now).await)
    }
}

impl CacheTx for BackendTx<'_> {
    async fn write(&mut self, rows: &[Row], touches: &[(Arc<str>, i64)]) -> Result<i64> {
        on_backend!(self, t => t.write(rows, touches).await)
    }

    async fn delete_keys(&mut self, keys: &[&str]) -> Result<u64> {
        on_backend!(self, t => t.delete_keys(keys).await)
    }

    async fn delete_where(&mut self, filter: Filter<'_>) -> Result<u64> {
        on_backend!(self, t => t.delete_where(filter).await)
    }

    async fn read_for_update(&mut self, key: &str) -> Result<Option<CounterRow>> {
        on_backend!(self, t => t.read_for_update(key).await)
    }

    async fn set_expiry(
        &mut self,
        key: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool> {
        on_backend!(self, t => t.set_expiry(key, expires_at, now).await)
    }

    async fn delete_expired(&mut self, now: Timestamp, limit: i64) -> Result<u64> {
        on_backend!(self, t => t.delete_expired(now, limit).await)
    }

    async fn stored_bytes(&mut self) -> Result<i64> {
        on_backend!(self, t => t.stored_bytes().await)
    }

    async fn evict_lru(&mut self, excess: i64, limit: i64) -> Result<Vec<i64>> {
        on_backend!(self, t => t.evict_lru(excess, limit).await)
    }

    async fn commit(self) -> Result<()> {
        on_backend!(self, t => t.commit().await)
    }
}

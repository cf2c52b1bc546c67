//! Which storage the sessions facet runs on: [`Backend`] holds the file's
//! side (`sqlite.rs`) or the database's (`postgres.rs`), picked from the
//! core's storage, and passes each call of [`SessionsBackend`] on to it.

use std::collections::HashMap;
#[cfg(feature = "tower-sessions")]
use std::time::Duration;

#[cfg(feature = "tower-sessions")]
use super::backend::TowerRecord;
use super::backend::{Candidate, NewRow, Regenerated, SessionsBackend, Tokens};
#[cfg(feature = "postgres")]
use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::state::Row;
use crate::Result;
use crate::clock::Timestamp;
use crate::core::{Core, Storage, on_backend};

/// The sessions table of the vault's storage, picked once per call by
/// [`Backend::of`].
pub(crate) enum Backend<'a> {
    Sqlite(Sqlite<'a>),
    #[cfg(feature = "postgres")]
    Postgres(Postgres<'a>),
}

impl<'a> Backend<'a> {
    pub(crate) fn of(core: &'a Core) -> Self {
        match core.storage() {
            Storage::File(store) => Backend::Sqlite(Sqlite::new(core, store)),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => Backend::Postgres(Postgres::new(core, db)),
        }
    }
}

impl SessionsBackend for Backend<'_> {
    async fn by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Row>> {
        on_backend!(self, b => b.by_token(token_hash).await)
    }

    async fn unrevoked_of_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<Row>> {
        on_backend!(self, b => b.unrevoked_of_user(user_id, now).await)
    }

    async fn create(
        &self,
        row: &NewRow<'_>,
        make_room: impl FnOnce(Vec<Candidate>) -> Result<Vec<Candidate>> + Send,
    ) -> Result<Vec<Candidate>> {
        on_backend!(self, b => b.create(row, make_room).await)
    }

    async fn rotate(
        &self,
        old: &[u8; 32],
        new: &Tokens,
        rotation_due_at: Timestamp,
    ) -> Result<bool> {
        on_backend!(self, b => b.rotate(old, new, rotation_due_at).await)
    }

    async fn regenerate(
        &self,
        old: &[u8; 32],
        old_id: &str,
        new: &Regenerated<'_>,
    ) -> Result<bool> {
        on_backend!(self, b => b.regenerate(old, old_id, new).await)
    }

    async fn set_data(&self, token_hash: &[u8; 32], data: &str) -> Result<bool> {
        on_backend!(self, b => b.set_data(token_hash, data).await)
    }

    async fn revoke(&self, id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        on_backend!(self, b => b.revoke(id, now).await)
    }

    async fn revoke_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>> {
        on_backend!(self, b => b.revoke_user(user_id, now).await)
    }

    async fn count_live(&self, now: Timestamp) -> Result<u64> {
        on_backend!(self, b => b.count_live(now).await)
    }

    async fn write_last_seen(&self, touches: &HashMap<String, Timestamp>) -> Result<()> {
        on_backend!(self, b => b.write_last_seen(touches).await)
    }

    async fn delete_idle(&self, cutoff: Timestamp, batch: usize) -> Result<Vec<[u8; 32]>> {
        on_backend!(self, b => b.delete_idle(cutoff, batch).await)
    }

    #[cfg(feature = "tower-sessions")]
    async fn put_tower_record(
        &self,
        record: &TowerRecord,
        idle_timeout: Duration,
        replace: bool,
    ) -> Result<bool> {
        on_backend!(self, b => b.put_tower_record(record, idle_timeout, replace).await)
    }

    #[cfg(feature = "tower-sessions")]
    async fn tower_record(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>> {
        on_backend!(self, b => b.tower_record(token_hash, now).await)
    }

    #[cfg(feature = "tower-sessions")]
    async fn delete_by_token(&self, token_hash: &[u8; 32]) -> Result<()> {
        on_backend!(self, b => b.delete_by_token(token_hash).await)
    }
}

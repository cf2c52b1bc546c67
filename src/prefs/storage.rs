//! Which storage the prefs facet runs on: [`Backend`] holds the file's
//! side (`sqlite.rs`) or the database's (`postgres.rs`), picked from the
//! core's storage, and passes each call of [`PreferencesBackend`] on to it.

use super::backend::{Overrides, PreferencesBackend};
#[cfg(feature = "postgres")]
use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::types::StoredPreferences;
use crate::Result;
use crate::core::{Core, Storage, on_backend};

/// The preferences table of the vault's storage.
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

impl PreferencesBackend for Backend<'_> {
    async fn stored(&self, user_id: &str) -> Result<Option<StoredPreferences>> {
        on_backend!(self, b => b.stored(user_id).await)
    }

    async fn update<T: Send>(
        &self,
        user_id: &str,
        replace: bool,
        change: impl FnOnce(Option<Overrides>) -> Result<(StoredPreferences, T)> + Send,
    ) -> Result<T> {
        on_backend!(self, b => b.update(user_id, replace, change).await)
    }

    async fn reset(&self, user_id: &str) -> Result<bool> {
        on_backend!(self, b => b.reset(user_id).await)
    }
}

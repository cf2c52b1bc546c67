//! The storage contract of the preferences facet: what it asks of the
//! storage, in its own terms. `sqlite.rs` and `postgres.rs` implement it
//! with the same atomicity; [`Backend`] picks one.

use serde_json::Value;

use super::types::StoredPreferences;
use crate::Result;

/// A user's overrides as written, before any upgrade.
pub(crate) struct Overrides {
    pub(crate) document: Value,
    pub(crate) schema_version: i64,
}

/// What the preferences facet needs from its storage.
pub(crate) trait PreferencesBackend {
    /// A user's overrides as written (not upgraded); the file answers on
    /// the caller's thread.
    async fn stored(&self, user_id: &str) -> Result<Option<StoredPreferences>>;

    /// In one transaction that serialises every writer: reads the user's
    /// overrides (or none, if `replace`), hands them to `change` and stores
    /// the overrides it returns. Returns what `change` returned besides;
    /// if `change` fails, nothing is stored.
    async fn update<T: Send>(
        &self,
        user_id: &str,
        replace: bool,
        change: impl FnOnce(Option<Overrides>) -> Result<(StoredPreferences, T)> + Send,
    ) -> Result<T>;

    /// Deletes a user's overrides. Returns whether there were any.
    async fn reset(&self, user_id: &str) -> Result<bool>;
}

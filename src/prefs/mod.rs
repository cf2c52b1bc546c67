//! Preferences: one JSON document per user, merged over the application's
//! defaults, updated by JSON merge patch (RFC 7386), checked against the
//! defaults' types, with schema versions upgraded on read.
//!
//! The table keeps only the user's overrides (`document`), so a change of
//! defaults reaches every user who did not override that value. A patch's
//! `null` deletes an override, which brings the default back.
//!
//! Validation: a value whose key the defaults have must have the default's
//! JSON type (object, array, string, number, boolean; a `null` default takes
//! anything), and keys the defaults lack are refused unless
//! [`PreferencesConfig::allow_unknown_keys`]. Documents nest at most
//! [`MAX_PREFERENCE_DEPTH`] levels. Errors name the field by its path
//! (`search_defaults.limit`).
//!
//! This file holds the [`Preferences`] handle and the document rules (merge,
//! types, depth, upgrades); `config.rs` the application's side,
//! `backend.rs` the storage contract, `sqlite.rs` and `postgres.rs` every
//! statement of each backend, `storage.rs` the enum that picks one.

mod backend;
mod config;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{
    SEALED, check_sealed, erase_user as erase_user_pg, stored as export_user_pg,
};
mod sqlite;
pub(crate) use sqlite::export_user as export_user_in_file;
mod storage;
mod types;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::core::Core;
use crate::ids::check_user;
use crate::{Error, Result};
use backend::{Overrides, PreferencesBackend as _};
pub use config::{PreferencesConfig, Upgrade};
use storage::Backend;
pub use types::StoredPreferences;

/// The preferences facet of a vault; from [`Vault::preferences`](crate::Vault::preferences).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use serde_json::json;
/// use statevault::{PreferencesConfig, Vault, VaultOptions};
///
/// let vault = Vault::open(
///     VaultOptions::new(dir.path().join("app.db")).preferences(PreferencesConfig::seeds()),
/// )
/// .await?;
/// let prefs = vault.preferences();
/// prefs.patch("alice", &json!({"search_defaults": {"limit": 50}})).await?;
/// let merged = prefs.get("alice").await?;
/// assert_eq!(merged["search_defaults"], json!({"limit": 50, "include_explicit": true}));
/// assert!(prefs.patch("alice", &json!({"search_defaults": {"limit": "many"}})).await.is_err());
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Preferences<'a> {
    core: &'a Core,
    config: &'a PreferencesConfig,
}

impl<'a> Preferences<'a> {
    pub(crate) fn new(core: &'a Core, config: &'a PreferencesConfig) -> Self {
        Preferences { core, config }
    }

    fn backend(&self) -> Backend<'a> {
        Backend::of(self.core)
    }

    /// The user's preferences: the defaults with their overrides merged in.
    #[tracing::instrument(name = "preferences.get", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn get(&self, user_id: &str) -> Result<Value> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_user(user_id)?;
                let overrides = self.stored(user_id).await?.map(|s| s.document);
                let mut merged = self.config.defaults.clone();
                if let Some(overrides) = overrides {
                    merge_patch(&mut merged, &overrides);
                }
                Ok(merged)
            }
            .await,
            crate::trace::ok,
        )
    }

    /// The user's preferences as `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, user_id: &str) -> Result<T> {
        serde_json::from_value(self.get(user_id).await?).map_err(|e| Error::InvalidPreference {
            field: String::new(),
            reason: e.to_string(),
        })
    }

    /// The user's overrides, upgraded to the current schema version; `None`
    /// if the user has none. The file answers on the caller's thread.
    pub async fn stored(&self, user_id: &str) -> Result<Option<StoredPreferences>> {
        check_user(user_id)?;
        self.current(self.backend().stored(user_id).await?)
    }

    /// `stored` as read from the storage, upgraded to the current schema
    /// version.
    pub(crate) fn current(
        &self,
        stored: Option<StoredPreferences>,
    ) -> Result<Option<StoredPreferences>> {
        stored
            .map(|stored| {
                Ok(StoredPreferences {
                    document: self.upgraded(stored.document, stored.schema_version)?,
                    schema_version: self.config.version(),
                    updated_at: stored.updated_at,
                })
            })
            .transpose()
    }

    /// Runs the upgrades from `version` to the current one.
    fn upgraded(&self, mut document: Value, version: i64) -> Result<Value> {
        let current = self.config.version();
        if version > current || version < 1 {
            return Err(Error::InvalidPreference {
                field: "schema_version".into(),
                reason: format!(
                    "the stored document has version {version}; this application knows 1 to {current}"
                ),
            });
        }
        if version < current && self.config.adopted_version.is_some() {
            return Err(Error::InvalidPreference {
                field: "schema_version".into(),
                reason: format!(
                    "the stored document has version {version} and the application's schema is version {current}; \
                     only the application knows the upgrade (it runs on its next read or write)"
                ),
            });
        }
        for (i, upgrade) in self
            .config
            .upgrades
            .iter()
            .enumerate()
            .skip(usize::try_from(version - 1).unwrap_or(0))
        {
            upgrade(&mut document).map_err(|reason| Error::InvalidPreference {
                field: "schema_version".into(),
                reason: format!("upgrade from version {} failed: {reason}", i + 1),
            })?;
        }
        Ok(document)
    }

    /// Applies a JSON merge patch (RFC 7386) to the user's overrides, checks
    /// the result against the defaults, stores it, and returns the merged
    /// preferences. Read, patch and write are one transaction.
    #[tracing::instrument(name = "preferences.patch", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn patch(&self, user_id: &str, patch: &Value) -> Result<Value> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async { self.write(user_id, patch, false).await }.await,
            crate::trace::ok,
        )
    }

    /// Replaces the user's overrides with `value` (checked like a patch), in
    /// one transaction: a value the defaults refuse leaves the stored
    /// preferences as they were.
    #[tracing::instrument(name = "preferences.set", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn set_as<T: Serialize>(&self, user_id: &str, value: &T) -> Result<Value> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                self.write(user_id, &serde_json::to_value(value)?, true)
                    .await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Merges `patch` into the stored overrides (or into none, if
    /// `replace`), checks the result and stores it, in one transaction.
    async fn write(&self, user_id: &str, patch: &Value, replace: bool) -> Result<Value> {
        check_user(user_id)?;
        check_patch(patch, "a preferences patch must be a JSON object")?;
        self.backend()
            .update(user_id, replace, |stored| {
                let mut overrides = match stored {
                    Some(Overrides {
                        document,
                        schema_version,
                    }) => self.upgraded(document, schema_version)?,
                    None => Value::Object(Map::new()),
                };
                merge_patch(&mut overrides, patch);
                let merged = self.checked(&overrides)?;
                let new = StoredPreferences {
                    document: overrides,
                    schema_version: self.config.version(),
                    updated_at: self.core.now(),
                };
                Ok((new, merged))
            })
            .await
    }

    /// The defaults with `overrides` merged in, if they fit the defaults' types.
    fn checked(&self, overrides: &Value) -> Result<Value> {
        let mut merged = self.config.defaults.clone();
        merge_patch(&mut merged, overrides);
        check_types(
            &self.config.defaults,
            &merged,
            "",
            self.config.allow_unknown,
        )?;
        Ok(merged)
    }

    /// Within an import transaction ([`Vault::import_legacy`]): `patch`
    /// applied to no overrides, checked like any patch, stored unless the
    /// user already has preferences. Returns whether it was stored.
    pub(crate) async fn import(
        &self,
        tx: &mut sqlx::SqliteConnection,
        user_id: &str,
        patch: &Value,
    ) -> Result<bool> {
        check_user(user_id)?;
        check_patch(patch, "preferences must be a JSON object")?;
        let mut overrides = Value::Object(Map::new());
        merge_patch(&mut overrides, patch);
        self.checked(&overrides)?;
        let (version, now) = (self.config.version(), self.core.now());
        sqlite::insert_new(tx, user_id, &overrides, version, now).await
    }

    /// Deletes the user's overrides: the defaults apply again.
    #[tracing::instrument(name = "preferences.reset", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn reset(&self, user_id: &str) -> Result<bool> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_user(user_id)?;
                self.backend().reset(user_id).await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// Within the whole-user erase transaction.
    pub(crate) async fn erase_user(tx: &mut sqlx::SqliteConnection, user_id: &str) -> Result<u64> {
        sqlite::erase_user(tx, user_id).await
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The deepest nesting of arrays and objects a document may have, itself
/// counted as level 1. serde_json reads back at most 128 levels, so a
/// deeper document would be stored and then fail every read; preferences
/// need a handful.
pub const MAX_PREFERENCE_DEPTH: usize = crate::json::MAX_DEPTH;

/// Refuses a patch that is not a JSON object (saying `what`), or that is
/// nested too deep (see [`check_depth`]).
fn check_patch(patch: &Value, what: &str) -> Result<()> {
    if !patch.is_object() {
        return Err(Error::InvalidPreference {
            field: String::new(),
            reason: what.into(),
        });
    }
    check_depth(patch)
}

/// Refuses a patch nested deeper than [`MAX_PREFERENCE_DEPTH`], naming the
/// top-level field that is. (A merge never makes a document deeper than
/// the deeper of the document and the patch.)
fn check_depth(patch: &Value) -> Result<()> {
    let Value::Object(fields) = patch else {
        return Ok(());
    };
    match fields
        .iter()
        .find(|(_, v)| crate::json::deeper_than(v, MAX_PREFERENCE_DEPTH - 1))
    {
        Some((field, _)) => Err(Error::InvalidPreference {
            field: field.clone(),
            reason: format!("nested deeper than {MAX_PREFERENCE_DEPTH} levels"),
        }),
        None => Ok(()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Every value whose key the defaults have must have the default's type.
fn check_types(defaults: &Value, value: &Value, path: &str, allow_unknown: bool) -> Result<()> {
    let (Value::Object(defaults), Value::Object(value)) = (defaults, value) else {
        return Ok(());
    };
    for (key, v) in value {
        let field = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match defaults.get(key) {
            None if allow_unknown => {}
            None => {
                return Err(Error::InvalidPreference {
                    field,
                    reason: "not a known preference".into(),
                });
            }
            Some(Value::Null) => {}
            Some(d) if std::mem::discriminant(d) != std::mem::discriminant(v) => {
                return Err(Error::InvalidPreference {
                    field,
                    reason: format!("expected {}, found {}", kind(d), kind(v)),
                });
            }
            Some(d) => check_types(d, v, &field, allow_unknown)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let defaults = json!({"search": {"limit": 20}, "theme": "dark", "extra": null});
        let err =
            check_types(&defaults, &json!({"search": {"limit": "x"}}), "", false).unwrap_err();
        assert!(err.to_string().contains("search.limit"), "{err}");
        assert!(
            err.to_string()
                .contains("expected a number, found a string"),
            "{err}"
        );
        let err = check_types(&defaults, &json!({"colour": 1}), "", false).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        check_types(&defaults, &json!({"colour": 1}), "", true).unwrap();
        check_types(&defaults, &json!({"extra": [1, 2]}), "", false).unwrap();
    }
}

//! The application's side of preferences: its defaults, schema version and
//! upgrades ([`PreferencesConfig`]), and the copy of them a vault records in
//! the file for processes that know none of their own.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// A function that upgrades a stored document by one schema version.
pub type Upgrade = Arc<dyn Fn(&mut Value) -> std::result::Result<(), String> + Send + Sync>;

/// The application's defaults, schema version and upgrades.
///
/// ```
/// use serde_json::json;
/// use statevault::PreferencesConfig;
///
/// let config = PreferencesConfig::new(json!({"theme": "dark", "page_size": 20}))
///     // version 1 -> 2: "page_size" became "limit"
///     .upgrade(|doc| {
///         if let Some(size) = doc.as_object_mut().and_then(|o| o.remove("page_size")) {
///             doc["limit"] = size;
///         }
///         Ok(())
///     });
/// assert_eq!(config.version(), 2);
/// ```
#[derive(Clone)]
pub struct PreferencesConfig {
    pub(super) defaults: Value,
    pub(super) upgrades: Vec<Upgrade>,
    pub(super) allow_unknown: bool,
    record: bool,
    /// The schema version of a config read back from the file, which
    /// carries no upgrades.
    pub(super) adopted_version: Option<i64>,
}

impl PreferencesConfig {
    /// Defaults (a JSON object), schema version 1, unknown keys refused.
    pub fn new(defaults: Value) -> Self {
        PreferencesConfig {
            defaults,
            upgrades: Vec::new(),
            allow_unknown: false,
            record: true,
            adopted_version: None,
        }
    }

    /// The defaults of the seeds' music service (used by `statevault demo`).
    pub fn seeds() -> Self {
        PreferencesConfig::new(serde_json::json!({
            "audio_quality": "HIGH",
            "search_defaults": {"limit": 20, "include_explicit": true},
            "cache_preferences": {"enable_cache": true, "cache_duration": 300},
            "privacy": {"enable_analytics": true, "share_usage_data": false},
        }))
    }

    /// Adds the upgrade from the current version to the next; the schema
    /// version is 1 + the number of upgrades.
    pub fn upgrade(
        mut self,
        f: impl Fn(&mut Value) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.upgrades.push(Arc::new(f));
        self
    }

    /// Accept keys the defaults do not have (default: refuse them).
    pub fn allow_unknown_keys(mut self, yes: bool) -> Self {
        self.allow_unknown = yes;
        self
    }

    /// Whether opening a vault with these defaults records them in the file
    /// (default `true`), so that a process that knows no defaults of its own
    /// (the `statevault` CLI without a config file) checks the preferences
    /// it writes against the application's. A newer schema version is never
    /// replaced by an older one. Turn it off in a tool that is not the
    /// application (`statevault demo` does).
    pub fn record_in_file(mut self, yes: bool) -> Self {
        self.record = yes;
        self
    }

    /// The schema version documents are written in.
    pub fn version(&self) -> i64 {
        self.adopted_version
            .unwrap_or(1 + self.upgrades.len() as i64)
    }

    /// Whether this is the config that knows nothing: no defaults, every key
    /// accepted, no upgrades ([`PreferencesConfig::default`]). A vault
    /// opened with it checks writes against the defaults recorded in the
    /// file, if any.
    pub(crate) fn knows_nothing(&self) -> bool {
        self.upgrades.is_empty()
            && self.allow_unknown
            && self.adopted_version.is_none()
            && self.defaults.as_object().is_some_and(Map::is_empty)
    }

    /// What is recorded in the file when [`PreferencesConfig::record_in_file`]
    /// is on and the config knows something; `None` otherwise.
    pub(crate) fn to_recorded(&self) -> Option<String> {
        (self.record && !self.knows_nothing()).then(|| {
            serde_json::json!({
                "version": self.version(),
                "defaults": self.defaults,
                "allow_unknown_keys": self.allow_unknown,
            })
            .to_string()
        })
    }

    /// The config recorded in the file (by [`PreferencesConfig::to_recorded`]).
    pub(crate) fn from_recorded(text: &str) -> Result<PreferencesConfig> {
        let bad = |reason: &str| {
            Error::invalid(
                "vault_meta preferences_schema",
                format!("{reason} (fix or delete that row)"),
            )
        };
        let recorded: Value = serde_json::from_str(text).map_err(|_| bad("not JSON"))?;
        let version = recorded["version"]
            .as_i64()
            .filter(|v| *v >= 1)
            .ok_or_else(|| bad("no schema version of 1 or more"))?;
        let defaults = recorded["defaults"].clone();
        if !defaults.is_object() {
            return Err(bad("the defaults are not a JSON object"));
        }
        let allow_unknown = recorded["allow_unknown_keys"]
            .as_bool()
            .ok_or_else(|| bad("allow_unknown_keys is not a boolean"))?;
        Ok(PreferencesConfig {
            defaults,
            upgrades: Vec::new(),
            allow_unknown,
            record: false,
            adopted_version: Some(version),
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.defaults.is_object() {
            return Err(Error::invalid(
                "preferences.defaults",
                "must be a JSON object",
            ));
        }
        Ok(())
    }
}

impl Default for PreferencesConfig {
    /// No defaults, unknown keys accepted: the store keeps whatever it is
    /// given, unless the file records the application's defaults
    /// ([`PreferencesConfig::record_in_file`]); then those apply.
    fn default() -> Self {
        PreferencesConfig::new(Value::Object(Map::new())).allow_unknown_keys(true)
    }
}

impl fmt::Debug for PreferencesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreferencesConfig")
            .field("defaults", &self.defaults)
            .field("version", &self.version())
            .field("allow_unknown", &self.allow_unknown)
            .field("record", &self.record)
            .finish()
    }
}

//! What the preferences facet hands out.

use serde::Serialize;
use serde_json::Value;

use crate::clock::Timestamp;

/// A user's stored overrides, as the table has them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredPreferences {
    /// The overrides (not merged with the defaults).
    pub document: Value,
    /// The schema version they were written in.
    pub schema_version: i64,
    /// When they were last changed.
    pub updated_at: Timestamp,
}

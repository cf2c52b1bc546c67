//! The audit log's value types: what a caller appends ([`AuditEvent`]),
//! what the log returns ([`StoredEvent`]), how to filter it
//! ([`AuditQuery`]) and what verification found ([`ChainReport`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request to the service's API.
    ApiCall,
    /// Login, logout, token refresh, failed authentication.
    Auth,
    /// Reading or exporting someone's data.
    DataAccess,
    /// Something failed.
    Error,
    /// Consent given or withdrawn.
    Consent,
    /// An operator's action (erasure, retention, key rotation …).
    Admin,
}

/// Why the event may be kept (GDPR lawful basis, roughly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GdprCategory {
    /// Needed to provide the service.
    Necessary,
    /// Usage analytics.
    Analytics,
    /// Marketing.
    Marketing,
    /// The user's preferences.
    Preferences,
}

/// The name a kind or category has in the log (its serde name).
pub(crate) fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An event to append.
///
/// ```
/// use statevault::{AuditEvent, EventKind, GdprCategory};
///
/// let event = AuditEvent::new(EventKind::DataAccess, "playlist.read")
///     .user("alice")
///     .resource("playlist", "pl-42")
///     .details(serde_json::json!({"tracks": 12}))
///     .category(GdprCategory::Necessary)
///     .client_ip("203.0.113.7");
/// ```
#[derive(Clone)]
pub struct AuditEvent {
    pub(super) kind: EventKind,
    pub(super) action: String,
    pub(super) user_id: Option<String>,
    pub(super) session_id: Option<String>,
    pub(super) resource: Option<(String, String)>,
    pub(super) details: serde_json::Value,
    pub(super) category: GdprCategory,
    pub(super) ip: Option<String>,
    pub(super) user_agent: Option<String>,
}

impl AuditEvent {
    /// An event of `kind`, named `action` (`"login"`, `"playlist.update"` …),
    /// category [`GdprCategory::Necessary`].
    pub fn new(kind: EventKind, action: impl Into<String>) -> Self {
        AuditEvent {
            kind,
            action: action.into(),
            user_id: None,
            session_id: None,
            resource: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
            category: GdprCategory::Necessary,
            ip: None,
            user_agent: None,
        }
    }

    /// Who did it.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// In which session (its public id).
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// To what.
    pub fn resource(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.resource = Some((kind.into(), id.into()));
        self
    }

    /// Anything else, as JSON.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The GDPR category.
    pub fn category(mut self, category: GdprCategory) -> Self {
        self.category = category;
        self
    }

    /// The client's IP, stored as a keyed hash.
    pub fn client_ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// The client's user agent, stored as a keyed hash.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("kind", &self.kind)
            .field("action", &self.action)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// An event as the log has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the chain.
    pub seq: i64,
    /// uuid v7.
    pub id: String,
    /// When it was appended (the vault's clock).
    pub occurred_at: Timestamp,
    /// Who (cleared by erasure).
    pub user_id: Option<String>,
    /// In which session (cleared by erasure).
    pub session_id: Option<String>,
    /// `api_call`, `auth`, `data_access`, `error`, `consent`, `admin`.
    pub kind: String,
    /// What.
    pub action: String,
    /// To what kind of thing (cleared by erasure).
    pub resource_type: Option<String>,
    /// To which one (cleared by erasure).
    pub resource_id: Option<String>,
    /// Details (`{}` after erasure).
    pub details: serde_json::Value,
    /// `necessary`, `analytics`, `marketing`, `preferences`.
    pub gdpr_category: String,
    /// When its content was erased.
    pub erased_at: Option<Timestamp>,
}

/// A filter for [`Audit::query`](super::Audit::query); every part is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this user's events.
    pub user_id: Option<String>,
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
    /// At most this many, newest first (default 100, at most 100 000).
    pub limit: Option<u32>,
}

/// What [`Audit::verify`](super::Audit::verify) found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// Of which erased.
    pub erased: u64,
    /// The first `seq` checked (after the anchor).
    pub first_seq: Option<i64>,
    /// The last `seq` checked.
    pub last_seq: Option<i64>,
    /// The chain digest of the last event (hex): keep a copy elsewhere.
    pub head_digest: Option<String>,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenLink {
    /// The `seq` at which it breaks (or where a missing event should be).
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

//! statevault keeps all of a service's local state in one encrypted SQLite
//! file: sessions, a two-level cache, rate-limit buckets and violations, an
//! audit log, preferences and metrics. A service opens it as a [`Vault`]; an
//! operator inspects it with SQLite tools and the `statevault` CLI.
//!
//! # Layout
//!
//! Four layers, each importing only the ones below it (`tests/layers.rs`
//! checks that no file of `src/` imports a file that imports it back):
//!
//! - [`Vault`] (`vault/`) is the handle a service opens: it composes the
//!   facets and owns the work that crosses them: user export and erasure
//!   (`users`), retention (`retention`), [health](crate::HealthReport),
//!   backup, restore and rekey (`backup`), the [legacy
//!   import](crate::Vault::import_legacy), the background flush and sweep.
//!   [`VaultOptions`] and [`Config`] (`statevault.toml`) say how it opens.
//!   Beside it, with the feature `tower`: `SessionLayer` and
//!   `RateLimitLayer` (`layers/`), tower middleware over a vault.
//! - The facets, one folder each, each holding the core and its own state
//!   and never another facet: [`sessions`](crate::Sessions),
//!   [`cache`](crate::Cache), [`limits`](crate::Limits),
//!   [`audit`](crate::Audit), [`preferences`](crate::Preferences),
//!   [`metrics`](crate::Metrics). A facet's `mod.rs` has its API and its
//!   logic; its `sqlite.rs` has all of its SQL, behind a small trait that
//!   another database can implement.
//! - `core`: what every facet shares: the store, the [`Clock`], the secret
//!   behind [`Vault::keyed_hash`], and `vault_meta` (only `core::meta`
//!   reads and writes it).
//! - `store`: the file itself: the key (SQLCipher 4, through
//!   `sqlite3_key_v2`), pragmas, WAL, the one sqlx writer, the sqlx read
//!   pool, the rusqlite hot-path connections, migrations, whole-file copies
//!   and checks. Its module docs say which driver does what and why.
//!
//! Below them all: [`Key`] (keys and where they come from; zeroized, never
//! shown), [`Clock`] (time, injected), and [`Error`] (the one error type).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> statevault::Result<()> {
//! use statevault::{Key, Vault, VaultOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let vault = Vault::open(
//!     VaultOptions::new(dir.path().join("state.db")).key(Key::generate()?),
//! )
//! .await?;
//! let rows = vault.query_read_only("SELECT count(*) AS n FROM sessions").await?;
//! assert_eq!(rows.rows[0][0], 0);
//! vault.close().await?;
//! # Ok(())
//! # }
//! ```

mod audit;
mod backup;
mod cache;
mod clock;
mod config;
mod core;
mod error;
mod health;
mod ids;
mod json;
mod key;
#[cfg(feature = "tower")]
mod layers;
mod legacy;
mod limits;
mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
mod prefs;
mod retention;
#[cfg(feature = "postgres")]
mod seal;
mod sessions;
mod store;
#[cfg(feature = "tower-sessions")]
mod tower_sessions;
mod trace;
mod users;
mod vault;

pub use audit::{
    Audit, AuditConfig, AuditEvent, AuditQuery, BrokenLink, ChainReport, EventKind, GdprCategory,
    StoredEvent,
};
pub use backup::{BACKUP_RETENTION, BackupConfig, BackupReport, BackupVerification, Recovery};
pub use cache::{
    Cache, CacheConfig, CacheKey, CacheStats, L1Stats, L2Stats, MAX_KEY_BYTES, NamespaceStats,
    SetOptions, SweepReport as CacheSweepReport,
};
pub use clock::{Clock, FakeClock, SystemClock, Timestamp};
pub use config::{CONFIG_FILE, Config};
pub use error::{Error, Result};
pub use health::{Component, HealthConfig, HealthReport, HealthStatus};
pub use ids::MAX_ID_BYTES;
pub use key::{KEY_ENV, Key, KeySource, default_key_file};
#[cfg(feature = "tower")]
pub use layers::{
    CookieConfig, CurrentSession, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, RateLimitService,
    SameSite, SessionLayer, SessionService, TokenSource, rate_limit_headers,
};
pub use legacy::{ImportOutcome, ImportReport, LegacyFile, LegacyKind};
pub use limits::{
    ClientInfo, Decision, Limit, LimitStatus, Limits, LimitsConfig, Penalty, ResetCounts,
    SweepCounts, ViolationRecord, Window, WindowStatus,
};
// `crate::`: with feature `metrics`, `metrics` alone is also the crate.
#[cfg(feature = "metrics")]
pub use crate::metrics::MetricsRecorder;
pub use crate::metrics::{
    API_REQUEST_DURATION, API_REQUESTS, AUTH_ATTEMPTS, AuthCounts, EndpointErrors, FileSizes,
    MAX_BINS, MetricKind, Metrics, MetricsConfig, MetricsReport, MetricsSweep, RELATIVE_ERROR,
    SeriesPoint, SeriesSummary, Summary, sanitize_name,
};
pub use prefs::{
    MAX_PREFERENCE_DEPTH, Preferences, PreferencesConfig, StoredPreferences, Upgrade, merge_patch,
};
pub use retention::SweepReport;
pub use sessions::{
    ExpiryReason, ExportedSession, IssuedSession, MAX_SESSION_MEMORY_ENTRIES, NewSession, Secret,
    Session, SessionConfig, Sessions, Validation, WhenFull,
};
pub use store::{CIPHER_PASSES, Check, CheckReport, MigrationStatus, Synchronous};
#[cfg(feature = "tower-sessions")]
pub use tower_sessions::TowerSessionStore;
pub use users::{ErasureReport, UserExport};
pub use vault::{DB_ENV, DEFAULT_DB, Info, Rows, Vault, VaultOptions, WriteCounts};

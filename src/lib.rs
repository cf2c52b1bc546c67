//! statevault keeps all of a service's local state in one encrypted SQLite
//! file: sessions, a two-level cache, rate-limit buckets and violations, an
//! audit log, preferences and metrics. A service opens it as a [`Vault`]; an
//! operator inspects it with SQLite tools and the `statevault` CLI.
//!
//! # Layout
//!
//! - [`vault`](crate::Vault): the handle and its options; whole-file
//!   operations (info, check, read-only SQL, close).
//! - `store`: the file itself. The key (SQLCipher 4, through
//!   `sqlite3_key_v2`), pragmas, WAL, the one sqlx writer, the sqlx read
//!   pool, the rusqlite hot-path readers, migrations. Its module docs explain
//!   which driver does what and why.
//! - [`sessions`](crate::Sessions): bearer-token sessions: create, validate
//!   on the caller's thread, rotate, revoke, cap per user, CSRF, typed data.
//! - [`audit`](crate::Audit): the hash-chained audit log, verifiable after
//!   erasure and retention.
//! - [`preferences`](crate::Preferences): per-user JSON over application
//!   defaults, merge-patched, type-checked, upgraded on read.
//! - [`limits`](crate::Limits): rate limits (token buckets with several
//!   windows, violations, escalating penalties), in memory and written
//!   behind, or shared between processes through the file.
//! - [`cache`](crate::Cache): the two-level cache (L1 in memory, L2 zstd
//!   blobs in the file), with a write-behind buffer that [`Vault::flush`] writes.
//! - [`metrics`](crate::Metrics): counters, gauges and timings aggregated
//!   in memory and written per interval with a mergeable sketch;
//!   percentiles over any range, Prometheus exposition.
//! - [`health`](crate::HealthReport): each component healthy, warning or
//!   critical, with the reason.
//! - [`legacy`](crate::Vault::import_legacy): import of the seeds' old file
//!   layout (session, rate limits, L2 cache files, preferences), one
//!   transaction per file, idempotent.
//! - [`clock`](crate::Clock): time, injected; every facet reads the vault's clock.
//! - [`key`](crate::Key): keys and where they come from; zeroized, never shown.
//! - [`error`](crate::Error): the one error type.
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
mod legacy;
mod limits;
mod metrics;
mod prefs;
mod retention;
mod sessions;
mod store;
#[cfg(feature = "tower-sessions")]
mod tower_sessions;
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
pub use legacy::{ImportOutcome, ImportReport, LegacyFile, LegacyKind};
pub use limits::{
    ClientInfo, Decision, Limit, LimitStatus, Limits, LimitsConfig, Penalty, ResetCounts,
    SweepCounts, ViolationRecord, Window, WindowStatus,
};
pub use metrics::{
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
pub use vault::{DB_ENV, DEFAULT_DB, Info, Rows, Vault, VaultOptions};

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
//! - [`cache`](crate::Cache): the two-level cache (L1 in memory, L2 zstd
//!   blobs in the file), with a write-behind buffer that [`Vault::flush`] writes.
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

mod cache;
mod clock;
mod error;
mod key;
mod store;
mod vault;

pub use cache::{
    Cache, CacheConfig, CacheKey, CacheStats, L1Stats, L2Stats, MAX_KEY_BYTES, NamespaceStats,
    SetOptions, SweepReport,
};
pub use clock::{Clock, FakeClock, SystemClock, Timestamp};
pub use error::{Error, Result};
pub use key::{KEY_ENV, Key, KeySource, default_key_file};
pub use store::{Check, CheckReport, MigrationStatus, Synchronous};
pub use vault::{DB_ENV, DEFAULT_DB, Info, Rows, Vault, VaultOptions};

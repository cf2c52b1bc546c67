//! The one error type of statevault.
//!
//! Every variant is something a caller can act on: a wrong key is not a corrupt
//! file, and a schema from the future is not a failed migration. Sources are
//! kept (not flattened into strings) so that `std::error::Error::source` works.
//! No message ever contains key material or a session token.

use std::path::PathBuf;

/// Everything that can go wrong in statevault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is encrypted and the key given does not decrypt it.
    #[error(
        "wrong key: {path} cannot be decrypted with the key given (or it is not a statevault database)"
    )]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },

    /// The file is encrypted, but no key was given.
    #[error(
        "{path} is encrypted and no key was given: pass a key, --key-file, STATEVAULT_KEY, or put it in {path}.key"
    )]
    KeyRequired {
        /// The database file.
        path: PathBuf,
    },

    /// The file exists but no key could be found for it.
    #[error(
        "no key for {path}: the key file {key_file} does not exist and STATEVAULT_KEY is not set"
    )]
    KeyMissing {
        /// The database file.
        path: PathBuf,
        /// Where the key file was looked for.
        key_file: PathBuf,
    },

    /// A key was given for a file that is plain (unencrypted) SQLite.
    #[error(
        "{path} is a plain (unencrypted) SQLite file but a key was given: open it with --no-encryption"
    )]
    NotEncrypted {
        /// The database file.
        path: PathBuf,
    },

    /// A key (from a key file, the environment or the API) is malformed.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong with it (never the key itself).
        reason: String,
    },

    /// The file is not a SQLite or SQLCipher database at all.
    #[error("{path} is not a database: {reason}")]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },

    /// The file is shorter than its pages say it must be.
    #[error(
        "{path} is truncated: {len} bytes is not a whole number of {page_size}-byte pages{detail}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The page size that the length was checked against.
        page_size: u64,
        /// More on what is missing, or empty.
        detail: String,
    },

    /// SQLite found damaged pages or structures.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's (or SQLCipher's) words.
        detail: String,
    },

    /// The file was migrated by a newer statevault: opening it could damage it.
    #[error(
        "schema version {found} is newer than this build supports ({supported}): upgrade statevault; the file was not touched"
    )]
    SchemaTooNew {
        /// The newest migration applied to the file.
        found: i64,
        /// The newest migration this build knows.
        supported: i64,
    },

    /// An applied migration differs from the one this build embeds.
    #[error(
        "migration {version} applied to the file differs from the one in this build ({reason})"
    )]
    MigrationMismatch {
        /// The migration's version.
        version: i64,
        /// How it differs.
        reason: &'static str,
    },

    /// The database does not exist and creating it was not allowed.
    #[error("{path} does not exist (run `statevault init` to create it)")]
    Missing {
        /// The database file.
        path: PathBuf,
    },

    /// A configuration file is malformed: a key it does not know, a value
    /// of the wrong type or out of range.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The key and what is wrong with it.
        detail: String,
    },

    /// An argument was out of range or malformed.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was wrong (a parameter or field name).
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// Creating a session would pass the per-user cap, and the policy is to refuse.
    #[error("user {user_id} already has {max} live sessions (the limit)")]
    SessionLimit {
        /// The user.
        user_id: String,
        /// The cap (`SessionConfig::max_per_user`).
        max: usize,
    },

    /// The operation needs a live session and the token is not one.
    #[error("not a live session: {reason}")]
    SessionNotValid {
        /// Why: unknown token, expired, revoked, device fingerprint mismatch, …
        reason: &'static str,
    },

    /// A preferences document or patch does not fit the defaults' schema.
    #[error("invalid preference {field}: {reason}")]
    InvalidPreference {
        /// The field's path (`search_defaults.limit`); empty for the whole document.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A rate limit in the configuration is invalid.
    #[error("invalid limit {limit:?}: {field}: {reason}")]
    InvalidLimit {
        /// The limit's name.
        limit: String,
        /// The field at fault (`windows`, `period`, `tokens`, `burst`, `name`).
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// No limit of this name is configured.
    #[error("unknown limit {name:?}")]
    UnknownLimit {
        /// The name asked for.
        name: String,
    },

    /// A request costs more than the limit's capacity: it can never be
    /// allowed, however long the caller waits.
    #[error("a cost of {cost} never fits limit {limit:?} (capacity {capacity})")]
    NeverFits {
        /// The limit's name.
        limit: String,
        /// The cost asked for.
        cost: u32,
        /// The smallest capacity among the limit's windows.
        capacity: f64,
    },

    /// The vault was closed; open it again to use it.
    #[error("the vault is closed")]
    Closed,

    /// A value is larger than the cache accepts.
    #[error("cache value of {size} bytes is larger than the maximum of {max} bytes")]
    CacheValueTooLarge {
        /// The value's size in bytes.
        size: u64,
        /// The configured maximum.
        max: u64,
    },

    /// A cache entry in the file could not be decoded; it has been dropped.
    #[error("cache entry {key:?} is corrupt and was dropped: {detail}")]
    CacheCorrupt {
        /// The entry's key.
        key: String,
        /// What was wrong with it.
        detail: String,
    },

    /// An I/O error on one of the vault's files.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from sqlx (writer, admin queries, migrations).
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),

    /// An error from a migration run by sqlx.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// An error from a hot-path reader connection.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),

    /// A JSON document could not be encoded or decoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// `Result` with statevault's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the file itself is damaged (corrupt pages, truncated, not a
    /// database) rather than opened wrongly (a wrong or missing key).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Truncated { .. } | Error::NotADatabase { .. }
        )
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }
}

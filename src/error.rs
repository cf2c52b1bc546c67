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
        "wrong key: {path} cannot be decrypted with {key} (or it is not a statevault database)"
    )]
    WrongKey {
        /// The database file.
        path: PathBuf,
        /// Which key was tried: its form (raw key or passphrase) and where
        /// it was read from, never the key itself.
        key: String,
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

    /// SQLite found damaged pages or structures, on open or in any later
    /// read or write (a page whose HMAC fails reads as corrupt).
    #[error("{} is corrupt: {detail}", file_or_vault(.path))]
    Corrupt {
        /// The file, when known (damage met by a query after open does not
        /// say which file it was in).
        path: Option<PathBuf>,
        /// SQLite's (or SQLCipher's) words.
        detail: String,
    },

    /// A write found no room: the disk is full (SQLite's `SQLITE_FULL`).
    /// The write was rolled back; everything acknowledged before it is intact.
    #[error("the disk is full ({detail}): free some space and retry")]
    DiskFull {
        /// SQLite's words and result code.
        detail: String,
    },

    /// A write was refused because the file cannot be written: it, or its
    /// directory (where SQLite makes the -wal and -shm files), is
    /// read-only. A vault whose directory cannot be written and that no
    /// one is writing is opened read-only as it is: reads work, writes
    /// fail with this.
    #[error("{} cannot be written ({detail}): it or its directory is read-only", file_or_vault(.path))]
    ReadOnly {
        /// The file, when known.
        path: Option<PathBuf>,
        /// SQLite's words.
        detail: String,
    },

    /// The operating system failed a read or write of the vault's files
    /// (SQLite's `SQLITE_IOERR` family): a file-size limit or quota reached
    /// (`EFBIG`), a failing disk, a vanished mount. A failed write was rolled
    /// back; everything acknowledged before it is intact.
    #[error(
        "storage I/O failed ({detail}): is the disk full, over a quota or file-size limit, or failing?"
    )]
    StorageIo {
        /// SQLite's words and (extended) result code.
        detail: String,
    },

    /// The file or database was migrated by a newer statevault: using it
    /// could damage it.
    #[error(
        "schema version {found} is newer than this build supports ({supported}): upgrade statevault; the vault was not touched"
    )]
    SchemaTooNew {
        /// The newest migration applied to the vault.
        found: i64,
        /// The newest migration this build knows.
        supported: i64,
    },

    /// An applied migration differs from the one this build embeds.
    #[error(
        "migration {version} applied to the vault differs from the one in this build ({reason})"
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

    /// The database file is there but empty (0 bytes), and creating a vault
    /// in it was not allowed.
    #[error("{path} is empty (0 bytes): run `statevault init` to create a vault in it")]
    Empty {
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
    #[error("invalid {}: {reason}", preference_field(.field))]
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

    /// The vault was opened outside a tokio runtime; its connections and
    /// background flushes run on one.
    #[error(
        "statevault needs a tokio runtime: open the vault inside one (#[tokio::main], or Runtime::block_on)"
    )]
    NoRuntime,

    /// The vault was closed; open it again to use it.
    #[error("the vault is closed")]
    Closed,

    /// `Metrics::install_recorder` (feature `metrics`): this process already
    /// has a global `metrics` recorder, and the `metrics` crate sets it only
    /// once per process.
    #[error("a global `metrics` recorder is already installed in this process")]
    RecorderAlreadyInstalled,

    /// [`Vault::erase_user`](crate::Vault::erase_user) deleted the user's
    /// rows, but old copies of them stay in the WAL: another connection
    /// (usually another process) kept a read transaction open for longer
    /// than the busy timeout. Erasing again once it has ended finishes the job.
    #[error(
        "the user's rows are deleted, but old copies remain in the WAL: another connection \
         kept reading it for {waited_ms} ms; erase the user again once it is done"
    )]
    ErasureIncomplete {
        /// How long the erasure waited for the readers, in milliseconds.
        waited_ms: u64,
    },

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

    /// Another connection (usually another process) held the file's write
    /// lock for longer than the busy timeout
    /// ([`VaultOptions::busy_timeout`](crate::VaultOptions::busy_timeout)).
    /// Nothing was written; the operation can be retried.
    #[error(
        "the vault is busy: another connection held its write lock past the busy timeout ({detail}); retry"
    )]
    Busy {
        /// What SQLite said.
        detail: String,
    },

    /// An operation that needs the file to itself (restore, rekey) found it
    /// open in another process. Nothing was changed.
    #[error(
        "{} is open in another process (the service, another CLI command): stop it and try the {operation} again",
        .path.display()
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
        /// What was refused: `"restore"`, `"rekey"`.
        operation: &'static str,
    },

    /// A database server could not be reached, or refused the connection
    /// (feature `postgres`). Nothing was written.
    #[error("cannot connect to {url}: {detail}")]
    Unreachable {
        /// The server's URL, without its password.
        url: String,
        /// What the driver said.
        detail: String,
    },

    /// What was asked works on the vault file but not (or not yet) on a
    /// PostgreSQL database (feature `postgres`). Nothing was written.
    #[error("{what} does not work on a PostgreSQL database: {reason}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// Why, or what to use instead.
        reason: &'static str,
    },

    /// A value stored in the vault cannot be used (a `vault_meta` row, a
    /// metric's sketch): the file or database is readable, but that value
    /// was written by something other than statevault, or damaged.
    #[error("{what} in the vault cannot be used: {detail}")]
    BadData {
        /// What was read: `"vault_meta hash_salt"`, `"metric sketch"`.
        what: String,
        /// What is wrong with it, and what to do.
        detail: String,
    },

    /// The vault was opened without applying its pending migrations
    /// ([`VaultOptions::migrate`](crate::VaultOptions::migrate)), and the
    /// operation needs them.
    #[error("the vault has pending migrations: run `statevault migrate` (or Vault::migrate) first")]
    MigrationsPending,

    /// Something statevault itself got wrong: a background task panicked, or
    /// the operating system's random generator failed.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },

    /// The database driver failed in a way none of the variants above
    /// describes. The driver's own error is the [`source`](std::error::Error::source)
    /// (a `sqlx::Error`, `rusqlite::Error` or sqlx `MigrateError`, for
    /// logging or downcasting); it is not part of this enum, so that a
    /// driver's new major version is not a breaking change here.
    #[error("{}", driver_message(.source.as_ref()))]
    Database {
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

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

    /// A driver error no other variant describes.
    pub(crate) fn database(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Database {
            source: Box::new(e),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }
}

/// How [`Error::Database`] shows the driver's error: a PostgreSQL server's
/// error in the server's own words, with its SQLSTATE code (sqlx's display
/// adds the line of the server's C source that raised it, which means
/// nothing to an operator); any other as the driver shows it.
fn driver_message(source: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    let server = source
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .filter(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_none());
    match server {
        Some(db) => match db.code() {
            Some(code) => format!("error returned from database: {} ({code})", db.message()),
            None => format!("error returned from database: {}", db.message()),
        },
        None => source.to_string(),
    }
}

/// How [`Error::InvalidPreference`] names its field: the whole document
/// when the path is empty.
fn preference_field(field: &str) -> String {
    if field.is_empty() {
        "preferences".to_owned()
    } else {
        format!("preference {field}")
    }
}

/// How [`Error::Corrupt`] names its file.
fn file_or_vault(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| "the vault file".to_owned(), |p| p.display().to_string())
}

/// The typed error for a SQLite result code that says something about the
/// storage itself (full, failing, damaged), whichever driver met it.
fn storage_failure(code: i32, detail: impl FnOnce() -> String) -> Option<Error> {
    use libsqlite3_sys::{SQLITE_BUSY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY};
    let detail = || format!("{} (SQLite code {code})", detail());
    match code & 0xff {
        SQLITE_FULL => Some(Error::DiskFull { detail: detail() }),
        SQLITE_BUSY => Some(Error::Busy { detail: detail() }),
        SQLITE_IOERR => Some(Error::StorageIo { detail: detail() }),
        SQLITE_CORRUPT => Some(Error::Corrupt {
            path: None,
            detail: detail(),
        }),
        SQLITE_READONLY => Some(Error::ReadOnly {
            path: None,
            detail: detail(),
        }),
        _ => None,
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::PoolClosed = e {
            return Error::Closed;
        }
        let typed = e.as_database_error().and_then(|db| {
            // SQLite's numeric codes only: PostgreSQL's SQLSTATEs are digits too.
            db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
            let code = db.code()?.parse::<i32>().ok()?;
            storage_failure(code, || db.message().to_owned())
        });
        typed.unwrap_or_else(|| Error::database(e))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
            e => Error::database(e),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        let typed = match &e {
            rusqlite::Error::SqliteFailure(failure, message) => {
                storage_failure(failure.extended_code, || {
                    message.clone().unwrap_or_else(|| failure.to_string())
                })
            }
            _ => None,
        };
        typed.unwrap_or_else(|| Error::database(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's own answers, through rusqlite: a full database
    /// (`max_page_count` reached) and a damaged one.
    #[test]
    fn storage_failures_get_their_own_variants() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); PRAGMA max_page_count = 3;")
            .unwrap();
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap_err();
        let err = Error::from(full);
        assert!(matches!(err, Error::DiskFull { .. }), "{err:?}");
        assert!(err.to_string().contains("SQLite code 13"), "{err}");

        let io = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(778), None);
        assert!(matches!(Error::from(io), Error::StorageIo { .. }));
        let corrupt = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(11), None);
        let err = Error::from(corrupt);
        assert!(matches!(err, Error::Corrupt { path: None, .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("the vault file is corrupt"),
            "{err}"
        );
        let other = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(19), None);
        assert!(matches!(Error::from(other), Error::Database { .. }));
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert!(matches!(Error::from(busy), Error::Busy { .. }));
    }
}

//! `statevault.toml`: every setting of a vault in one file.
//!
//! The sections follow the seeds' storage configuration (session
//! management, caching, rate limiting, audit logging, metrics collection,
//! user preferences, cleanup, storage paths), plus `[storage]` for the file
//! itself, `[backup]` and `[health]`. Every key is optional and defaults to
//! the library's default; a key the file does not know, or a value of the
//! wrong type or out of range, is an [`Error::Config`] that names the key.
//! Durations are whole numbers with the unit in the key's name.
//!
//! Two environment variables override the file, for containers:
//! `STATEVAULT_DB` (the database path) and `STATEVAULT_KEY` (the key
//! itself, instead of a key file).
//!
//! ```
//! use statevault::Config;
//!
//! let config = Config::parse(r#"
//!     [session_management]
//!     idle_timeout_minutes = 30
//!
//!     [caching.ttl_seconds]
//!     search = 60
//!
//!     [rate_limiting.limits.exports]
//!     per_hour = 10
//!     strict = true
//! "#)?;
//! let options = config.options()?;
//! # let _ = options;
//!
//! let err = Config::parse("[caching]\nl1_size = 5").unwrap_err();
//! assert!(err.to_string().contains("caching"));
//! assert!(err.to_string().contains("l1_size"));
//! # Ok::<(), statevault::Error>(())
//! ```

mod file;

use std::path::{Path, PathBuf};
use std::time::Duration;

use file::{File, HOUR, SECOND, secs};

use crate::error::{Error, Result};
use crate::key::{KEY_ENV, KeySource};
use crate::vault::{DB_ENV, DEFAULT_DB, VaultOptions};

/// The file name looked for beside the database when no `--config` is given.
pub const CONFIG_FILE: &str = "statevault.toml";

/// A parsed `statevault.toml` (see the module docs for the keys).
#[derive(Debug, Default)]
pub struct Config {
    /// The directory relative paths in the file are resolved against.
    base: PathBuf,
    file: File,
}

impl Config {
    /// Reads and checks the file at `path`; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config = parse(&text).map_err(|detail| Error::Config {
            path: path.to_owned(),
            detail,
        })?;
        config.base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// `statevault.toml` in `dir`, if there is one.
    pub fn discover(dir: &Path) -> Result<Option<Config>> {
        let path = dir.join(CONFIG_FILE);
        if path.is_file() {
            Config::load(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Parses TOML text; relative paths in it are relative to the current
    /// directory.
    pub fn parse(text: &str) -> Result<Config> {
        parse(text).map_err(|detail| Error::Config {
            path: PathBuf::from("<text>"),
            detail,
        })
    }

    /// The database the file names (`storage_paths.database`), resolved,
    /// unless `STATEVAULT_DB` overrides it.
    pub fn database(&self) -> Option<PathBuf> {
        if std::env::var_os(DB_ENV).is_some() {
            return None;
        }
        self.file
            .storage_paths
            .database
            .as_ref()
            .map(|p| match crate::vault::url_scheme(p) {
                // Kept whole, so that opening refuses it as a URL.
                Some(_) => p.clone(),
                None => self.base.join(p),
            })
    }

    /// Options for the vault the file describes: the database from
    /// `STATEVAULT_DB`, else `storage_paths.database`, else `statevault.db`,
    /// with every setting of the file applied.
    pub fn options(&self) -> Result<VaultOptions> {
        let path = std::env::var_os(DB_ENV)
            .map(PathBuf::from)
            .or_else(|| self.database())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
        self.apply(VaultOptions::new(path))
    }

    /// Applies the file's settings to `options`, keeping its path. The key
    /// comes from `STATEVAULT_KEY` when set, else `storage_paths.key_file`,
    /// else as `options` had it; `encryption = false` opens a plain file.
    pub fn apply(&self, options: VaultOptions) -> Result<VaultOptions> {
        let f = &self.file;
        let mut options = options;
        if f.storage_paths.encryption == Some(false) {
            options = options.key_source(KeySource::None);
        } else if let Some(key_file) = &f.storage_paths.key_file
            && std::env::var_os(KEY_ENV).is_none()
        {
            options = options.key_source(KeySource::File(self.base.join(key_file)));
        }
        let s = &f.storage;
        if let Some(sync) = s.synchronous {
            options = options.synchronous(sync.into());
        }
        if let Some(n) = s.readers {
            options = options.readers(n);
        }
        if let Some(mb) = s.page_cache_budget_mb() {
            options = options.page_cache_budget(mb.saturating_mul(1 << 20));
        }
        if let Some(ms) = s.busy_timeout_ms {
            options = options.busy_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = s.flush_interval_ms {
            options = options.flush_interval(Duration::from_millis(ms));
        }
        if let Some(n) = s.feed_retention_seconds {
            options = options.feed_retention(secs(n, SECOND));
        }
        if let Some(cleanup) = f.cleanup.enabled {
            let every = secs(f.cleanup.interval_seconds.unwrap_or(HOUR), SECOND);
            options = options.sweep_interval(cleanup.then_some(every));
        } else if let Some(every) = f.cleanup.interval_seconds {
            options = options.sweep_interval(Some(secs(every, SECOND)));
        }
        Ok(options
            .sessions(f.session_management.config())
            .cache(f.caching.config())
            .limits(f.rate_limiting.config())
            .audit(f.audit_logging.config())
            .metrics(f.metrics_collection.config())
            .preferences(f.user_preferences.config()?)
            .backups(
                f.backup
                    .config(f.storage_paths.backups.as_ref().map(|p| self.base.join(p))),
            )
            .health(f.health.config()))
    }
}

fn parse(text: &str) -> std::result::Result<Config, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| describe(text, None, &e))?;
    let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        describe(text, Some(path), e.inner())
    })?;
    file.check()?;
    Ok(Config {
        base: PathBuf::new(),
        file,
    })
}

/// `key: message (line N)`, the key being the table for an unknown key.
fn describe(text: &str, key: Option<String>, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let mut out = match key.filter(|k| k != ".") {
        Some(key) => format!("{key}: {}", e.message().trim()),
        None => e.message().trim().to_owned(),
    };
    if let Some(line) = line {
        out.push_str(&format!(" (line {line})"));
    }
    out
}

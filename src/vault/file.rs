//! Whole-file operations on an open [`Vault`]: what the file is, its
//! integrity, one read-only statement.

use super::{Info, Rows, Vault, VaultOptions};
use crate::core::meta;
use crate::store::{CheckReport, Store};
use crate::{Error, Result};

impl Vault {
    /// What the file is: size, encryption, journal mode, schema, rows per table.
    pub async fn info(&self) -> Result<Info> {
        let description = self.store()?.describe().await?;
        let applied = self.store()?.applied()?;
        let files = crate::metrics::file_sizes(self.path());
        Ok(Info {
            path: self.path().to_owned(),
            file_bytes: files.file_bytes,
            wal_bytes: files.wal_bytes,
            encrypted: self.is_encrypted(),
            cipher_version: description.cipher_version,
            journal_mode: description.journal_mode,
            schema_version: applied.version(),
            latest_schema_version: crate::store::latest_version(),
            created_at: self.meta(meta::CREATED_AT).await?,
            key_created_at: self.meta(meta::KEY_CREATED_AT).await?,
            tables: description.tables,
        })
    }

    /// Integrity checks of the file: SQLCipher's `cipher_integrity_check`
    /// (every page's HMAC) when encrypted, then SQLite's `integrity_check` and
    /// `foreign_key_check`. A check that cannot even run counts as failed.
    /// On PostgreSQL: every sealed value opens with the vault's key (one
    /// check per table: sessions, preferences, audit events, violations,
    /// cache entries).
    pub async fn check(&self) -> Result<CheckReport> {
        #[cfg(feature = "postgres")]
        if let crate::core::Storage::Postgres(db) = self.core().storage() {
            if self.core().is_closed() {
                return Err(Error::Closed);
            }
            return Ok(CheckReport {
                checks: vec![
                    crate::sessions::check_sealed(db).await?,
                    crate::prefs::check_sealed(db).await?,
                    crate::audit::check_sealed(db).await?,
                    crate::limits::check_sealed(db).await?,
                    crate::cache::check_sealed(db).await?,
                ],
            });
        }
        if self.store()?.sqlx_reader().is_closed() {
            return Err(Error::Closed);
        }
        self.store()?.check().await
    }

    /// Checks the file at `options`' path without opening it as a vault, so
    /// that files too damaged to open still get a report naming what is
    /// wrong. Writes nothing, creates nothing.
    pub async fn check_file(options: &VaultOptions) -> Result<CheckReport> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        options.validate()?;
        Store::check_file(options.spec()).await
    }

    /// Runs one statement on a read-only connection and returns every row.
    /// Only `SELECT`, `WITH`, `VALUES`, `EXPLAIN` and the PRAGMAs that only
    /// read are run; anything else (a write, `VACUUM`, `ATTACH`, a key or
    /// setting PRAGMA, a second statement) is [`Error::InvalidInput`] before
    /// SQLite sees it, and a `WITH` that writes is refused by SQLite, with
    /// the same error.
    pub async fn query_read_only(&self, sql: &str) -> Result<Rows> {
        let (columns, rows) = self.store()?.query_read_only(sql).await?;
        Ok(Rows { columns, rows })
    }
}

//! Schema migrations: sqlx's, embedded, in sqlx's own bookkeeping table.
//!
//! Files migrated by stock `sqlx migrate run` (plain files) and by statevault
//! share `_sqlx_migrations`, so either can take over from the other. Before
//! anything runs, the applied list is compared with the embedded one: a file
//! from a newer build, or one whose applied migration differs from ours, is
//! refused untouched.

use sqlx::migrate::Migrator;

use crate::{Error, Result};

/// The migrations in `migrations/sqlite/`, embedded at build time.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// One migration, as this build knows it and as the file has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    /// The version (the file name's numeric prefix).
    pub version: i64,
    /// The description (the rest of the file name).
    pub description: String,
    /// Whether the file has it applied.
    pub applied: bool,
}

/// What a database has applied (a file's, read through a hot reader: a
/// tiny table), against the migrations of this build for it.
pub(crate) struct Applied {
    rows: Vec<(i64, Vec<u8>, bool)>,
    migrator: &'static Migrator,
}

impl Applied {
    pub(crate) fn read(conn: &rusqlite::Connection) -> rusqlite::Result<Applied> {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_sqlx_migrations')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Applied::of(Vec::new(), &MIGRATOR));
        }
        let mut stmt = conn
            .prepare("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Applied::of(rows, &MIGRATOR))
    }

    /// `_sqlx_migrations`' rows (version, checksum, success), against
    /// `migrator`.
    pub(crate) fn of(rows: Vec<(i64, Vec<u8>, bool)>, migrator: &'static Migrator) -> Applied {
        Applied { rows, migrator }
    }

    /// Refuses files this build must not migrate or use.
    pub(crate) fn validate(&self) -> Result<()> {
        let supported = self.latest();
        for (version, checksum, success) in &self.rows {
            let Some(ours) = self.migrator.iter().find(|m| m.version == *version) else {
                let found = self.rows.iter().map(|r| r.0).max().unwrap_or(*version);
                return Err(Error::SchemaTooNew { found, supported });
            };
            if !success {
                return Err(Error::MigrationMismatch {
                    version: *version,
                    reason: "it failed part-way and is marked dirty",
                });
            }
            if ours.checksum.as_ref() != checksum.as_slice() {
                return Err(Error::MigrationMismatch {
                    version: *version,
                    reason: "its checksum differs",
                });
            }
        }
        Ok(())
    }

    /// Whether any embedded migration is not applied yet.
    pub(crate) fn pending(&self) -> bool {
        self.migrator
            .iter()
            .any(|m| !self.rows.iter().any(|r| r.0 == m.version))
    }

    /// The newest applied version, 0 for none.
    pub(crate) fn version(&self) -> i64 {
        self.rows.iter().map(|r| r.0).max().unwrap_or(0)
    }

    /// The newest version this build has for the database.
    pub(crate) fn latest(&self) -> i64 {
        newest(self.migrator)
    }

    /// Every embedded migration with its state in the file.
    pub(crate) fn status(&self) -> Vec<MigrationStatus> {
        self.migrator
            .iter()
            .map(|m| MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                applied: self.rows.iter().any(|r| r.0 == m.version),
            })
            .collect()
    }
}

/// The newest migration this build embeds for files.
pub(crate) fn latest_version() -> i64 {
    newest(&MIGRATOR)
}

fn newest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

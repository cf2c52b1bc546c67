//! Import of the seeds' old file layout (`~/.tidal-mcp/`): [`Vault::import_legacy`]
//! and `statevault import-legacy DIR`.
//!
//! | legacy file | becomes |
//! | --- | --- |
//! | `session.json`, or `session.enc` + `session.key` (Fernet) | a session: the access token is its bearer token (SHA-256 only), the rest its data |
//! | `rate_limits/<user>.json` | the user's token buckets and violations |
//! | `cache/l2/<key>.cache` (gzip JSON) + `<key>.meta` | a cache entry with its own creation time, expiry and tags |
//! | `preferences/<user>.json` | the user's preferences, checked like any patch |
//! | `backups/session_*.enc` | nothing: older copies of the session (reported) |
//!
//! # Guarantees
//!
//! 1. **A file is imported whole or not at all.** Its rows and its ledger
//!    entry are written in one transaction; a malformed file (bad JSON, bad
//!    gzip, a token the key does not decrypt, missing fields, absurd values)
//!    is skipped with the reason, before anything is written.
//! 2. **Idempotent.** Each imported file is recorded in `vault_meta` as
//!    `legacy_import:<sha256>` (of its kind, its path under DIR and its
//!    bytes), in the same transaction as its rows. A second run reports it
//!    as already imported and writes nothing. The ledger holds no user ids,
//!    so a user erased since is not brought back by running the import again.
//! 3. **Never overwrites.** A session token, cache key, bucket or
//!    preferences document the vault already has is kept; the file is
//!    skipped (buckets: kept, the rest imported) and the report says so.
//! 4. **Times.** Legacy times are ISO 8601. One with an offset is taken as
//!    it is; one without (Python's `datetime.now().isoformat()`, what the
//!    seeds wrote) is read in this machine's local time zone. Expiry is
//!    judged by the vault's clock.

mod files;
mod parse;
mod types;

use std::path::{Path, PathBuf};

use serde_json::Map;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, EventKind};
use crate::core::meta;
use crate::sessions::{ImportedSession, SessionImport};
use crate::{Result, Vault};
use files::{Candidate, Problem, decrypt, discover, ledger_key, read_bounded};
use parse::{Plan, cache_entry, preferences, rate_limits, session};
pub use types::{ImportOutcome, ImportReport, LegacyFile, LegacyKind};

impl Vault {
    /// Imports the seeds' old file layout from `dir` (their `~/.tidal-mcp`):
    /// the session, per-user rate limits, the L2 cache files and per-user
    /// preferences (see the table in the module docs, or the README). Each
    /// file is imported in one transaction or skipped with its reason;
    /// running it again imports nothing twice. Run it before a service uses
    /// the vault: a process that already holds a user's rate-limit buckets
    /// in memory keeps them.
    ///
    /// Errors: `dir` missing or not a directory, and failures of the vault
    /// itself (the files imported before the failure stay imported, and a
    /// second run goes on from there). Anything wrong with a file is a
    /// skipped line in the report, never an error.
    pub async fn import_legacy(&self, dir: impl AsRef<Path>) -> Result<ImportReport> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        let mut cache_imported = false;
        for c in discover(dir)? {
            let (outcome, detail) = match self.import_file(dir, &c).await {
                Ok(done) => done,
                Err(Problem::Skip(reason)) => (ImportOutcome::Skipped, reason),
                Err(Problem::Vault(e)) => return Err(e),
            };
            cache_imported |=
                c.kind == LegacyKind::CacheEntry && outcome == ImportOutcome::Imported;
            files.push(LegacyFile {
                path: c.rel,
                kind: c.kind,
                outcome,
                detail,
            });
        }
        if cache_imported {
            self.cache().enforce_cap().await?;
        }
        let count = |o| files.iter().filter(|f| f.outcome == o).count();
        let report = ImportReport {
            dir: dir.to_owned(),
            imported: count(ImportOutcome::Imported),
            already_imported: count(ImportOutcome::AlreadyImported),
            skipped: count(ImportOutcome::Skipped),
            files,
        };
        if report.imported > 0 {
            self.audit()
                .append_durable(AuditEvent::new(EventKind::Admin, "legacy.import").details(
                    serde_json::json!({
                        "imported": report.imported,
                        "already_imported": report.already_imported,
                        "skipped": report.skipped,
                    }),
                ))
                .await?;
        }
        Ok(report)
    }

    async fn import_file(
        &self,
        dir: &Path,
        c: &Candidate,
    ) -> Result<(ImportOutcome, String), Problem> {
        let stem = c.stem.as_deref().ok_or("the file name is not UTF-8")?;
        let paths: Vec<PathBuf> = match c.kind {
            LegacyKind::SessionBackup => {
                return Err(
                    "an older copy of session.enc: only the current session is imported".into(),
                );
            }
            LegacyKind::EncryptedSession => {
                let key = dir.join("session.key");
                if !key.is_file() {
                    return Err("no session.key beside it".into());
                }
                vec![dir.join(&c.rel), key]
            }
            LegacyKind::CacheEntry => {
                let l2 = dir.join("cache/l2");
                let (value, meta) = (
                    l2.join(format!("{stem}.cache")),
                    l2.join(format!("{stem}.meta")),
                );
                if !value.is_file() {
                    return Err("no .cache file beside it".into());
                }
                if !meta.is_file() {
                    return Err("no .meta file beside it".into());
                }
                vec![value, meta]
            }
            _ => vec![dir.join(&c.rel)],
        };
        let contents = paths
            .iter()
            .map(|p| read_bounded(p))
            .collect::<Result<Vec<_>, _>>()?;
        let ledger = ledger_key(c.kind, &c.rel, &contents);
        if self.meta(&ledger).await?.is_some() {
            return Ok(already_imported());
        }
        let plan = self.plan(c.kind, stem, &contents)?;
        let mut tx = self.store()?.sqlx_transaction().await?;
        if !meta::set_once(&mut tx, &ledger, c.kind.name(), self.now()).await? {
            return Ok(already_imported());
        }
        let (detail, evicted) = self.apply(&mut tx, plan).await?;
        tx.commit().await?;
        self.sessions().forget(&evicted);
        Ok((ImportOutcome::Imported, detail))
    }

    /// Parses and checks a file's contents: what it will become.
    fn plan(
        &self,
        kind: LegacyKind,
        stem: &str,
        contents: &[Zeroizing<Vec<u8>>],
    ) -> Result<Plan, Problem> {
        let now = self.now();
        let [main, rest @ ..] = contents else {
            return Err("nothing was read".into());
        };
        Ok(match kind {
            LegacyKind::Session => Plan::Session(session(main, now)?),
            LegacyKind::EncryptedSession => {
                let key = rest.first().ok_or("no session.key beside it")?;
                let plain = decrypt(main, key)?;
                Plan::Session(session(&plain, now).map_err(|e| format!("decrypted, but {e}"))?)
            }
            LegacyKind::RateLimits => {
                let (buckets, violations) = rate_limits(main, now)?;
                Plan::Limits {
                    subject: stem.to_owned(),
                    buckets,
                    violations,
                }
            }
            LegacyKind::CacheEntry => {
                let meta = rest.first().ok_or("no .meta file beside it")?;
                let max = self.cache().max_value_bytes();
                cache_entry(stem, main, meta, now, max)?
            }
            LegacyKind::Preferences => Plan::Preferences {
                user_id: stem.to_owned(),
                document: preferences(main, stem)?,
            },
            LegacyKind::SessionBackup => return Err("not imported".into()),
        })
    }

    /// Writes a plan through its facet, inside the file's transaction.
    /// Returns the report's detail and the token hashes of sessions evicted
    /// (to forget once committed).
    async fn apply(
        &self,
        tx: &mut sqlx::SqliteConnection,
        plan: Plan,
    ) -> Result<(String, Vec<[u8; 32]>), Problem> {
        match plan {
            Plan::Session(session) => self.apply_session(tx, session).await,
            Plan::Limits {
                subject,
                buckets,
                violations,
            } => {
                let done = self
                    .limits()
                    .import_subject(tx, &subject, &buckets, &violations)
                    .await?;
                let mut detail = format!(
                    "{subject}: {} bucket(s), {} violation(s)",
                    done.buckets, done.violations
                );
                if done.kept > 0 {
                    detail.push_str(&format!(
                        "; {} bucket(s) the vault already had were kept",
                        done.kept
                    ));
                }
                Ok((detail, Vec::new()))
            }
            Plan::Cache {
                key,
                value,
                created_at,
                expires_at,
                tags,
            } => {
                let stored = self
                    .cache()
                    .import_entry(tx, &key, &value, created_at, expires_at, &tags)
                    .await?;
                if !stored {
                    return Err("the vault already has a live entry under this key (kept)".into());
                }
                Ok((format!("{key}, expires {expires_at}"), Vec::new()))
            }
            Plan::Preferences { user_id, document } => {
                if !self.preferences().import(tx, &user_id, &document).await? {
                    return Err(
                        format!("{user_id} already has preferences in the vault (kept)").into(),
                    );
                }
                let n = document.as_object().map_or(0, Map::len);
                Ok((format!("{user_id}: {n} preference(s)"), Vec::new()))
            }
        }
    }

    /// Imports a legacy session; the report line, and the sessions the
    /// per-user cap evicted (to forget from memory once committed).
    async fn apply_session(
        &self,
        tx: &mut sqlx::SqliteConnection,
        session: ImportedSession,
    ) -> Result<(String, Vec<[u8; 32]>), Problem> {
        let user = session.user_id.clone();
        let bound = session.device_fingerprint.is_some();
        match self.sessions().import(tx, session).await? {
            SessionImport::TokenTaken => {
                Err("the vault already has a session with this token (kept)".into())
            }
            SessionImport::Created {
                id,
                expires_at,
                evicted,
            } => {
                let mut detail = format!("session {id} for user {user}, expires {expires_at}");
                if bound {
                    detail.push_str(", bound to the legacy device fingerprint");
                }
                if !evicted.is_empty() {
                    detail.push_str(&format!(
                        ", {} older session(s) evicted (per-user cap)",
                        evicted.len()
                    ));
                }
                Ok((detail, evicted))
            }
        }
    }
}

fn already_imported() -> (ImportOutcome, String) {
    (
        ImportOutcome::AlreadyImported,
        "an earlier run imported this file as it is now".into(),
    )
}

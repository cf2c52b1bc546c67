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

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, EventKind};
use crate::cache::CacheKey;
use crate::core::meta;
use crate::limits::{ImportedBucket, ImportedViolation};
use crate::sessions::{ImportedSession, SessionImport};
use crate::{Error, Result, Timestamp, Vault};

/// The largest legacy file read, in bytes.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// The ledger's keys in `vault_meta`.
const LEDGER_PREFIX: &str = "legacy_import:";
/// The TTL the seed's cache gave entries whose `.meta` has none.
const SEED_DEFAULT_TTL_SECS: f64 = 3600.0;
/// The longest cache TTL a `.meta` may give.
const MAX_TTL_SECS: f64 = 100.0 * 365.0 * 86_400.0;
/// The largest cost a legacy violation may record.
const MAX_COST: f64 = 1e9;

/// What kind of legacy file a report line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LegacyKind {
    /// `session.json`: the session in plain JSON.
    Session,
    /// `session.enc`: the session as a Fernet token, key in `session.key`.
    EncryptedSession,
    /// `backups/session_*.enc`: older copies of the session, never imported.
    SessionBackup,
    /// `rate_limits/<user>.json`: buckets and violations.
    RateLimits,
    /// `cache/l2/<key>.cache` (gzip JSON) and its `<key>.meta`.
    CacheEntry,
    /// `preferences/<user>.json`.
    Preferences,
}

impl LegacyKind {
    fn name(self) -> &'static str {
        match self {
            LegacyKind::Session => "session",
            LegacyKind::EncryptedSession => "encrypted_session",
            LegacyKind::SessionBackup => "session_backup",
            LegacyKind::RateLimits => "rate_limits",
            LegacyKind::CacheEntry => "cache_entry",
            LegacyKind::Preferences => "preferences",
        }
    }
}

impl fmt::Display for LegacyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to one legacy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportOutcome {
    /// Its rows were written, with its ledger entry, in one transaction.
    Imported,
    /// The ledger has it: an earlier run imported these very bytes.
    AlreadyImported,
    /// Nothing was written; the detail says why.
    Skipped,
}

impl fmt::Display for ImportOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportOutcome::Imported => "imported",
            ImportOutcome::AlreadyImported => "already imported",
            ImportOutcome::Skipped => "skipped",
        })
    }
}

/// One legacy file in an [`ImportReport`].
#[derive(Debug, Clone, Serialize)]
pub struct LegacyFile {
    /// The file, relative to the imported directory.
    pub path: PathBuf,
    /// What kind of file it is.
    pub kind: LegacyKind,
    /// What happened to it.
    pub outcome: ImportOutcome,
    /// What was imported, or why it was skipped (`expired at …`, `not JSON: …`).
    pub detail: String,
}

/// What [`Vault::import_legacy`] did, file by file.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The imported directory.
    pub dir: PathBuf,
    /// Files imported by this run.
    pub imported: usize,
    /// Files an earlier run imported.
    pub already_imported: usize,
    /// Files skipped, each with its reason.
    pub skipped: usize,
    /// Every legacy file found, in the order they were imported.
    pub files: Vec<LegacyFile>,
}

/// A legacy file found in the directory.
struct Candidate {
    kind: LegacyKind,
    /// Relative to the directory.
    rel: PathBuf,
    /// The file name without its extension (user, cache key); `None` when
    /// it is not UTF-8.
    stem: Option<String>,
}

/// Why a file was not imported: something about the file (skip it), or
/// the vault failed (stop).
enum Problem {
    Skip(String),
    Vault(Error),
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidInput { .. }
            | Error::InvalidPreference { .. }
            | Error::SessionLimit { .. }
            | Error::CacheValueTooLarge { .. }
            | Error::UnknownLimit { .. }
            | Error::Json(_) => Problem::Skip(e.to_string()),
            e => Problem::Vault(e),
        }
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Problem::Vault(e.into())
    }
}

impl From<String> for Problem {
    fn from(reason: String) -> Self {
        Problem::Skip(reason)
    }
}

impl From<&str> for Problem {
    fn from(reason: &str) -> Self {
        Problem::Skip(reason.to_owned())
    }
}

/// What a file becomes, parsed and checked before anything is written.
enum Plan {
    Session(ImportedSession),
    Limits {
        subject: String,
        buckets: Vec<ImportedBucket>,
        violations: Vec<ImportedViolation>,
    },
    Cache {
        key: CacheKey,
        value: Vec<u8>,
        created_at: Timestamp,
        expires_at: Timestamp,
        tags: Vec<String>,
    },
    Preferences {
        user_id: String,
        document: Value,
    },
}

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
        if self.meta(&ledger)?.is_some() {
            return Ok(already_imported());
        }
        let plan = self.plan(c.kind, stem, &contents)?;
        let mut tx = self.store().sqlx_transaction().await?;
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
            Plan::Session(session) => {
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
                        let mut detail =
                            format!("session {id} for user {user}, expires {expires_at}");
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
}

fn already_imported() -> (ImportOutcome, String) {
    (
        ImportOutcome::AlreadyImported,
        "an earlier run imported this file as it is now".into(),
    )
}

/// The legacy files under `dir`, in import order: the session, backups,
/// rate limits, cache entries, preferences; each directory sorted by name.
fn discover(dir: &Path) -> Result<Vec<Candidate>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(
            "legacy directory",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut out = Vec::new();
    for (name, kind) in [
        ("session.json", LegacyKind::Session),
        ("session.enc", LegacyKind::EncryptedSession),
    ] {
        if dir.join(name).is_file() {
            out.push(Candidate {
                kind,
                rel: name.into(),
                stem: Some("session".into()),
            });
        }
    }
    out.extend(
        listing(dir, "backups", "enc", LegacyKind::SessionBackup)?
            .into_iter()
            .filter(|c| c.stem.as_deref().is_none_or(|s| s.starts_with("session_"))),
    );
    out.extend(listing(dir, "rate_limits", "json", LegacyKind::RateLimits)?);
    let mut cache = listing(dir, "cache/l2", "cache", LegacyKind::CacheEntry)?;
    let values: BTreeSet<Option<String>> = cache.iter().map(|c| c.stem.clone()).collect();
    cache.extend(
        listing(dir, "cache/l2", "meta", LegacyKind::CacheEntry)?
            .into_iter()
            .filter(|m| m.stem.is_none() || !values.contains(&m.stem)),
    );
    cache.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.extend(cache);
    out.extend(listing(
        dir,
        "preferences",
        "json",
        LegacyKind::Preferences,
    )?);
    Ok(out)
}

/// The regular files `dir/sub/*.ext`, sorted; none if `sub` is missing.
fn listing(dir: &Path, sub: &str, ext: &str, kind: LegacyKind) -> Result<Vec<Candidate>> {
    let path = dir.join(sub);
    let entries = match std::fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&path, e))?;
        let name = PathBuf::from(entry.file_name());
        if name.extension().is_none_or(|e| e != ext) || !entry.path().is_file() {
            continue;
        }
        out.push(Candidate {
            kind,
            stem: name.file_stem().and_then(|s| s.to_str()).map(str::to_owned),
            rel: Path::new(sub).join(name),
        });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A file's bytes, if it is at most [`MAX_FILE_BYTES`] long.
fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{name} is larger than {} MiB", MAX_FILE_BYTES >> 20).into());
    }
    Ok(bytes)
}

/// The ledger key of a file: SHA-256 of its kind, its path under the
/// directory and the bytes of every file it is read from, each
/// length-prefixed.
fn ledger_key(kind: LegacyKind, rel: &Path, contents: &[Zeroizing<Vec<u8>>]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"statevault legacy import 1");
    let parts = [kind.name().as_bytes(), rel.as_os_str().as_encoded_bytes()]
        .into_iter()
        .chain(contents.iter().map(|c| c.as_slice()));
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{LEDGER_PREFIX}{digest}")
}

/// Decrypts `session.enc` with `session.key` (the urlsafe-base64 32-byte
/// Fernet key the seed wrote).
fn decrypt(token: &[u8], key: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let key = Zeroizing::new(
        std::str::from_utf8(key)
            .map_err(|_| "session.key is not a Fernet key (not text)")?
            .trim()
            .to_owned(),
    );
    let fernet = fernet::Fernet::new(&key)
        .ok_or("session.key is not a Fernet key (32 bytes, URL-safe base64)")?;
    let token = std::str::from_utf8(token)
        .map_err(|_| "session.enc is not a Fernet token (not text)")?
        .trim();
    fernet.decrypt(token).map(Zeroizing::new).map_err(|_| {
        "session.enc does not decrypt with session.key (wrong key, or a damaged token)".into()
    })
}

/// A legacy session document: `user_id` and `access_token` required;
/// `expires_at` (or `token_expires_at`) and `device_fingerprint` optional;
/// everything else kept as the session's data.
fn session(bytes: &[u8], now: Timestamp) -> Result<ImportedSession, String> {
    let mut doc = object(bytes)?;
    let user_id = user_field(&doc, "user_id")?.ok_or("missing field user_id")?;
    let token = match doc.remove("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Zeroizing::new(t),
        Some(_) => return Err("access_token: expected a non-empty string".into()),
        None => return Err("missing field access_token".into()),
    };
    let device_fingerprint = match doc.remove("device_fingerprint") {
        None | Some(Value::Null) => None,
        Some(Value::String(fp)) if !fp.is_empty() => Some(Zeroizing::new(fp)),
        Some(_) => return Err("device_fingerprint: expected a non-empty string".into()),
    };
    let expires_at = ["expires_at", "token_expires_at"]
        .into_iter()
        .find_map(|name| {
            doc.get(name)
                .filter(|v| !v.is_null())
                .map(|v| time(v, name))
        })
        .transpose()?;
    if let Some(at) = expires_at
        && at <= now
    {
        return Err(format!("expired at {at}"));
    }
    Ok(ImportedSession {
        user_id,
        token,
        device_fingerprint,
        data: Zeroizing::new(Value::Object(doc).to_string()),
        expires_at,
    })
}

/// A legacy rate-limit file: `buckets` (or `limits`) by limit name, and
/// `violations`.
fn rate_limits(
    bytes: &[u8],
    now: Timestamp,
) -> Result<(Vec<ImportedBucket>, Vec<ImportedViolation>), String> {
    let doc = object(bytes)?;
    let buckets = doc.get("buckets").or_else(|| doc.get("limits"));
    let violations = doc.get("violations");
    if buckets.is_none() && violations.is_none() {
        return Err("missing field buckets".into());
    }
    let mut out = Vec::new();
    match buckets {
        None | Some(Value::Null) => {}
        Some(Value::Object(by_limit)) => {
            for (limit, b) in by_limit {
                let at = format!("buckets.{limit}");
                let b = b
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object"))?;
                for name in ["capacity", "refill_rate"] {
                    if let Some(v) = b.get(name) {
                        number(v, &format!("{at}.{name}"), 0.0, f64::MAX)?;
                    }
                }
                let tokens = required(b, "current_tokens", &at)?;
                out.push(ImportedBucket {
                    limit: limit.clone(),
                    tokens: number(tokens, &format!("{at}.current_tokens"), 0.0, f64::MAX)?,
                    last_refill: past(
                        required(b, "last_refill", &at)?,
                        &format!("{at}.last_refill"),
                        now,
                    )?,
                });
            }
        }
        Some(other) => {
            return Err(format!(
                "buckets: expected an object, found {}",
                kind(other)
            ));
        }
    }
    let violations = match violations {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| violation(v, &format!("violations[{i}]"), now))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "violations: expected an array, found {}",
                kind(other)
            ));
        }
    };
    Ok((out, violations))
}

fn violation(v: &Value, at: &str, now: Timestamp) -> Result<ImportedViolation, String> {
    let v = v
        .as_object()
        .ok_or_else(|| format!("{at}: expected an object"))?;
    let limit = required(v, "limit_type", at)?
        .as_str()
        .ok_or_else(|| format!("{at}.limit_type: expected a string"))?;
    let empty = Map::new();
    let info = match v.get("client_info") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(info)) => info,
        Some(_) => return Err(format!("{at}.client_info: expected an object")),
    };
    let text = |name: &str| match info.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{at}.client_info.{name}: expected a string")),
    };
    let ip = text("ip")?.or(text("ip_address")?);
    let user_agent = text("user_agent")?;
    Ok(ImportedViolation {
        limit: limit.to_owned(),
        occurred_at: past(
            required(v, "timestamp", at)?,
            &format!("{at}.timestamp"),
            now,
        )?,
        cost: number(
            required(v, "attempted_calls", at)?,
            &format!("{at}.attempted_calls"),
            f64::MIN_POSITIVE,
            MAX_COST,
        )?,
        ip,
        user_agent,
    })
}

/// A legacy L2 cache entry: the gzip-compressed JSON value and its
/// metadata (`key`, `created_at`, `ttl_seconds` — 3600 when absent, as the
/// seed read it — or `expires_at`, `tags`, `size_bytes`).
fn cache_entry(
    stem: &str,
    value: &[u8],
    meta: &[u8],
    now: Timestamp,
    max: usize,
) -> Result<Plan, Problem> {
    let meta = object(meta).map_err(|e| format!(".meta: {e}"))?;
    match meta.get("key") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k == stem => {}
        Some(Value::String(k)) => {
            return Err(format!(".meta names key {k:?}, the file name says {stem:?}").into());
        }
        Some(_) => return Err(".meta key: expected a string".into()),
    }
    let created_at = past(required(&meta, "created_at", ".meta")?, "created_at", now)?;
    let expires_at = match meta.get("expires_at").filter(|v| !v.is_null()) {
        Some(v) => time(v, "expires_at")?,
        None => {
            let ttl = match meta.get("ttl_seconds") {
                None | Some(Value::Null) => SEED_DEFAULT_TTL_SECS,
                Some(v) => number(v, "ttl_seconds", 1.0, MAX_TTL_SECS)?,
            };
            created_at.saturating_add(Duration::from_secs_f64(ttl))
        }
    };
    if expires_at <= now {
        return Err(format!("expired at {expires_at}").into());
    }
    match meta.get("size_bytes") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(value.len() as u64) => {}
        Some(v) => {
            return Err(format!(
                "size_bytes says {v}, the .cache file has {} bytes",
                value.len()
            )
            .into());
        }
    }
    let mut tags = Vec::new();
    match meta.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for t in items {
                let t = t.as_str().ok_or("tags: expected strings")?;
                if !tags.iter().any(|have| have == t) {
                    tags.push(t.to_owned());
                }
            }
        }
        Some(_) => return Err("tags: expected an array of strings".into()),
    }
    let value = gunzip(value, max)?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&value)
        .map_err(|e| format!("the value is not JSON: {e}"))?;
    let mut key = CacheKey::parse(stem)?;
    // The seed's keys end in the user: {domain}:{operation}:{params}:{user}.
    let parts: Vec<&str> = stem.split(':').collect();
    if let [_, _, _, .., user] = parts.as_slice()
        && !user.is_empty()
        && *user != "-"
    {
        key = key.for_user(user)?;
    }
    Ok(Plan::Cache {
        key,
        value,
        created_at,
        expires_at,
        tags,
    })
}

/// Decompresses a gzip stream of at most `max` bytes.
fn gunzip(bytes: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not gzip: {e}"))?;
    if out.len() > max {
        return Err(format!("the value decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// A legacy preferences file: `{"user_id", "preferences": {...}, …}`.
fn preferences(bytes: &[u8], stem: &str) -> Result<Value, String> {
    let doc = object(bytes)?;
    if let Some(user) = user_field(&doc, "user_id")?
        && user != stem
    {
        return Err(format!(
            "user_id {user:?} does not match the file name ({stem:?})"
        ));
    }
    match doc.get("preferences") {
        Some(prefs @ Value::Object(_)) => Ok(prefs.clone()),
        Some(other) => Err(format!(
            "preferences: expected an object, found {}",
            kind(other)
        )),
        None => Err("missing field preferences".into()),
    }
}

/// The bytes as a JSON object.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))? {
        Value::Object(map) => Ok(map),
        other => Err(format!("not a JSON object but {}", kind(&other))),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, name: &str, at: &str) -> Result<&'a Value, String> {
    obj.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("{at}: missing field {name}"))
}

/// A user id: a non-empty string or an integer (the seeds' services used
/// both); `None` when absent.
fn user_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "{name}: expected a string or an integer, found {}",
            kind(other)
        )),
    }
}

/// A number in `min..=max`.
fn number(v: &Value, at: &str, min: f64, max: f64) -> Result<f64, String> {
    v.as_f64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{at}: {v} is not a number in {min}..={max}"))
}

/// A time that is not after `now`.
fn past(v: &Value, at: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = time(v, at)?;
    if t > now {
        return Err(format!("{at}: {t} is in the future"));
    }
    Ok(t)
}

/// An ISO 8601 time: with an offset as given, without one in this
/// machine's local time zone (what Python's `datetime.now().isoformat()`
/// wrote).
fn time(v: &Value, at: &str) -> Result<Timestamp, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("{at}: expected an ISO 8601 time, found {}", kind(v)))?;
    parse_time(text).ok_or_else(|| format!("{at}: {text:?} is not an ISO 8601 time"))
}

fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp::from_millis(t.timestamp_millis()));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .into_iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())?;
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| Timestamp::from_millis(t.timestamp_millis()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_and_without_offsets() {
        let utc = parse_time("2026-01-02T03:04:05.678+00:00").unwrap();
        assert_eq!(utc, Timestamp::parse("2026-01-02T03:04:05.678Z").unwrap());
        assert_eq!(parse_time("2026-01-02T05:04:05.678+02:00").unwrap(), utc);
        assert!(parse_time("2026-01-02T03:04:05.123456").is_some());
        assert!(parse_time("2026-01-02 03:04:05").is_some());
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("2026-13-02T03:04:05").is_none());
    }

    #[test]
    fn ledger_keys_differ_by_kind_path_and_bytes() {
        let bytes = |b: &[u8]| vec![Zeroizing::new(b.to_vec())];
        let base = ledger_key(
            LegacyKind::RateLimits,
            Path::new("rate_limits/a.json"),
            &bytes(b"{}"),
        );
        assert!(base.starts_with(LEDGER_PREFIX));
        assert_ne!(
            base,
            ledger_key(
                LegacyKind::RateLimits,
                Path::new("rate_limits/b.json"),
                &bytes(b"{}")
            )
        );
        assert_ne!(
            base,
            ledger_key(
                LegacyKind::Preferences,
                Path::new("rate_limits/a.json"),
                &bytes(b"{}")
            )
        );
        assert_ne!(
            base,
            ledger_key(
                LegacyKind::RateLimits,
                Path::new("rate_limits/a.json"),
                &bytes(b"{ }")
            )
        );
    }
}

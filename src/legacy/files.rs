//! Finding and reading the legacy files: what is there, bounded reads, the
//! ledger key of a file, and the seed's encrypted session.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::types::LegacyKind;
use crate::{Error, Result};

/// The largest legacy file read, in bytes.
pub(super) const MAX_FILE_BYTES: u64 = 64 << 20;
/// The ledger's keys in `vault_meta`.
pub(super) const LEDGER_PREFIX: &str = "legacy_import:";

/// A legacy file found in the directory.
pub(super) struct Candidate {
    pub(super) kind: LegacyKind,
    /// Relative to the directory.
    pub(super) rel: PathBuf,
    /// The file name without its extension (user, cache key); `None` when
    /// it is not UTF-8.
    pub(super) stem: Option<String>,
}

/// Why a file was not imported: something about the file (skip it), or
/// the vault failed (stop).
pub(super) enum Problem {
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

/// The legacy files under `dir`, in import order: the session, backups,
/// rate limits, cache entries, preferences; each directory sorted by name.
pub(super) fn discover(dir: &Path) -> Result<Vec<Candidate>> {
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
pub(super) fn listing(
    dir: &Path,
    sub: &str,
    ext: &str,
    kind: LegacyKind,
) -> Result<Vec<Candidate>> {
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
pub(super) fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problem> {
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
pub(super) fn ledger_key(kind: LegacyKind, rel: &Path, contents: &[Zeroizing<Vec<u8>>]) -> String {
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
pub(super) fn decrypt(token: &[u8], key: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

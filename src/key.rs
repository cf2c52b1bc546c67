//! Keys: what a vault is encrypted with, and where the key comes from.
//!
//! A key is either a passphrase (SQLCipher runs PBKDF2 over it on every
//! connection, 256,000 iterations, which is slow on purpose) or a raw
//! 256-bit key written `x'<64 hex>'` (no KDF: opening is fast). Key files
//! made by statevault always hold a raw key.
//!
//! Key material lives only in [`Zeroizing`] buffers, is wiped when dropped,
//! and never reaches `Debug` output, error messages or logs: it is handed to
//! SQLCipher through `sqlite3_key_v2`, never as SQL text.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::{Error, Result};

/// The environment variable that may hold the key (same format as a key file).
pub const KEY_ENV: &str = "STATEVAULT_KEY";

/// An encryption key. `Debug` shows only its kind, and the material is
/// wiped when the key is dropped ([`ZeroizeOnDrop`], derived, so every field
/// must wipe itself or the build fails).
///
/// ```
/// use statevault::Key;
///
/// let key = Key::generate()?;
/// assert!(key.is_raw());
/// assert_eq!(format!("{key:?}"), "Key { kind: \"raw\", material: <redacted> }");
/// # Ok::<(), statevault::Error>(())
/// ```
#[derive(Clone, ZeroizeOnDrop)]
pub struct Key {
    material: Material,
    /// Where the key was read from (a key file, the environment), for the
    /// message when it does not open a file. Not secret.
    #[zeroize(skip)]
    origin: Option<std::sync::Arc<str>>,
}

#[derive(Clone, ZeroizeOnDrop)]
enum Material {
    Passphrase(Zeroizing<String>),
    Raw(Zeroizing<[u8; 32]>),
}

impl Key {
    /// A passphrase key (SQLCipher derives the real key with PBKDF2 on each open).
    pub fn passphrase(passphrase: impl Into<String>) -> Result<Key> {
        let passphrase = Zeroizing::new(passphrase.into());
        if passphrase.is_empty() {
            return Err(Error::InvalidKey {
                reason: "the passphrase is empty".into(),
            });
        }
        Ok(Key::of(Material::Passphrase(passphrase)))
    }

    /// A raw 256-bit key (no key derivation on open).
    pub fn raw(bytes: [u8; 32]) -> Key {
        Key::of(Material::Raw(Zeroizing::new(bytes)))
    }

    /// A new random raw key from the operating system's generator.
    pub fn generate() -> Result<Key> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| Error::Internal {
            detail: format!("the system random generator failed: {e}"),
        })?;
        Ok(Key::of(Material::Raw(bytes)))
    }

    fn of(material: Material) -> Key {
        Key {
            material,
            origin: None,
        }
    }

    /// Parses the key-file format: `x'<64 hex digits>'` is a raw key, anything
    /// else a passphrase. A byte-order mark, blank lines and spaces around a
    /// raw key are ignored; a passphrase loses only one trailing newline.
    pub fn parse(text: &str) -> Result<Key> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim();
        let Some(hex) = trimmed
            .strip_prefix("x'")
            .or_else(|| trimmed.strip_prefix("X'"))
            .and_then(|t| t.strip_suffix('\''))
        else {
            let passphrase = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(text);
            return Key::passphrase(passphrase);
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidKey {
                reason: "a raw key (x'...') must be hex digits only".into(),
            });
        }
        if hex.len() != 64 {
            return Err(Error::InvalidKey {
                reason: format!("a raw key needs 64 hex digits, found {}", hex.len()),
            });
        }
        let bytes = parse_hex32(hex).ok_or_else(|| Error::InvalidKey {
            reason: "a raw key needs 64 hex digits".into(),
        })?;
        Ok(Key::of(Material::Raw(bytes)))
    }

    /// The same key, remembering where it was read from.
    fn read_from(mut self, origin: impl Into<std::sync::Arc<str>>) -> Key {
        self.origin = Some(origin.into());
        self
    }

    /// What the key is and where it came from, for an error message (never
    /// the material): "the raw key from app.db.key", "the passphrase from
    /// STATEVAULT_KEY (...)".
    pub(crate) fn describe(&self) -> String {
        let from = self
            .origin
            .as_deref()
            .map_or_else(String::new, |o| format!(" from {o}"));
        match self.material {
            Material::Raw(_) => format!("the raw key{from}"),
            Material::Passphrase(_) if self.origin.is_some() => format!(
                "the passphrase{from} (read as a passphrase; a raw key is written x'<64 hex digits>')"
            ),
            Material::Passphrase(_) => "the passphrase given".into(),
        }
    }

    /// Reads a key file. It must not be readable by group or others.
    pub fn read_file(path: &Path) -> Result<Key> {
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::InvalidKey {
                reason: format!("the key file {} does not exist", path.display()),
            },
            _ => Error::io(path, e),
        })?;
        if !meta.is_file() {
            return Err(Error::InvalidKey {
                reason: format!("{} is not a file", path.display()),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::InvalidKey {
                reason: format!(
                    "{} is readable by others (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        Ok(Key::parse(&text)?.read_from(path.display().to_string()))
    }

    /// Writes the key to a new file, mode 0600. Fails if the file exists.
    ///
    /// The file appears whole or not at all: the key is written and synced
    /// under a temporary name, then hard-linked into place (which fails if
    /// another process got there first), so a concurrent reader never sees a
    /// half-written key.
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".statevault-key-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let text = self.to_text();
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.write_all(b"\n"))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(tmp.path(), e))?;
        fs::hard_link(tmp.path(), path).map_err(|e| Error::io(path, e))
    }

    /// The AES key SQLCipher 4 encrypts pages with, for a file whose salt
    /// is `salt`: a raw key as it is, a passphrase through
    /// PBKDF2-HMAC-SHA512 (256 000 iterations, ~200 ms).
    pub(crate) fn page_key(&self, salt: &[u8; 16]) -> Zeroizing<[u8; 32]> {
        use hmac::{KeyInit, Mac};
        let passphrase = match &self.material {
            Material::Raw(bytes) => return bytes.clone(),
            Material::Passphrase(p) => p,
        };
        // PBKDF2 with one block: SHA-512's 64 bytes cover the 32 wanted.
        let Ok(prf) = hmac::Hmac::<sha2::Sha512>::new_from_slice(passphrase.as_bytes()) else {
            return Zeroizing::new([0; 32]);
        };
        let mut u = Zeroizing::new([0u8; 64]);
        u.copy_from_slice(
            &prf.clone()
                .chain_update(salt)
                .chain_update(1u32.to_be_bytes())
                .finalize()
                .into_bytes(),
        );
        let mut t = u.clone();
        for _ in 1..256_000 {
            let next = prf
                .clone()
                .chain_update(u.as_slice())
                .finalize()
                .into_bytes();
            u.copy_from_slice(&next);
            t.iter_mut().zip(u.iter()).for_each(|(t, u)| *t ^= u);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&t[..32]);
        key
    }

    /// Whether this is a raw key (as opposed to a passphrase).
    pub fn is_raw(&self) -> bool {
        matches!(self.material, Material::Raw(_))
    }

    /// The 32 bytes of a raw key; `None` for a passphrase.
    pub(crate) fn raw_bytes(&self) -> Option<Zeroizing<[u8; 32]>> {
        match &self.material {
            Material::Raw(bytes) => Some(bytes.clone()),
            Material::Passphrase(_) => None,
        }
    }

    /// The key-file text, which is also what `sqlite3_key_v2` takes.
    fn to_text(&self) -> Zeroizing<String> {
        match &self.material {
            Material::Passphrase(p) => p.clone(),
            Material::Raw(bytes) => {
                let mut text = Zeroizing::new(String::with_capacity(67));
                text.push_str("x'");
                text.push_str(&hex(bytes.as_slice()));
                text.push('\'');
                text
            }
        }
    }

    /// Keys an open connection (must be the first call on it).
    ///
    /// # Safety
    /// `db` must be a valid, open SQLite handle not used by another thread
    /// for the duration of the call.
    pub(crate) unsafe fn apply(&self, db: *mut libsqlite3_sys::sqlite3) -> Result<(), i32> {
        // SAFETY: forwarded from the caller.
        unsafe { self.hand_to(db, libsqlite3_sys::sqlite3_key_v2) }
    }

    /// Re-encrypts the open database with this key.
    ///
    /// # Safety
    /// `db` must be a valid, open, keyed SQLite handle not used by another
    /// thread for the duration of the call.
    pub(crate) unsafe fn rekey(&self, db: *mut libsqlite3_sys::sqlite3) -> Result<(), i32> {
        // SAFETY: forwarded from the caller.
        unsafe { self.hand_to(db, libsqlite3_sys::sqlite3_rekey_v2) }
    }

    /// Passes the key text to `sqlite3_key_v2` or `sqlite3_rekey_v2`.
    ///
    /// # Safety
    /// As for [`Key::apply`].
    unsafe fn hand_to(
        &self,
        db: *mut libsqlite3_sys::sqlite3,
        f: unsafe extern "C" fn(
            *mut libsqlite3_sys::sqlite3,
            *const std::ffi::c_char,
            *const std::ffi::c_void,
            std::ffi::c_int,
        ) -> std::ffi::c_int,
    ) -> Result<(), i32> {
        let text = self.to_text();
        let len = i32::try_from(text.len()).map_err(|_| libsqlite3_sys::SQLITE_TOOBIG)?;
        // SAFETY: the caller guarantees `db`; the buffer outlives the call and
        // SQLCipher copies what it needs.
        let rc = unsafe { f(db, c"main".as_ptr(), text.as_ptr().cast(), len) };
        if rc == libsqlite3_sys::SQLITE_OK {
            Ok(())
        } else {
            Err(rc)
        }
    }
}

/// Exactly 64 hex digits (either case) as 32 bytes, in a buffer wiped on
/// drop; `None` for any other text. Reads raw keys, and the hash salt and
/// audit anchor that `vault_meta` holds.
pub(crate) fn parse_hex32(hex: &str) -> Option<Zeroizing<[u8; 32]>> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| {
        char::from(d)
            .to_digit(16)
            .and_then(|v| u8::try_from(v).ok())
    };
    let mut bytes = Zeroizing::new([0u8; 32]);
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(bytes)
}

/// Lower-case hex digits of `bytes`, in a buffer wiped on drop.
pub(crate) fn hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        text.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    text
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.material {
            Material::Passphrase(_) => "passphrase",
            Material::Raw(_) => "raw",
        };
        f.debug_struct("Key")
            .field("kind", &kind)
            .field("material", &format_args!("<redacted>"))
            .finish()
    }
}

/// Where a vault's key comes from.
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// `STATEVAULT_KEY` if set, else the key file beside the database
    /// (`<db>.key`), which is created with a new random raw key when the
    /// database itself is created.
    #[default]
    Auto,
    /// This key.
    Key(Key),
    /// The key in this file, which is created with a new random raw key
    /// (mode 0600) when the database is created and the file does not exist.
    File(PathBuf),
    /// No encryption: a plain SQLite file, for development.
    None,
}

/// The key file that belongs to a database: `<db>.key`.
pub fn default_key_file(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

impl KeySource {
    /// Finds the key. `creating` says whether the database is being created,
    /// in which case `Auto` makes the key file if there is none.
    pub(crate) fn resolve(&self, db: &Path, creating: bool) -> Result<Option<Key>> {
        match self {
            KeySource::None => Ok(None),
            KeySource::Key(key) => Ok(Some(key.clone())),
            KeySource::File(path) if creating && !path.exists() => create_key_file(path),
            KeySource::File(path) => Key::read_file(path).map(Some),
            KeySource::Auto => {
                if let Some(text) = std::env::var_os(KEY_ENV) {
                    let text =
                        Zeroizing::new(text.into_string().map_err(|_| Error::InvalidKey {
                            reason: format!("{KEY_ENV} is not valid UTF-8"),
                        })?);
                    return Key::parse(&text).map(|k| Some(k.read_from(KEY_ENV)));
                }
                let key_file = default_key_file(db);
                if key_file.exists() {
                    return Key::read_file(&key_file).map(Some);
                }
                if !creating {
                    return Err(Error::KeyMissing {
                        path: db.to_owned(),
                        key_file,
                    });
                }
                create_key_file(&key_file)
            }
        }
    }
}

/// A new random raw key, written to `path` (mode 0600) for a vault being
/// created. If another process is creating the same vault, its key.
pub(crate) fn create_key_file(path: &Path) -> Result<Option<Key>> {
    let key = Key::generate()?;
    match key.write_new_file(path) {
        Ok(()) => Ok(Some(key)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Key::read_file(path).map(Some)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_key_text_round_trips() {
        let key = Key::raw([0xab; 32]);
        let text = key.to_text();
        assert_eq!(text.len(), 67);
        assert!(text.starts_with("x'abab"));
        assert!(Key::parse(&text).unwrap().is_raw());
        assert!(Key::parse(&format!("{}\n", *text)).unwrap().is_raw());
    }

    #[test]
    fn other_text_is_a_passphrase() {
        assert!(
            !Key::parse("correct horse battery staple\n")
                .unwrap()
                .is_raw()
        );
        assert!(matches!(Key::parse(""), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            Key::parse("x'abc'"),
            Err(Error::InvalidKey { .. })
        ));
        let not_hex = format!("x'{}'", "zz".repeat(32));
        assert!(matches!(
            Key::parse(&not_hex),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn debug_never_shows_material() {
        let shown = format!("{:?}", Key::passphrase("hunter2-secret").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", Key::raw([0x5a; 32]));
        assert!(!shown.contains("5a5a"), "{shown}");
    }
}

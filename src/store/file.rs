//! What a database file is, judged from its bytes before SQLite opens it.
//!
//! SQLCipher cannot tell a wrong key from a file that is not a database at
//! all: both fail with SQLITE_NOTADB. Looking at the bytes first lets us
//! name the problem: a plain SQLite header, text, a length that is not a
//! whole number of pages.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The first 16 bytes of every plain SQLite database.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// SQLCipher 4's page size; statevault never changes it.
pub(crate) const CIPHER_PAGE_SIZE: u64 = 4096;

/// What is at the database path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// Nothing yet, or an empty file: SQLite will create the database.
    New,
    /// A plain SQLite database.
    Plain,
    /// Not plain SQLite and not text: presumably SQLCipher.
    Encrypted,
}

/// Looks at the file at `path` and refuses what cannot be a whole database.
pub(crate) fn inspect(path: &Path) -> Result<FileKind> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::New),
        Err(e) => return Err(Error::io(path, e)),
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok(FileKind::New);
    }
    let mut head = Vec::with_capacity(1024);
    (&mut file)
        .take(1024)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;

    if head.starts_with(PLAIN_HEADER) {
        check_plain_length(path, &head, len)?;
        return Ok(FileKind::Plain);
    }
    if looks_like_text(&head) {
        return Err(Error::NotADatabase {
            path: path.to_owned(),
            reason: "it holds text, not database pages".into(),
        });
    }
    if !len.is_multiple_of(CIPHER_PAGE_SIZE) {
        return Err(Error::Truncated {
            path: path.to_owned(),
            len,
            page_size: CIPHER_PAGE_SIZE,
            detail: String::new(),
        });
    }
    Ok(FileKind::Encrypted)
}

/// A plain file's header says its page size and (when valid) its page count.
fn check_plain_length(path: &Path, head: &[u8], len: u64) -> Result<()> {
    if head.len() < 100 {
        return Err(Error::Truncated {
            path: path.to_owned(),
            len,
            page_size: 512,
            detail: ": the 100-byte header is incomplete".into(),
        });
    }
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let page_size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    if !page_size.is_power_of_two() || !(512..=65_536).contains(&page_size) {
        return Err(Error::NotADatabase {
            path: path.to_owned(),
            reason: format!("its header names an impossible page size ({page_size})"),
        });
    }
    let truncated = |detail: String| Error::Truncated {
        path: path.to_owned(),
        len,
        page_size,
        detail,
    };
    if !len.is_multiple_of(page_size) {
        return Err(truncated(String::new()));
    }
    // The in-header page count is valid only when the change counter
    // (offset 24) matches the version-valid-for number (offset 92).
    let pages = u64::from(be32(28));
    if be32(24) == be32(92) && pages * page_size > len {
        return Err(truncated(format!(
            ": the header counts {pages} pages, the file holds {}",
            len / page_size
        )));
    }
    Ok(())
}

/// Text files (configs, logs, JSON) are mostly printable; encrypted pages are not.
fn looks_like_text(head: &[u8]) -> bool {
    let printable = head
        .iter()
        .filter(|&&b| {
            b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
        })
        .count();
    let utf8 = std::str::from_utf8(head).is_ok();
    utf8 && printable * 100 >= head.len() * 95
}

/// The page count an encrypted file's header holds, read by decrypting
/// page 1 with `key` (SQLCipher 4's defaults: the salt in the page's first
/// 16 bytes, AES-256-CBC over the rest but the 80 reserved bytes at its
/// end, which start with the IV). `None` when the count is not valid (the
/// header's change counter differs from its version-valid-for number) or
/// the page does not decrypt to a SQLite header.
pub(crate) fn cipher_header_pages(path: &Path, key: &crate::Key) -> Option<u64> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::NoPadding};
    const RESERVED: usize = 80;
    let mut page = zeroize::Zeroizing::new(vec![0u8; CIPHER_PAGE_SIZE as usize]);
    File::open(path).ok()?.read_exact(&mut page).ok()?;
    let salt: [u8; 16] = page[..16].try_into().ok()?;
    let end = page.len() - RESERVED;
    let iv: [u8; 16] = page[end..end + 16].try_into().ok()?;
    let aes_key = key.page_key(&salt);
    let header = cbc::Decryptor::<aes::Aes256>::new(aes_key.as_slice().into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut page[16..end])
        .ok()?;
    // Offsets in the header, less the 16 bytes of salt: 21-23 hold the
    // fixed payload fractions 64, 32, 32.
    let be32 =
        |at: usize| u32::from_be_bytes(header[at - 16..at - 12].try_into().unwrap_or([0; 4]));
    let valid = header[21 - 16..24 - 16] == [64, 32, 32] && be32(24) == be32(92);
    valid.then(|| u64::from(be32(28)))
}

/// `path` with `suffix` appended to its file name: `<db>.key`, `<db>-wal`.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates an empty database file, mode 0600, before SQLite opens it. SQLite
/// gives the -wal and -shm files the database file's mode.
pub(crate) fn create_private(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        // An empty file that is already there: make it private too.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(path, e))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_recognised() {
        assert!(looks_like_text(b"[server]\nport = 8080\n"));
        assert!(looks_like_text("{\"name\": \"caf\u{e9}\"}".as_bytes()));
        assert!(!looks_like_text(&[
            0x8f, 0x00, 0x13, 0xfe, 0x01, 0x02, 0x03
        ]));
    }

    #[test]
    fn missing_and_empty_files_are_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        assert_eq!(inspect(&path).unwrap(), FileKind::New);
        create_private(&path).unwrap();
        assert_eq!(inspect(&path).unwrap(), FileKind::New);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

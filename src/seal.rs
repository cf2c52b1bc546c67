//! Sealing: what SQLCipher gives the file, sealing gives PostgreSQL. A
//! value that must not be read by whoever reads the database (a database
//! administrator, a `pg_dump`, a replica) leaves the process as AEAD
//! ciphertext:
//!
//! - XChaCha20-Poly1305, with a random 24-byte nonce per value (random
//!   nonces of that length never repeat in practice, so no counter is
//!   shared between instances);
//! - under a key per table, derived from the vault key with HKDF-SHA256
//!   (the table's name as context), so a value moved to another table does
//!   not open;
//! - with the row's identity (a session id, a cache key, a user id) as
//!   associated data, so a value moved to another row does not open either.
//!
//! A sealed value is `VERSION ‖ nonce ‖ ciphertext ‖ tag`: 41 bytes more
//! than the plaintext.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The first byte of every sealed value: the scheme above.
const VERSION: u8 = 1;
const NONCE: usize = 24;
const TAG: usize = 16;
/// HKDF's salt: this scheme, so that its keys differ from any other use of
/// the vault key.
const SALT: &[u8] = b"statevault seal v1";

/// The keys of one vault: one per table, derived on demand.
pub(crate) struct Sealer {
    root: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// The key of one table.
pub(crate) struct TableSealer {
    table: &'static str,
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    /// The sealer of a vault whose 32-byte key is `root` (a raw key, or
    /// what a passphrase stretches to).
    pub(crate) fn new(root: Zeroizing<[u8; 32]>) -> Self {
        Sealer { root }
    }

    /// The key for `table`'s sealed columns.
    pub(crate) fn table(&self, table: &'static str) -> TableSealer {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SALT), self.root.as_slice())
            .expand(table.as_bytes(), key.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        TableSealer {
            table,
            cipher: XChaCha20Poly1305::new(key.as_slice().into()),
        }
    }
}

impl TableSealer {
    /// Seals `plaintext` for the row whose identity is `row`.
    pub(crate) fn seal(&self, row: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| Error::Internal {
            detail: format!("no randomness for a nonce: {e}"),
        })?;
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: row,
                },
            )
            .map_err(|_| Error::Internal {
                detail: format!("sealing a value of {} bytes failed", plaintext.len()),
            })?;
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed for the row whose identity is `row`. A value
    /// sealed under another key, for another table or row, or changed by a
    /// single bit is refused with [`Error::BadData`].
    pub(crate) fn open(&self, row: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let refused = |detail: &str| Error::BadData {
            what: self.table.into(),
            detail: detail.to_owned(),
        };
        if sealed.len() < 1 + NONCE + TAG {
            return Err(refused("a sealed value is shorter than its nonce and tag"));
        }
        if sealed[0] != VERSION {
            return Err(refused("a sealed value has an unknown version"));
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| refused("a cut nonce"))?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: row,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                refused("a sealed value does not open: another vault key, another row, or changed")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(Zeroizing::new([byte; 32]))
    }

    #[test]
    fn a_value_opens_for_its_own_row_table_and_key_only() {
        let sessions = sealer(7).table("sessions");
        let sealed = sessions.seal(b"s-1", br#"{"cart":3}"#).unwrap();
        assert_eq!(sealed.len(), 10 + 41);
        assert_eq!(&**sessions.open(b"s-1", &sealed).unwrap(), br#"{"cart":3}"#);
        assert!(sessions.open(b"s-2", &sealed).is_err(), "another row");
        assert!(
            sealer(7)
                .table("preferences")
                .open(b"s-1", &sealed)
                .is_err(),
            "another table"
        );
        assert!(
            sealer(8).table("sessions").open(b"s-1", &sealed).is_err(),
            "another key"
        );
    }

    #[test]
    fn every_changed_bit_and_every_cut_is_refused() {
        let table = sealer(1).table("cache_entries");
        let sealed = table.seal(b"k", b"value").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut changed = sealed.clone();
            changed[i / 8] ^= 1 << (i % 8);
            assert!(table.open(b"k", &changed).is_err(), "bit {i}");
        }
        for len in 0..sealed.len() {
            assert!(table.open(b"k", &sealed[..len]).is_err(), "cut to {len}");
        }
    }

    #[test]
    fn the_same_value_seals_differently_each_time_and_hides_its_text() {
        let table = sealer(2).table("preferences");
        let (a, b) = (
            table.seal(b"alice", b"theme=dark").unwrap(),
            table.seal(b"alice", b"theme=dark").unwrap(),
        );
        assert_ne!(a, b);
        assert!(!a.windows(4).any(|w| w == b"dark"));
        assert!(!format!("{:?}", sealer(0x5a)).contains("5a"));
    }
}

//! The sessions facet's public values (what a caller builds, and what it
//! gets back) and the hashing they rest on. Nothing here touches the file.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clock::Timestamp;
use crate::{Error, Result};

///
/// ```
/// use statevault::NewSession;
///
/// #[derive(serde::Serialize)]
/// struct Upstream { access_token: String, country: String }
///
/// let new = NewSession::new("alice")
///     .device_fingerprint("ua=Firefox;screen=2560x1440")
///     .client_ip("203.0.113.7")
///     .user_agent("Mozilla/5.0")
///     .client_meta("route", "/mcp")
///     .data(&Upstream { access_token: "upstream".into(), country: "NO".into() })?;
/// # Ok::<(), statevault::Error>(())
/// ```
#[derive(Clone)]
pub struct NewSession {
    pub(super) user_id: String,
    pub(super) org_id: Option<String>,
    pub(super) fingerprint: Option<Zeroizing<String>>,
    pub(super) ip: Option<Zeroizing<String>>,
    pub(super) user_agent: Option<Zeroizing<String>>,
    pub(super) client_meta: serde_json::Map<String, serde_json::Value>,
    pub(super) data: String,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) absolute_lifetime: Option<Duration>,
}

impl NewSession {
    /// A session for `user_id`, with the configured lifetimes and no data.
    pub fn new(user_id: impl Into<String>) -> Self {
        NewSession {
            user_id: user_id.into(),
            org_id: None,
            fingerprint: None,
            ip: None,
            user_agent: None,
            client_meta: serde_json::Map::new(),
            data: "{}".into(),
            idle_timeout: None,
            absolute_lifetime: None,
        }
    }

    /// The user's organisation.
    pub fn org(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }

    /// Binds the session to this device: validation must present the same
    /// fingerprint. Stored as a keyed hash.
    pub fn device_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(Zeroizing::new(fingerprint.into()));
        self
    }

    /// The client's IP address, stored as a keyed hash.
    pub fn client_ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(Zeroizing::new(ip.into()));
        self
    }

    /// The client's user agent, stored as a keyed hash.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(Zeroizing::new(user_agent.into()));
        self
    }

    /// Client metadata that does not identify a person (route, app version),
    /// stored as it is, in `client_meta`.
    pub fn client_meta(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.client_meta.insert(key.into(), value.into());
        self
    }

    /// The session's data, as JSON (upstream tokens, preferences of the moment …).
    pub fn data<T: Serialize + ?Sized>(mut self, data: &T) -> Result<Self> {
        self.data = serde_json::to_string(data)?;
        Ok(self)
    }

    /// This session's idle timeout, instead of the configured one.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// This session's absolute lifetime, instead of the configured one.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.absolute_lifetime = Some(lifetime);
        self
    }
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession")
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("bound", &self.fingerprint.is_some())
            .finish_non_exhaustive()
    }
}

/// A session carried over from the seeds' old file layout
/// ([`Vault::import_legacy`](crate::Vault::import_legacy)): the legacy
/// credential becomes the bearer token, stored only as its SHA-256.
pub(crate) struct ImportedSession {
    pub(crate) user_id: String,
    /// The legacy credential presented as the bearer token.
    pub(crate) token: Zeroizing<String>,
    /// The legacy device fingerprint the session stays bound to.
    pub(crate) device_fingerprint: Option<Zeroizing<String>>,
    /// The session data, as JSON text.
    pub(crate) data: Zeroizing<String>,
    /// When it expires; `None`: the configured absolute lifetime from now.
    pub(crate) expires_at: Option<Timestamp>,
}

/// What [`Sessions::import`](crate::Sessions::import) did.
pub(crate) enum SessionImport {
    /// A session was created; forget `evicted` once the transaction commits.
    Created {
        id: String,
        expires_at: Timestamp,
        evicted: Vec<[u8; 32]>,
    },
    /// The vault already has a session with this token.
    TokenTaken,
}

/// A secret handed to a client once: a session's bearer token or its CSRF
/// token. Wiped on drop ([`zeroize::ZeroizeOnDrop`]); `Debug` does not show
/// it; `==` takes the same time wherever two secrets differ.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct Secret(Zeroizing<String>);

/// In constant time: the SHA-256 of each, compared byte for byte without
/// stopping at the first difference (so neither length nor content leaks
/// through timing).
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        constant_time_eq(&sha256(self.0.as_bytes()), &sha256(other.0.as_bytes()))
    }
}

impl Eq for Secret {}

impl Secret {
    /// 256 random bits, in hex (a CSRF token).
    pub(super) fn generate() -> Result<Secret> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        random(bytes.as_mut())?;
        Ok(Secret(crate::key::hex(bytes.as_slice())))
    }

    /// A bearer token issued at `now`: the time (6 bytes, milliseconds since
    /// the Unix epoch, big-endian), then 256 random bits, in hex. Its key
    /// ([`token_key`]) starts with that time, so the tokens of sessions made
    /// together sit together in the token index.
    pub(super) fn token(now: Timestamp) -> Result<Secret> {
        let mut bytes = Zeroizing::new([0u8; ISSUED + 32]);
        bytes[..ISSUED].copy_from_slice(&issued_at(now));
        random(&mut bytes[ISSUED..])?;
        Ok(Secret(crate::key::hex(bytes.as_slice())))
    }

    /// A token a client presented, kept as a secret from then on.
    #[cfg(feature = "tower")]
    pub(crate) fn presented(token: &str) -> Secret {
        Secret(Zeroizing::new(token.to_owned()))
    }

    /// The token, to hand to the client: hex digits (URL-safe), 76 for a
    /// bearer token, 64 for a CSRF token.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What [`Sessions::create`](crate::Sessions::create), [`Sessions::rotate`](crate::Sessions::rotate) and
/// [`Sessions::regenerate`](crate::Sessions::regenerate) hand back: the new secrets, once.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    /// The session's public id (safe to log and show; not a credential).
    pub id: String,
    /// The bearer token: give it to the client; only its hash is stored.
    pub token: Secret,
    /// The CSRF token for this session; check it with [`Session::verify_csrf`](crate::Session::verify_csrf).
    pub csrf_token: Secret,
    /// When the session expires however it is used.
    pub expires_at: Timestamp,
    /// Sessions revoked to respect the per-user cap (their ids).
    pub evicted: Vec<String>,
}

/// The outcome of [`Sessions::validate`](crate::Sessions::validate): each failure is its own case,
/// because a caller answers them differently (401, re-authenticate, raise
/// a hijacking alarm).
#[derive(Debug, Clone)]
#[must_use]
pub enum Validation {
    /// The token is live. Rotate it if [`Session::rotation_due`](crate::Session::rotation_due) says so.
    Valid(Session),
    /// No session has this token (never issued, rotated away, or swept).
    Unknown,
    /// The session expired.
    Expired {
        /// Its id.
        session_id: String,
        /// Which limit it passed.
        reason: ExpiryReason,
    },
    /// The session was revoked.
    Revoked {
        /// Its id.
        session_id: String,
        /// Why (`revoked`, `logout_all`, `evicted`, `regenerated`, …).
        reason: String,
    },
    /// The session is bound to a device and this is not it: a stolen token?
    FingerprintMismatch {
        /// Its id.
        session_id: String,
        /// Whose session it is.
        user_id: String,
    },
}

impl Validation {
    /// The session, if the token is live.
    pub fn valid(self) -> Option<Session> {
        match self {
            Validation::Valid(session) => Some(session),
            _ => None,
        }
    }

    /// The variant's name, as the `sessions.validate` span's outcome.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Validation::Valid(_) => "Valid",
            Validation::Unknown => "Unknown",
            Validation::Expired { .. } => "Expired",
            Validation::Revoked { .. } => "Revoked",
            Validation::FingerprintMismatch { .. } => "FingerprintMismatch",
        }
    }

    pub(super) fn refusal(&self) -> &'static str {
        match self {
            Validation::Valid(_) => "valid",
            Validation::Unknown => "unknown token",
            Validation::Expired { .. } => "expired",
            Validation::Revoked { .. } => "revoked",
            Validation::FingerprintMismatch { .. } => "device fingerprint mismatch",
        }
    }
}

/// Which expiry a session passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryReason {
    /// Unused for longer than its idle timeout.
    Idle,
    /// Older than its absolute lifetime.
    Absolute,
}

/// A live session. `Debug` leaves out the data (it may hold upstream tokens).
#[derive(Clone, Serialize, serde::Deserialize)]
pub struct Session {
    /// Public id.
    pub id: String,
    /// Whose session it is.
    pub user_id: String,
    /// The user's organisation.
    pub org_id: Option<String>,
    /// When it was created (or regenerated).
    pub created_at: Timestamp,
    /// When it was last validated.
    pub last_seen_at: Timestamp,
    /// When it expires if unused from now on.
    pub idle_expires_at: Timestamp,
    /// When it expires however used.
    pub expires_at: Timestamp,
    /// Whether its token should be rotated now ([`Sessions::rotate`](crate::Sessions::rotate)).
    pub rotation_due: bool,
    /// Whether it is bound to a device fingerprint.
    pub device_bound: bool,
    /// Client metadata that does not identify a person.
    pub client_meta: serde_json::Value,
    #[serde(skip)]
    pub(super) data: Arc<str>,
    #[serde(skip)]
    pub(super) csrf_hash: [u8; 32],
}

impl Session {
    /// The session data, typed.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_str(&self.data)?)
    }

    /// The session data as JSON text.
    pub fn data_json(&self) -> &str {
        &self.data
    }

    /// Whether `token` is this session's CSRF token, compared in constant time.
    pub fn verify_csrf(&self, token: &str) -> bool {
        constant_time_eq(&sha256(token.as_bytes()), &self.csrf_hash)
    }
}

impl fmt::Debug for ExportedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportedSession")
            .field("session", &self.session)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("created_at", &self.created_at)
            .field("last_seen_at", &self.last_seen_at)
            .field("expires_at", &self.expires_at)
            .field("rotation_due", &self.rotation_due)
            .field("device_bound", &self.device_bound)
            .finish_non_exhaustive()
    }
}

/// A session in a user's export: everything but its token and CSRF hashes.
/// `Debug` shows the session as [`Session`]'s does, never its data.
#[derive(Clone, Serialize, serde::Deserialize)]
pub struct ExportedSession {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// Its data.
    pub data: serde_json::Value,
    /// Why it was revoked, if it was.
    pub revoked: Option<String>,
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Bytes of issue time at the start of a bearer token and of its key.
const ISSUED: usize = 6;

/// `now` as [`ISSUED`] bytes: milliseconds since the Unix epoch, big-endian
/// (0 before it; 48 bits last until the year 10889).
fn issued_at(now: Timestamp) -> [u8; ISSUED] {
    let ms = u64::try_from(now.as_millis()).unwrap_or(0);
    let mut out = [0u8; ISSUED];
    out.copy_from_slice(&ms.to_be_bytes()[8 - ISSUED..]);
    out
}

fn random(bytes: &mut [u8]) -> Result<()> {
    getrandom::fill(bytes).map_err(|e| Error::Internal {
        detail: format!("the system random generator failed: {e}"),
    })
}

/// The key a bearer token's session is stored and found under
/// (`token_hash`). For a token [`Secret::token`] issued (76 hex digits):
/// its issue time, then the first 26 bytes of its SHA-256, so that keys
/// sort by issue time and a sweep deletes from a few neighbouring pages of
/// the token index rather than one random page per session. For any other
/// token (issued by an older version, or imported): its SHA-256.
pub(crate) fn token_key(token: &str) -> [u8; 32] {
    let digest = sha256(token.as_bytes());
    let issued = token.get(..2 * ISSUED).filter(|_| {
        token.len() == 2 * (ISSUED + 32) && token.bytes().all(|b| b.is_ascii_hexdigit())
    });
    let Some(issued) = issued else {
        return digest;
    };
    let mut key = [0u8; 32];
    for (i, byte) in key[..ISSUED].iter_mut().enumerate() {
        *byte = u8::from_str_radix(&issued[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    key[ISSUED..].copy_from_slice(&digest[..32 - ISSUED]);
    key
}

/// Equality whose time does not depend on where the inputs differ.
pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token issued now carries the time in its first 12 hex digits, and
    /// its key starts with that time: keys sort by issue time, whatever
    /// their random part.
    #[test]
    fn token_keys_sort_by_issue_time() {
        let at = |ms| Secret::token(Timestamp::from_millis(ms)).unwrap();
        let (early, late) = (at(1_767_225_600_000), at(1_767_225_600_001));
        assert_eq!(early.expose().len(), 76);
        assert_eq!(&early.expose()[..12], "019b76daa800");
        let (k_early, k_late) = (token_key(early.expose()), token_key(late.expose()));
        assert_eq!(k_early[..6], [0x01, 0x9b, 0x76, 0xda, 0xa8, 0x00]);
        assert!(k_early < k_late);
        assert_eq!(k_early[6..], sha256(early.expose().as_bytes())[..26]);
    }

    /// Tokens of another shape (an older version's 64 hex digits, an
    /// imported credential, 76 characters that are not all hex) are found
    /// under their SHA-256, as before.
    #[test]
    fn other_tokens_keep_their_sha256() {
        let legacy = Secret::generate().unwrap();
        assert_eq!(
            token_key(legacy.expose()),
            sha256(legacy.expose().as_bytes())
        );
        let odd = format!("{}zz", "0".repeat(74));
        assert_eq!(token_key(&odd), sha256(odd.as_bytes()));
        assert_eq!(token_key("é"), sha256("é".as_bytes()));
    }
}

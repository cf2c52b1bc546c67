//! Sessions: opaque bearer tokens, device binding, idle and absolute
//! expiry, rotation, revocation, a per-user cap, CSRF tokens, and typed
//! session data.
//!
//! # Guarantees
//!
//! 1. **A copy of the file is not a copy of the sessions.** A token is 256
//!    random bits, returned once by [`Sessions::create`]; the table keeps
//!    only its SHA-256 (`token_hash`), and the CSRF token's. Device
//!    fingerprints, IPs and user agents are stored as keyed hashes
//!    ([`crate::Vault::keyed_hash`]).
//! 2. **Validation is a read.** [`Sessions::validate`] looks the token hash
//!    up on the caller's thread (a rusqlite reader, ~4 µs) or, for a
//!    session validated in the last [`SessionConfig::memory_ttl`], in memory.
//!    It writes nothing: the last-seen time goes to a buffer that the vault
//!    flushes every `flush_interval` as one multi-row `UPDATE`.
//! 3. **Idle expiry is exact in this process**: validation compares with the
//!    newest of the file's last-seen time and the buffered one. Another
//!    process sees this one's activity once it is flushed, so across
//!    processes idle expiry can be late by at most one flush interval.
//! 4. **Revocation and rotation take effect at once in this process**: they
//!    commit before returning and drop the session from memory. An epoch
//!    counter keeps a validation that read the file before the change from
//!    putting the old row back. Another process sees them within its
//!    `memory_ttl` (default 1 s).
//! 5. **The cap holds under concurrency.** Creation counts the user's live
//!    sessions and inserts in one `BEGIN IMMEDIATE` transaction, which
//!    serialises creators in every process.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Row as _};
use zeroize::Zeroizing;

use crate::clock::Timestamp;
use crate::core::{Core, lock};
use crate::ids::check_user;
use crate::{Error, Result};

/// How sessions behave. Every field has a default; change the ones you need:
///
/// ```
/// use std::time::Duration;
/// use statevault::{SessionConfig, WhenFull};
///
/// let mut config = SessionConfig::default();
/// config.idle_timeout = Duration::from_secs(30 * 60);
/// config.when_full = WhenFull::Refuse;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// A session unused for this long is expired (default 12 h).
    pub idle_timeout: Duration,
    /// A session is expired this long after creation, however used (default 7 days).
    pub absolute_lifetime: Duration,
    /// [`Session::rotation_due`] turns true this long after the token was
    /// issued (default 24 h).
    pub rotation_interval: Duration,
    /// Live sessions one user may have at once (default 3).
    pub max_per_user: usize,
    /// What creating one more than `max_per_user` does (default: evict the oldest).
    pub when_full: WhenFull,
    /// [`Sessions::sweep`] deletes sessions unused for this long (default 30 days).
    pub retention: Duration,
    /// How many validated sessions are kept in memory (default 10 000, at
    /// most [`MAX_SESSION_MEMORY_ENTRIES`]; 0 turns it off). Their table is
    /// allocated at open.
    pub memory_entries: usize,
    /// How long a session read from the file may be served from memory
    /// before it is read again (default 1 s). This bounds how late this
    /// process sees another process's revocation.
    pub memory_ttl: Duration,
    /// The largest session data, as JSON bytes (default 64 KiB).
    pub max_data_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        SessionConfig {
            idle_timeout: Duration::from_secs(12 * HOUR),
            absolute_lifetime: Duration::from_secs(7 * 24 * HOUR),
            rotation_interval: Duration::from_secs(24 * HOUR),
            max_per_user: 3,
            when_full: WhenFull::EvictOldest,
            retention: Duration::from_secs(30 * 24 * HOUR),
            memory_entries: 10_000,
            memory_ttl: Duration::from_secs(1),
            max_data_bytes: 64 << 10,
        }
    }
}

/// The longest lifetime, timeout or interval a session setting may have.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The most validated sessions [`SessionConfig::memory_entries`] may keep:
/// their hash table is allocated in full at open, so a huge count would
/// take all memory (or overflow the table's capacity and panic).
pub const MAX_SESSION_MEMORY_ENTRIES: usize = 1_000_000;

impl SessionConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        check_lifetime("sessions.idle_timeout", self.idle_timeout)?;
        check_lifetime("sessions.absolute_lifetime", self.absolute_lifetime)?;
        check_lifetime("sessions.rotation_interval", self.rotation_interval)?;
        check_lifetime("sessions.retention", self.retention)?;
        if !(1..=10_000).contains(&self.max_per_user) {
            return Err(Error::invalid(
                "sessions.max_per_user",
                format!("{} is not in 1..=10000", self.max_per_user),
            ));
        }
        if self.memory_entries > MAX_SESSION_MEMORY_ENTRIES {
            return Err(Error::invalid(
                "sessions.memory_entries",
                format!(
                    "{} is more than {MAX_SESSION_MEMORY_ENTRIES}",
                    self.memory_entries
                ),
            ));
        }
        if self.memory_ttl > Duration::from_secs(3600) {
            return Err(Error::invalid("sessions.memory_ttl", "longer than an hour"));
        }
        if self.max_data_bytes > 16 << 20 {
            return Err(Error::invalid(
                "sessions.max_data_bytes",
                "more than 16 MiB",
            ));
        }
        Ok(())
    }
}

fn check_lifetime(what: &'static str, d: Duration) -> Result<()> {
    if d < Duration::from_secs(1) || d > TEN_YEARS {
        return Err(Error::invalid(
            what,
            format!("{d:?} is not between 1 s and 10 years"),
        ));
    }
    Ok(())
}

/// What creating a session does when the user already has `max_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Revoke the oldest live sessions to make room (reason `evicted`).
    EvictOldest,
    /// Refuse with [`Error::SessionLimit`].
    Refuse,
}

/// A session to create: who, from where, with what data.
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
    user_id: String,
    org_id: Option<String>,
    fingerprint: Option<Zeroizing<String>>,
    ip: Option<Zeroizing<String>>,
    user_agent: Option<Zeroizing<String>>,
    client_meta: serde_json::Map<String, serde_json::Value>,
    data: String,
    idle_timeout: Option<Duration>,
    absolute_lifetime: Option<Duration>,
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

/// What [`Sessions::import`] did.
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
    fn generate() -> Result<Secret> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())
            .map_err(|e| Error::invalid("random generator", e.to_string()))?;
        Ok(Secret(crate::key::hex(bytes.as_slice())))
    }

    /// The token, to hand to the client (64 URL-safe characters).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What [`Sessions::create`], [`Sessions::rotate`] and
/// [`Sessions::regenerate`] hand back: the new secrets, once.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    /// The session's public id (safe to log and show; not a credential).
    pub id: String,
    /// The bearer token: give it to the client; only its hash is stored.
    pub token: Secret,
    /// The CSRF token for this session; check it with [`Session::verify_csrf`].
    pub csrf_token: Secret,
    /// When the session expires however it is used.
    pub expires_at: Timestamp,
    /// Sessions revoked to respect the per-user cap (their ids).
    pub evicted: Vec<String>,
}

/// The outcome of [`Sessions::validate`]: each failure is its own case,
/// because a caller answers them differently (401, re-authenticate, raise
/// a hijacking alarm).
#[derive(Debug, Clone)]
#[must_use]
pub enum Validation {
    /// The token is live. Rotate it if [`Session::rotation_due`] says so.
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

    fn refusal(&self) -> &'static str {
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
    /// Whether its token should be rotated now ([`Sessions::rotate`]).
    pub rotation_due: bool,
    /// Whether it is bound to a device fingerprint.
    pub device_bound: bool,
    /// Client metadata that does not identify a person.
    pub client_meta: serde_json::Value,
    #[serde(skip)]
    data: Arc<str>,
    #[serde(skip)]
    csrf_hash: [u8; 32],
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

/// A session as the file has it, shared by memory and validation.
struct Row {
    id: String,
    user_id: String,
    org_id: Option<String>,
    binding: Binding,
    csrf_hash: [u8; 32],
    data: Arc<str>,
    client_meta: Arc<str>,
    created_at: Timestamp,
    /// Newest of the file's last-seen time and this process's validations.
    last_seen_ms: AtomicI64,
    idle_timeout: Duration,
    expires_at: Timestamp,
    rotation_due_at: Timestamp,
    revoked: Option<String>,
}

/// The device a session is bound to, as its row has it.
enum Binding {
    /// Not bound: any device may present the token.
    Unbound,
    /// The keyed hash of the device fingerprint.
    Device([u8; 32]),
    /// A stored hash that is not 32 bytes: bound to a device nobody can
    /// prove (fails closed), never read as unbound.
    Unreadable,
}

/// The columns [`Row::from_rusqlite`] reads, in its order.
macro_rules! row_columns {
    () => {
        "id, user_id, org_id, device_fingerprint, csrf_hash, data, client_meta, created_at, last_seen_at, \
         idle_timeout_secs, expires_at, rotation_due_at, revoked_at, revoked_reason"
    };
}

impl Row {
    fn from_rusqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let last_seen: Timestamp = r.get(8)?;
        let idle: i64 = r.get(9)?;
        let revoked_at: Option<String> = r.get(12)?;
        let reason: Option<String> = r.get(13)?;
        Ok(Row {
            id: r.get(0)?,
            user_id: r.get(1)?,
            org_id: r.get(2)?,
            binding: match r.get::<_, Option<Vec<u8>>>(3)? {
                None => Binding::Unbound,
                Some(hash) => hash.try_into().map_or(Binding::Unreadable, Binding::Device),
            },
            csrf_hash: r.get::<_, Vec<u8>>(4)?.try_into().unwrap_or([0; 32]),
            data: r.get::<_, String>(5)?.into(),
            client_meta: r.get::<_, String>(6)?.into(),
            created_at: r.get(7)?,
            last_seen_ms: AtomicI64::new(last_seen.as_millis()),
            idle_timeout: Duration::from_secs(u64::try_from(idle).unwrap_or(0)),
            expires_at: r.get(10)?,
            rotation_due_at: r.get(11)?,
            revoked: revoked_at.map(|_| reason.unwrap_or_else(|| "revoked".into())),
        })
    }

    fn last_seen(&self) -> Timestamp {
        Timestamp::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }

    fn idle_expires_at(&self) -> Timestamp {
        self.last_seen().saturating_add(self.idle_timeout)
    }

    fn session(&self, now: Timestamp) -> Session {
        Session {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            org_id: self.org_id.clone(),
            created_at: self.created_at,
            last_seen_at: self.last_seen(),
            idle_expires_at: self.idle_expires_at(),
            expires_at: self.expires_at,
            rotation_due: now >= self.rotation_due_at,
            device_bound: !matches!(self.binding, Binding::Unbound),
            client_meta: serde_json::from_str(&self.client_meta).unwrap_or_default(),
            data: self.data.clone(),
            csrf_hash: self.csrf_hash,
        }
    }
}

/// A row in memory, and when it was read from the file.
struct Cached {
    row: Arc<Row>,
    read_at: Timestamp,
}

const SHARDS: usize = 16;

/// The sessions facet's state in the vault: hot rows and buffered touches.
pub(crate) struct State {
    config: SessionConfig,
    /// Validated rows by token hash, in shards so that concurrent requests
    /// rarely meet on one lock. Empty when `memory_entries` is 0.
    memory: Vec<Mutex<LruCache<[u8; 32], Cached>>>,
    /// Bumped by every revocation, rotation and data change; a row read from
    /// the file is put in memory only if no change happened meanwhile.
    epoch: AtomicU64,
    /// Last-seen times not yet written, by session id.
    touches: Mutex<HashMap<String, Timestamp>>,
}

impl State {
    pub(crate) fn new(config: SessionConfig) -> State {
        let per_shard = config.memory_entries.div_ceil(SHARDS);
        let memory = NonZeroUsize::new(per_shard)
            .map(|cap| {
                (0..SHARDS)
                    .map(|_| Mutex::new(LruCache::new(cap)))
                    .collect()
            })
            .unwrap_or_default();
        State {
            config,
            memory,
            epoch: AtomicU64::new(0),
            touches: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, hash: &[u8; 32]) -> Option<&Mutex<LruCache<[u8; 32], Cached>>> {
        self.memory.get(usize::from(hash[0]) % SHARDS.max(1))
    }

    /// Forgets rows whose tokens changed; called after the change committed.
    pub(crate) fn forget(&self, hashes: &[[u8; 32]]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for hash in hashes {
            if let Some(shard) = self.shard(hash) {
                lock(shard).pop(hash);
            }
        }
    }
}

/// The sessions facet of a vault; from [`Vault::sessions`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use statevault::{NewSession, Validation, Vault, VaultOptions};
///
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// let issued = vault.sessions().create(NewSession::new("alice")).await?;
///
/// // On every request:
/// match vault.sessions().validate(issued.token.expose(), None).await? {
///     Validation::Valid(session) => assert_eq!(session.user_id, "alice"),
///     other => panic!("401: {other:?}"),
/// }
/// vault.sessions().revoke(&issued.id).await?;
/// assert!(matches!(
///     vault.sessions().validate(issued.token.expose(), None).await?,
///     Validation::Revoked { .. }
/// ));
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Sessions<'a> {
    core: &'a Core,
    pub(crate) state: &'a State,
}

impl<'a> Sessions<'a> {
    pub(crate) fn new(core: &'a Core, state: &'a State) -> Self {
        Sessions { core, state }
    }

    /// Creates a session and returns its token and CSRF token, once.
    ///
    /// If the user already has `max_per_user` live sessions, the oldest are
    /// revoked ([`WhenFull::EvictOldest`]) or the call fails with
    /// [`Error::SessionLimit`] ([`WhenFull::Refuse`]).
    pub async fn create(&self, new: NewSession) -> Result<IssuedSession> {
        let config = &self.state.config;
        check_user(&new.user_id)?;
        crate::json::check_text("data", &new.data, config.max_data_bytes, "max_data_bytes")?;
        let idle = new.idle_timeout.unwrap_or(config.idle_timeout);
        let lifetime = new.absolute_lifetime.unwrap_or(config.absolute_lifetime);
        check_lifetime("idle_timeout", idle)?;
        check_lifetime("absolute_lifetime", lifetime)?;
        let hash = |domain: &str, value: &Option<Zeroizing<String>>| {
            value
                .as_ref()
                .map(|v| self.core.keyed_hash(domain, v.as_bytes()))
                .transpose()
        };
        let fingerprint = hash("device_fingerprint", &new.fingerprint)?;
        let ip = hash("ip", &new.ip)?;
        let user_agent = hash("user_agent", &new.user_agent)?;
        let client_meta = serde_json::Value::Object(new.client_meta).to_string();

        let now = self.core.now();
        let token = Secret::generate()?;
        let csrf = Secret::generate()?;
        let id = uuid::Uuid::now_v7().to_string();
        let expires_at = now.saturating_add(lifetime);

        let mut tx = self.core.store().sqlx_transaction().await?;
        let evicted = self.make_room(&mut tx, &new.user_id, now).await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint, ip_hash,
                 user_agent_hash, client_meta, data, created_at, last_seen_at, idle_timeout_secs, expires_at,
                 rotation_due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14)",
        )
        .bind(&id)
        .bind(&sha256(token.expose().as_bytes())[..])
        .bind(&sha256(csrf.expose().as_bytes())[..])
        .bind(&new.user_id)
        .bind(&new.org_id)
        .bind(fingerprint.as_ref().map(|h| &h[..]))
        .bind(ip.as_ref().map(|h| &h[..]))
        .bind(user_agent.as_ref().map(|h| &h[..]))
        .bind(&client_meta)
        .bind(&new.data)
        .bind(now)
        .bind(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX))
        .bind(expires_at)
        .bind(now.saturating_add(config.rotation_interval))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.state
            .forget(&evicted.iter().map(|(_, h)| *h).collect::<Vec<_>>());
        Ok(IssuedSession {
            id,
            token,
            csrf_token: csrf,
            expires_at,
            evicted: evicted.into_iter().map(|(id, _)| id).collect(),
        })
    }

    /// Within an import transaction: creates a session whose bearer token
    /// is the legacy credential (hashed like every token), with a fresh
    /// CSRF token nobody holds (a rotation issues one) and rotation due at
    /// once, so that the first request trades the legacy credential for a
    /// statevault token. Respects the per-user cap like [`Sessions::create`].
    pub(crate) async fn import(
        &self,
        tx: &mut sqlx::SqliteConnection,
        session: ImportedSession,
    ) -> Result<SessionImport> {
        let config = &self.state.config;
        check_user(&session.user_id)?;
        crate::json::check_text(
            "data",
            &session.data,
            config.max_data_bytes,
            "max_data_bytes",
        )?;
        let now = self.core.now();
        let expires_at = session
            .expires_at
            .unwrap_or_else(|| now.saturating_add(config.absolute_lifetime));
        check_lifetime("absolute_lifetime", expires_at.duration_since(now))?;
        let fingerprint = session
            .device_fingerprint
            .as_ref()
            .map(|fp| self.core.keyed_hash("device_fingerprint", fp.as_bytes()))
            .transpose()?;
        let token_hash = sha256(session.token.as_bytes());
        let taken = sqlx::query("SELECT 1 FROM sessions WHERE token_hash = ?1")
            .bind(&token_hash[..])
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Ok(SessionImport::TokenTaken);
        }
        let evicted = self.make_room(tx, &session.user_id, now).await?;
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, device_fingerprint, data,
                 created_at, last_seen_at, idle_timeout_secs, expires_at, rotation_due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?7)",
        )
        .bind(&id)
        .bind(&token_hash[..])
        .bind(&sha256(Secret::generate()?.expose().as_bytes())[..])
        .bind(&session.user_id)
        .bind(fingerprint.as_ref().map(|h| &h[..]))
        .bind(session.data.as_str())
        .bind(now)
        .bind(i64::try_from(config.idle_timeout.as_secs()).unwrap_or(i64::MAX))
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        Ok(SessionImport::Created {
            id,
            expires_at,
            evicted: evicted.into_iter().map(|(_, hash)| hash).collect(),
        })
    }

    /// Within the creating transaction: revokes the oldest live sessions so
    /// that one more fits, or refuses. Returns (id, token hash) of each evicted.
    async fn make_room(
        &self,
        tx: &mut sqlx::SqliteConnection,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(String, [u8; 32])>> {
        let rows = sqlx::query(
            "SELECT id, token_hash, last_seen_at, idle_timeout_secs FROM sessions
             WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2
             ORDER BY created_at, id",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let touches = lock(&self.state.touches).clone();
        let mut live = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            let last_seen: Timestamp = row.try_get(2)?;
            let last_seen = touches.get(&id).map_or(last_seen, |t| last_seen.max(*t));
            let idle = Duration::from_secs(u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0));
            if last_seen.saturating_add(idle) > now {
                let hash: Vec<u8> = row.try_get(1)?;
                live.push((id, hash.try_into().unwrap_or([0; 32])));
            }
        }
        let max = self.state.config.max_per_user;
        if live.len() < max {
            return Ok(Vec::new());
        }
        if self.state.config.when_full == WhenFull::Refuse {
            return Err(Error::SessionLimit {
                user_id: user_id.to_owned(),
                max,
            });
        }
        let excess = live.len() + 1 - max;
        let evicted: Vec<_> = live.into_iter().take(excess).collect();
        revoke_ids(
            tx,
            evicted.iter().map(|(id, _)| id.as_str()),
            "evicted",
            now,
        )
        .await?;
        Ok(evicted)
    }

    /// Checks a bearer token (and the device, if the session is bound to one).
    ///
    /// Runs on the caller's thread and writes nothing; the last-seen time is
    /// buffered (see the module docs). `Err` means the vault could not
    /// answer (closed, I/O); every answer about the token is a [`Validation`].
    pub async fn validate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<Validation> {
        let hash = sha256(token.as_bytes());
        let now = self.core.now();
        let Some(row) = self.row(&hash, now)? else {
            return Ok(Validation::Unknown);
        };
        if let Some(reason) = &row.revoked {
            return Ok(Validation::Revoked {
                session_id: row.id.clone(),
                reason: reason.clone(),
            });
        }
        let expired = |reason| Validation::Expired {
            session_id: row.id.clone(),
            reason,
        };
        if now >= row.expires_at {
            return Ok(expired(ExpiryReason::Absolute));
        }
        if now >= row.idle_expires_at() {
            return Ok(expired(ExpiryReason::Idle));
        }
        if !matches!(row.binding, Binding::Unbound) {
            let presented = device_fingerprint
                .map(|fp| self.core.keyed_hash("device_fingerprint", fp.as_bytes()))
                .transpose()?;
            let matches = match (&row.binding, presented) {
                (Binding::Device(bound), Some(p)) => constant_time_eq(&p, bound),
                _ => false,
            };
            if !matches {
                return Ok(Validation::FingerprintMismatch {
                    session_id: row.id.clone(),
                    user_id: row.user_id.clone(),
                });
            }
        }
        row.last_seen_ms
            .fetch_max(now.as_millis(), Ordering::Relaxed);
        lock(&self.state.touches).insert(row.id.clone(), now);
        Ok(Validation::Valid(row.session(now)))
    }

    /// The row for a token hash: from memory if read recently enough, else
    /// from the file (and then remembered, unless a change raced the read).
    fn row(&self, hash: &[u8; 32], now: Timestamp) -> Result<Option<Arc<Row>>> {
        let shard = self.state.shard(hash);
        if let Some(shard) = shard
            && let Some(cached) = lock(shard).get(hash)
            && now < cached.read_at.saturating_add(self.state.config.memory_ttl)
        {
            return Ok(Some(cached.row.clone()));
        }
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        let row = self.core.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                row_columns!(),
                " FROM sessions WHERE token_hash = ?1"
            ))?;
            let mut rows = stmt.query([&hash[..]])?;
            rows.next()?.map(Row::from_rusqlite).transpose()
        })?;
        let Some(row) = row else { return Ok(None) };
        if let Some(pending) = lock(&self.state.touches).get(&row.id) {
            row.last_seen_ms
                .fetch_max(pending.as_millis(), Ordering::Relaxed);
        }
        let row = Arc::new(row);
        if let Some(shard) = shard {
            let mut shard = lock(shard);
            if self.state.epoch.load(Ordering::SeqCst) == epoch {
                shard.put(
                    *hash,
                    Cached {
                        row: row.clone(),
                        read_at: now,
                    },
                );
            }
        }
        Ok(Some(row))
    }

    /// Issues a new token (and CSRF token) for a live session: the old token
    /// is dead when this returns; id, data and lifetimes carry over, and the
    /// next rotation is due `rotation_interval` from now.
    pub async fn rotate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<IssuedSession> {
        let session = self.require_valid(token, device_fingerprint).await?;
        let now = self.core.now();
        let (new_token, csrf) = (Secret::generate()?, Secret::generate()?);
        let old_hash = sha256(token.as_bytes());
        let mut tx = self.core.store().sqlx_transaction().await?;
        let done = sqlx::query(
            "UPDATE sessions SET token_hash = ?1, csrf_hash = ?2, rotation_due_at = ?3
             WHERE token_hash = ?4 AND revoked_at IS NULL",
        )
        .bind(&sha256(new_token.expose().as_bytes())[..])
        .bind(&sha256(csrf.expose().as_bytes())[..])
        .bind(now.saturating_add(self.state.config.rotation_interval))
        .bind(&old_hash[..])
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::SessionNotValid {
                reason: "rotated or revoked concurrently",
            });
        }
        tx.commit().await?;
        self.state.forget(&[old_hash]);
        Ok(IssuedSession {
            id: session.id,
            token: new_token,
            csrf_token: csrf,
            expires_at: session.expires_at,
            evicted: Vec::new(),
        })
    }

    /// After a login (or any change of privilege): a new session id and new
    /// tokens, with the same user and data and fresh lifetimes; the old
    /// session is revoked (`regenerated`). Defeats session fixation.
    pub async fn regenerate(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<IssuedSession> {
        let session = self.require_valid(token, device_fingerprint).await?;
        let now = self.core.now();
        let config = &self.state.config;
        let (new_token, csrf) = (Secret::generate()?, Secret::generate()?);
        let id = uuid::Uuid::now_v7().to_string();
        let old_hash = sha256(token.as_bytes());
        let lifetime = session.expires_at.duration_since(session.created_at);
        let expires_at = now.saturating_add(lifetime);
        let mut tx = self.core.store().sqlx_transaction().await?;
        let copied = sqlx::query(
            "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, org_id, device_fingerprint, ip_hash,
                 user_agent_hash, client_meta, data, created_at, last_seen_at, idle_timeout_secs, expires_at,
                 rotation_due_at)
             SELECT ?1, ?2, ?3, user_id, org_id, device_fingerprint, ip_hash, user_agent_hash, client_meta, data,
                 ?4, ?4, idle_timeout_secs, ?5, ?6
             FROM sessions WHERE token_hash = ?7 AND revoked_at IS NULL",
        )
        .bind(&id)
        .bind(&sha256(new_token.expose().as_bytes())[..])
        .bind(&sha256(csrf.expose().as_bytes())[..])
        .bind(now)
        .bind(expires_at)
        .bind(now.saturating_add(config.rotation_interval))
        .bind(&old_hash[..])
        .execute(&mut *tx)
        .await?;
        if copied.rows_affected() == 0 {
            return Err(Error::SessionNotValid {
                reason: "rotated or revoked concurrently",
            });
        }
        revoke_ids(&mut tx, [session.id.as_str()], "regenerated", now).await?;
        tx.commit().await?;
        self.state.forget(&[old_hash]);
        Ok(IssuedSession {
            id,
            token: new_token,
            csrf_token: csrf,
            expires_at,
            evicted: Vec::new(),
        })
    }

    async fn require_valid(
        &self,
        token: &str,
        device_fingerprint: Option<&str>,
    ) -> Result<Session> {
        match self.validate(token, device_fingerprint).await? {
            Validation::Valid(session) => Ok(session),
            other => Err(Error::SessionNotValid {
                reason: other.refusal(),
            }),
        }
    }

    /// Replaces a live session's data. Takes effect at once in this process.
    pub async fn set_data<T: Serialize + ?Sized>(&self, token: &str, data: &T) -> Result<()> {
        let json = serde_json::to_string(data)?;
        let max = self.state.config.max_data_bytes;
        crate::json::check_text("data", &json, max, "max_data_bytes")?;
        let hash = sha256(token.as_bytes());
        let done = sqlx::query(
            "UPDATE sessions SET data = ?1 WHERE token_hash = ?2 AND revoked_at IS NULL",
        )
        .bind(&json)
        .bind(&hash[..])
        .execute(self.core.store().sqlx_writer())
        .await
        .map_err(crate::store::closed_or)?;
        self.state.forget(&[hash]);
        if done.rows_affected() == 0 {
            return Err(Error::SessionNotValid {
                reason: "unknown token",
            });
        }
        Ok(())
    }

    /// Revokes one session by its public id. Returns whether it was live.
    pub async fn revoke(&self, session_id: &str) -> Result<bool> {
        let now = self.core.now();
        let mut tx = self.core.store().sqlx_transaction().await?;
        let hashes = revoke_ids(&mut tx, [session_id], "revoked", now).await?;
        tx.commit().await?;
        self.state.forget(&hashes);
        Ok(!hashes.is_empty())
    }

    /// Revokes every session of a user ("log out everywhere"). Returns how many.
    pub async fn revoke_user(&self, user_id: &str) -> Result<u64> {
        check_user(user_id)?;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = ?1, revoked_reason = 'logout_all'
             WHERE user_id = ?2 AND revoked_at IS NULL RETURNING token_hash",
        )
        .bind(self.core.now())
        .bind(user_id)
        .fetch_all(self.core.store().sqlx_writer())
        .await
        .map_err(crate::store::closed_or)?;
        let hashes = token_hashes(&rows)?;
        self.state.forget(&hashes);
        Ok(hashes.len() as u64)
    }

    /// A user's live sessions (not revoked, not expired), oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>> {
        check_user(user_id)?;
        let now = self.core.now();
        let rows = self.core.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                row_columns!(),
                " FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 ORDER BY created_at, id"
            ))?;
            stmt.query_map(rusqlite::params![user_id, now], Row::from_rusqlite)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let touches = lock(&self.state.touches).clone();
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                if let Some(t) = touches.get(&row.id) {
                    row.last_seen_ms.fetch_max(t.as_millis(), Ordering::Relaxed);
                }
                (now < row.idle_expires_at()).then(|| row.session(now))
            })
            .collect())
    }

    /// Every session of a user, live or not, with its data (for export).
    pub(crate) async fn export_user(&self, user_id: &str) -> Result<Vec<ExportedSession>> {
        let now = self.core.now();
        let rows = self.core.store().read_here(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                row_columns!(),
                " FROM sessions WHERE user_id = ?1 ORDER BY created_at, id"
            ))?;
            stmt.query_map([user_id], Row::from_rusqlite)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|row| {
                Ok(ExportedSession {
                    data: serde_json::from_str(&row.data)?,
                    revoked: row.revoked.clone(),
                    session: row.session(now),
                })
            })
            .collect()
    }

    /// Within the whole-user erase transaction: deletes the user's sessions,
    /// returning their token hashes (to forget once committed).
    pub(crate) async fn erase_user(
        tx: &mut sqlx::SqliteConnection,
        user_id: &str,
    ) -> Result<Vec<[u8; 32]>> {
        let rows = sqlx::query("DELETE FROM sessions WHERE user_id = ?1 RETURNING token_hash")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
        token_hashes(&rows)
    }

    /// How many sessions are live now (not revoked, not past their absolute
    /// expiry or their idle timeout, as last written), for metrics. It reads
    /// the partial index `sessions_live` alone (`INDEXED BY`: SQLite refuses
    /// the query rather than scan the table), so revoked and expired rows,
    /// kept until the retention sweep, cost nothing; the live ones still
    /// do, so it runs on the sqlx reader, off the caller's thread.
    pub(crate) async fn count_live(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions INDEXED BY sessions_live
             WHERE revoked_at IS NULL AND expires_at > ?1
               AND unixepoch(last_seen_at, 'subsec') + idle_timeout_secs > unixepoch(?1, 'subsec')",
        )
        .bind(self.core.now())
        .fetch_one(self.core.store().sqlx_reader())
        .await
        .map_err(crate::store::closed_or)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Drops sessions whose rows are gone from memory; call after commit.
    pub(crate) fn forget(&self, hashes: &[[u8; 32]]) {
        self.state.forget(hashes);
    }

    /// Writes the buffered last-seen times in one transaction (multi-row
    /// `UPDATE … FROM (VALUES …)`). On failure they stay buffered.
    pub(crate) async fn flush(&self) -> Result<()> {
        let touches = std::mem::take(&mut *lock(&self.state.touches));
        if touches.is_empty() {
            return Ok(());
        }
        let result = self.write_touches(&touches).await;
        if result.is_err() {
            let mut pending = lock(&self.state.touches);
            for (id, at) in touches {
                let slot = pending.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }

    async fn write_touches(&self, touches: &HashMap<String, Timestamp>) -> Result<()> {
        let touches: Vec<_> = touches.iter().collect();
        let mut tx = self.core.store().sqlx_transaction().await?;
        for chunk in touches.chunks(500) {
            let mut query =
                QueryBuilder::new("UPDATE sessions SET last_seen_at = v.column2 FROM (");
            query.push_values(chunk, |mut row, (id, at)| {
                row.push_bind(id.as_str()).push_bind(**at);
            });
            query
                .push(") AS v WHERE sessions.id = v.column1 AND sessions.last_seen_at < v.column2");
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes sessions unused for longer than `retention` (revoked or not),
    /// at most `batch` rows per transaction so that writers never wait long.
    /// Writes buffered last-seen times first. Returns how many went.
    pub async fn sweep(&self, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(Error::invalid("batch", "must be at least 1"));
        }
        self.flush().await?;
        let cutoff = self.core.now().saturating_sub(self.state.config.retention);
        let mut removed = 0;
        loop {
            let rows = sqlx::query(
                "DELETE FROM sessions WHERE id IN
                     (SELECT id FROM sessions WHERE last_seen_at < ?1 LIMIT ?2)
                 RETURNING token_hash",
            )
            .bind(cutoff)
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(self.core.store().sqlx_writer())
            .await
            .map_err(crate::store::closed_or)?;
            let hashes = token_hashes(&rows)?;
            self.state.forget(&hashes);
            removed += hashes.len() as u64;
            if hashes.len() < batch {
                return Ok(removed);
            }
        }
    }
}

/// Revokes sessions by id inside a transaction; returns the token hashes of
/// those that were live.
async fn revoke_ids<'i>(
    tx: &mut sqlx::SqliteConnection,
    ids: impl IntoIterator<Item = &'i str>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<[u8; 32]>> {
    let ids: Vec<&str> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("UPDATE sessions SET revoked_at = ");
    query
        .push_bind(now)
        .push(", revoked_reason = ")
        .push_bind(reason);
    query.push(" WHERE revoked_at IS NULL AND id IN (");
    let mut list = query.separated(", ");
    for id in &ids {
        list.push_bind(*id);
    }
    query.push(") RETURNING token_hash");
    let rows = query.build().fetch_all(&mut *tx).await?;
    token_hashes(&rows)
}

fn token_hashes(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<[u8; 32]>> {
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get(0)?;
            Ok(bytes.try_into().unwrap_or([0; 32]))
        })
        .collect()
}

/// A tower-sessions record as a row (see `tower.rs`).
#[cfg(feature = "tower-sessions")]
pub(crate) struct TowerRecord {
    pub(crate) id: String,
    pub(crate) token_hash: [u8; 32],
    pub(crate) user_id: String,
    pub(crate) data: String,
    pub(crate) now: Timestamp,
    pub(crate) expires_at: Timestamp,
}

/// Inserts a tower-sessions record, or (`replace`) updates the one with the
/// same token hash. Without `replace`, returns false if the hash is taken.
/// The row's idle timeout and rotation are pushed out of the way:
/// tower-sessions moves `expires_at` itself.
#[cfg(feature = "tower-sessions")]
pub(crate) async fn sql_store_tower_record(
    core: &Core,
    r: TowerRecord,
    replace: bool,
) -> Result<bool> {
    let conflict = if replace {
        "ON CONFLICT (token_hash) DO UPDATE SET data = excluded.data, user_id = excluded.user_id,
             expires_at = excluded.expires_at, rotation_due_at = excluded.rotation_due_at,
             last_seen_at = excluded.last_seen_at"
    } else {
        "ON CONFLICT (token_hash) DO NOTHING"
    };
    let sql = format!(
        "INSERT INTO sessions (id, token_hash, csrf_hash, user_id, data, created_at, last_seen_at,
             idle_timeout_secs, expires_at, rotation_due_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?8) {conflict}"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&r.id)
        .bind(&r.token_hash[..])
        .bind(&sha256(&r.token_hash)[..])
        .bind(&r.user_id)
        .bind(&r.data)
        .bind(r.now)
        .bind(i64::try_from(TEN_YEARS.as_secs()).unwrap_or(i64::MAX))
        .bind(r.expires_at)
        .execute(core.store().sqlx_writer())
        .await
        .map_err(crate::store::closed_or)?;
    Ok(done.rows_affected() > 0)
}

/// A live tower-sessions record's data and expiry, on the caller's thread.
#[cfg(feature = "tower-sessions")]
pub(crate) fn sql_load_tower_record(
    core: &Core,
    token_hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<(String, Timestamp)>> {
    core.store().read_here(|conn| {
        let mut stmt = conn.prepare_cached(
            "SELECT data, expires_at FROM sessions WHERE token_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![&token_hash[..], now])?;
        rows.next()?.map(|row| Ok((row.get(0)?, row.get(1)?))).transpose()
    })
}

#[cfg(feature = "tower-sessions")]
pub(crate) async fn sql_delete_by_token_hash(core: &Core, token_hash: &[u8; 32]) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = ?1")
        .bind(&token_hash[..])
        .execute(core.store().sqlx_writer())
        .await
        .map_err(crate::store::closed_or)?;
    Ok(())
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

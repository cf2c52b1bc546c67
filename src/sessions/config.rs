//! How sessions behave ([`SessionConfig`]) and the bounds its values must
//! keep: each is checked when the vault opens, so a bad value is refused
//! there rather than at the first request.

use std::time::Duration;

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
    /// [`Session::rotation_due`](crate::Session::rotation_due) turns true this long after the token was
    /// issued (default 24 h).
    pub rotation_interval: Duration,
    /// Live sessions one user may have at once (default 3).
    pub max_per_user: usize,
    /// What creating one more than `max_per_user` does (default: evict the oldest).
    pub when_full: WhenFull,
    /// [`Sessions::sweep`](crate::Sessions::sweep) deletes sessions unused for this long (default 30 days).
    pub retention: Duration,
    /// How many validated sessions are kept in memory (default 10 000, at
    /// most [`MAX_SESSION_MEMORY_ENTRIES`]; 0 turns it off). Their table is
    /// allocated at open.
    pub memory_entries: usize,
    /// How long a session read from the file may be served from memory
    /// before it is read again (default 1 s). Revocations, rotations and
    /// data changes made through statevault by another handle reach memory
    /// through the change feed instead (see `feed_check_interval`); this
    /// bounds how late memory sees what reaches the file another way (an
    /// operator's SQL) and another process's last-seen times.
    pub memory_ttl: Duration,
    /// How often validation asks the change feed whether another handle
    /// (process, worker, the CLI) revoked, rotated or changed a session
    /// (default zero: on every validation, so another handle's revocation
    /// refuses the old token on this one's very next validation). A longer
    /// interval saves that check on most validations and lets a revoked
    /// token through for up to that long (at most a minute).
    pub feed_check_interval: Duration,
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
            feed_check_interval: Duration::ZERO,
            max_data_bytes: 64 << 10,
        }
    }
}

/// The longest lifetime, timeout or interval a session setting may have.
pub(super) const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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
        if self.feed_check_interval > Duration::from_secs(60) {
            return Err(Error::invalid(
                "sessions.feed_check_interval",
                "longer than a minute",
            ));
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

/// Refuses a lifetime, timeout or interval outside 1 s ..= 10 years.
pub(super) fn check_lifetime(what: &'static str, d: Duration) -> Result<()> {
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

//! What the sessions facet keeps in memory: recently validated rows (so a
//! busy token is not read from the file on every request) and last-seen
//! times not yet written (so validation writes nothing).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;

use super::config::SessionConfig;
use super::types::{ExportedSession, Session};
use crate::clock::Timestamp;
use crate::core::feed::{Cursor, Facet, News, Record};
use crate::core::lock;

/// A session as the file has it, shared by memory and validation.
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) org_id: Option<String>,
    pub(crate) binding: Binding,
    pub(crate) csrf_hash: [u8; 32],
    pub(crate) data: Arc<str>,
    pub(crate) client_meta: Arc<str>,
    pub(crate) created_at: Timestamp,
    /// Newest of the file's last-seen time and this process's validations.
    pub(crate) last_seen_ms: AtomicI64,
    pub(crate) idle_timeout: Duration,
    pub(crate) expires_at: Timestamp,
    pub(crate) rotation_due_at: Timestamp,
    /// Why it was revoked, if it was.
    pub(crate) revoked: Option<String>,
}

/// The device a session is bound to, as its row has it.
pub(crate) enum Binding {
    /// Not bound: any device may present the token.
    Unbound,
    /// The keyed hash of the device fingerprint.
    Device([u8; 32]),
    /// A stored hash that is not 32 bytes: bound to a device nobody can
    /// prove (fails closed), never read as unbound.
    Unreadable,
}

impl Binding {
    /// The binding a stored fingerprint hash (or its absence) means.
    pub(crate) fn from_stored(hash: Option<Vec<u8>>) -> Binding {
        match hash {
            None => Binding::Unbound,
            Some(hash) => hash.try_into().map_or(Binding::Unreadable, Binding::Device),
        }
    }
}

impl Row {
    #[inline]
    pub(super) fn last_seen(&self) -> Timestamp {
        Timestamp::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }

    /// Moves the last-seen time forward to `at` (never back).
    #[inline]
    pub(super) fn seen_at(&self, at: Timestamp) {
        self.last_seen_ms
            .fetch_max(at.as_millis(), Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn idle_expires_at(&self) -> Timestamp {
        self.last_seen().saturating_add(self.idle_timeout)
    }

    pub(super) fn session(&self, now: Timestamp) -> Session {
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

    /// The session as a user's export shows it: with its data and why it
    /// ended, if it did.
    pub(super) fn exported(&self, now: Timestamp) -> crate::Result<ExportedSession> {
        Ok(ExportedSession {
            data: serde_json::from_str(&self.data)?,
            revoked: self.revoked.clone(),
            session: self.session(now),
        })
    }
}

/// A row in memory, and when it was read from the file.
struct Cached {
    row: Arc<Row>,
    read_at: Timestamp,
}

const SHARDS: usize = 16;

type Shard = Mutex<LruCache<[u8; 32], Cached>>;

/// The sessions facet's state in the vault: hot rows and buffered touches.
pub(crate) struct State {
    pub(super) config: SessionConfig,
    /// Validated rows by token hash, in shards so that concurrent requests
    /// rarely meet on one lock. Empty when `memory_entries` is 0.
    memory: Vec<Shard>,
    /// Bumped by every revocation, rotation and data change; a row read from
    /// the file is put in memory only if no change happened meanwhile.
    epoch: AtomicU64,
    /// Last-seen times not yet written, by session id.
    pub(super) touches: Mutex<HashMap<String, Timestamp>>,
    /// Where this handle stands in the change feed.
    pub(super) feed: Cursor,
}

/// The change-feed record: a token (its hash) whose row changed.
pub(super) const TOKEN: &str = "token";

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
            feed: Cursor::new(Facet::Sessions, config.feed_check_interval),
            config,
            memory,
            epoch: AtomicU64::new(0),
            touches: Mutex::new(HashMap::new()),
        }
    }

    /// A token's shard, picked by the key's last byte: a hash byte in every
    /// key (a key's first bytes are its token's issue time, the same for
    /// every session of a day).
    #[inline]
    fn shard(&self, hash: &[u8; 32]) -> Option<&Shard> {
        self.memory.get(usize::from(hash[31]) % SHARDS.max(1))
    }

    /// The row in memory for a token hash, if it was read from the file
    /// less than `memory_ttl` before `now`.
    #[inline]
    pub(super) fn remembered(&self, hash: &[u8; 32], now: Timestamp) -> Option<Arc<Row>> {
        let mut shard = lock(self.shard(hash)?);
        let cached = shard.get(hash)?;
        (now < cached.read_at.saturating_add(self.config.memory_ttl)).then(|| cached.row.clone())
    }

    /// The change counter to pass to [`State::remember`], taken before the
    /// file is read.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps a row read from the file at `now`, unless a change committed
    /// since `epoch` (the row may be stale).
    pub(super) fn remember(&self, hash: &[u8; 32], row: Arc<Row>, epoch: u64, now: Timestamp) {
        let Some(shard) = self.shard(hash) else {
            return;
        };
        let mut shard = lock(shard);
        if self.epoch() == epoch {
            shard.put(*hash, Cached { row, read_at: now });
        }
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

    /// Applies what another handle published: forgets the token it names,
    /// or every row when records were lost (or are of a kind this build
    /// does not know, from a newer one).
    pub(super) fn apply(&self, news: News<'_>) {
        let hash = match news {
            News::Change(change) if change.kind == TOKEN => {
                <[u8; 32]>::try_from(&change.target[..]).ok()
            }
            _ => None,
        };
        match hash {
            Some(hash) => self.forget(&[hash]),
            None => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                for shard in &self.memory {
                    lock(shard).clear();
                }
            }
        }
    }
}

/// A change-feed record per token hash: the rows another handle must drop
/// from its memory.
pub(crate) fn token_records(hashes: &[[u8; 32]]) -> Vec<Record<'_>> {
    hashes
        .iter()
        .map(|hash| Record {
            kind: TOKEN,
            target: hash,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::types::token_key;

    /// Sessions made in the same millisecond share their keys' first bytes
    /// (the issue time): they must still spread over every shard, or the
    /// memory would hold a sixteenth of `memory_entries` behind one mutex.
    #[test]
    fn tokens_issued_together_spread_over_the_shards() {
        let state = State::new(SessionConfig::default());
        let now = Timestamp::from_millis(1_767_225_600_000);
        let mut used = std::collections::HashSet::new();
        for _ in 0..400 {
            let token = super::super::types::Secret::token(now).unwrap();
            let shard = state.shard(&token_key(token.expose())).unwrap();
            used.insert(std::ptr::from_ref(shard));
        }
        assert_eq!(used.len(), SHARDS);
    }
}

//! `tower_sessions::SessionStore` over the sessions table (cargo feature
//! `tower-sessions`), so an axum or tower service can keep its
//! tower-sessions in the vault.
//!
//! The session id in tower-sessions' cookie is the bearer secret, so, like a
//! statevault token, only its SHA-256 is stored (`token_hash`). The record's
//! data goes to `data`, its expiry to `expires_at`; `user_id` is taken from
//! the record's `"user_id"` entry when there is one (`"anonymous"` when not),
//! so `revoke_user` and `list` work on these sessions too. tower-sessions
//! manages expiry itself (its `expiry_date` moves on activity), so the row's
//! idle timeout and rotation are set not to interfere. A record is loaded
//! only while unexpired by the vault's clock and not revoked.

use std::fmt;

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::clock::Timestamp;
use crate::sessions::sha256;
use crate::{Error, Vault};

/// A `tower_sessions::SessionStore` that keeps sessions in a [`Vault`].
///
/// ```no_run
/// # async fn app(vault: statevault::Vault) {
/// use statevault::TowerSessionStore;
/// use tower_sessions::SessionManagerLayer;
///
/// let layer = SessionManagerLayer::new(TowerSessionStore::new(vault.clone()));
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone)]
pub struct TowerSessionStore {
    vault: Vault,
}

impl TowerSessionStore {
    /// A store over `vault`'s sessions table.
    pub fn new(vault: Vault) -> Self {
        TowerSessionStore { vault }
    }

    async fn insert(&self, record: &Record, replace: bool) -> Result<bool, Error> {
        let hash = sha256(record.id.to_string().as_bytes());
        let data = serde_json::to_string(&record.data)?;
        let user_id = match record.data.get("user_id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => "anonymous".to_owned(),
        };
        let now = self.vault.now();
        let expires_at = from_offset(record.expiry_date);
        self.vault
            .sessions()
            .put_tower_record(
                crate::sessions::TowerRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    token_hash: hash,
                    user_id,
                    data,
                    now,
                    expires_at,
                },
                replace,
            )
            .await
    }
}

impl fmt::Debug for TowerSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerSessionStore")
            .field("vault", &self.vault)
            .finish()
    }
}

fn from_offset(t: OffsetDateTime) -> Timestamp {
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Timestamp::from_millis(i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX }))
}

fn to_offset(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_millis()) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn backend(e: Error) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

#[async_trait]
impl SessionStore for TowerSessionStore {
    /// Inserts the record; on the (astronomically rare) collision of its
    /// random id with a stored one, picks a new id, as the trait asks.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        while !self.insert(record, false).await.map_err(backend)? {
            record.id = Id::default();
        }
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.insert(record, true).await.map_err(backend)?;
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let hash = sha256(session_id.to_string().as_bytes());
        let now = self.vault.now();
        let Some((data, expires_at)) = self
            .vault
            .sessions()
            .tower_record(&hash, now)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let data =
            serde_json::from_str(&data).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *session_id,
            data,
            expiry_date: to_offset(expires_at),
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let hash = sha256(session_id.to_string().as_bytes());
        self.vault
            .sessions()
            .delete_tower_record(&hash)
            .await
            .map_err(backend)
    }
}

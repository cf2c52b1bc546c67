//! The core below the facets: the storage, the clock, the keyed-hash secret
//! and `vault_meta`. Every facet holds a `&Core` and its own state; none of
//! them knows [`Vault`](crate::Vault) or another facet.
//!
//! The storage is the vault file ([`Store`]) or, with the `postgres`
//! feature, a PostgreSQL database; a facet picks its backend by matching
//! [`Core::storage`].

pub(crate) mod feed;
pub(crate) mod meta;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use zeroize::Zeroizing;

use feed::{Cursor, Facet, Feed, News, Record};

use crate::clock::{Clock, Timestamp};
use crate::store::Store;
use crate::{Error, Result};

/// Where a vault keeps its state.
pub(crate) enum Storage {
    /// The SQLite file.
    File(Box<Store>),
    /// A PostgreSQL database, its values sealed.
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::Database),
}

/// What every facet shares: one per vault.
pub(crate) struct Core {
    storage: Storage,
    clock: Arc<dyn Clock>,
    /// What other handles on the file changed, and what this one publishes.
    feed: Feed,
    /// The secret behind [`Core::keyed_hash`], from `vault_meta`
    /// (`hash_salt`); set once the schema exists.
    hash_salt: OnceLock<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(storage: Storage, clock: Arc<dyn Clock>, feed: Feed) -> Core {
        Core {
            storage,
            clock,
            feed,
            hash_salt: OnceLock::new(),
        }
    }

    /// The change feed (see [`feed`]).
    #[inline]
    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Applies what other handles changed in `cursor`'s facet since it last
    /// looked (see [`Feed::catch_up`]).
    #[inline]
    pub(crate) fn catch_up(
        &self,
        cursor: &Cursor,
        now: Timestamp,
        apply: impl FnMut(News<'_>),
    ) -> Result<()> {
        match &self.storage {
            Storage::File(store) => self.feed.catch_up(&**store, cursor, now, apply),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => match db.feed() {
                Some(feed) => self.feed.catch_up(feed, cursor, now, apply),
                None => Ok(()),
            },
        }
    }

    /// Deletes the change feed's records older than its retention, in one
    /// transaction; how many went.
    pub(crate) async fn trim_feed(&self) -> Result<u64> {
        #[cfg(feature = "postgres")]
        if let Storage::Postgres(db) = &self.storage {
            let mut conn = db.pool().acquire().await?;
            return crate::postgres::feed::trim(&mut conn, self.feed.cutoff(self.now())).await;
        }
        let mut tx = self.store()?.sqlx_transaction().await?;
        let trimmed = self.feed.trim(&mut tx, self.now()).await?;
        tx.commit().await?;
        Ok(trimmed)
    }

    /// Eight bytes of [`keyed_hash`](Core::keyed_hash): how a change-feed
    /// record names a cache key, a user or a subject without holding its
    /// text (a deleted row or an erased user leaves no copy in the feed).
    /// Equal values give equal digests in every process on the file.
    pub(crate) fn digest(&self, domain: &str, value: &str) -> Result<u64> {
        let hash = self.keyed_hash(domain, value.as_bytes())?;
        let mut first = [0; 8];
        first.copy_from_slice(&hash[..8]);
        Ok(u64::from_be_bytes(first))
    }

    /// Publishes `records` for `facet` inside the caller's write transaction
    /// on `conn`, stamped with the clock's time.
    pub(crate) async fn publish(
        &self,
        conn: &mut sqlx::SqliteConnection,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        self.feed.publish(conn, self.now(), facet, records).await
    }

    /// [`Core::publish`] inside the caller's transaction on a PostgreSQL
    /// connection.
    #[cfg(feature = "postgres")]
    pub(crate) async fn publish_pg(
        &self,
        conn: &mut sqlx::PgConnection,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        self.feed.publish_pg(conn, self.now(), facet, records).await
    }

    /// [`Core::publish`] inside a write on the hot writer's `conn`.
    pub(crate) fn publish_here(
        &self,
        conn: &rusqlite::Connection,
        facet: Facet,
        records: &[Record<'_>],
    ) -> Result<()> {
        self.feed.publish_here(conn, self.now(), facet, records)
    }

    /// Where the state is kept.
    #[inline]
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The file's connections, for what works only on the file so far.
    #[inline]
    pub(crate) fn store(&self) -> Result<&Store> {
        match &self.storage {
            Storage::File(store) => Ok(store),
            #[cfg(feature = "postgres")]
            Storage::Postgres(_) => Err(Error::Unsupported {
                what: "this part of statevault",
                reason: "it still keeps its state in a SQLite file",
            }),
        }
    }

    /// Whether [`Core::close`] has run.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.storage {
            Storage::File(store) => store.sqlx_reader().is_closed(),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.pool().is_closed(),
        }
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        match &self.storage {
            Storage::File(store) => store.close().await,
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.shut().await,
        }
    }

    /// The database file, or a PostgreSQL database's URL without its
    /// password.
    pub(crate) fn path(&self) -> &std::path::Path {
        match &self.storage {
            Storage::File(store) => store.path(),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => std::path::Path::new(db.url()),
        }
    }

    /// The clock every facet reads.
    #[inline]
    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The clock itself, for what records time outside a facet call (the
    /// `metrics` facade's recorder).
    #[cfg(feature = "metrics")]
    pub(crate) fn shared_clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The clock's current time.
    #[inline]
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The clock's [`now_coarse`](Clock::now_coarse).
    #[inline]
    pub(crate) fn now_coarse(&self) -> Timestamp {
        self.clock.now_coarse()
    }

    /// A fact from `vault_meta`.
    pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>> {
        match &self.storage {
            Storage::File(store) => meta::get(store, key),
            #[cfg(feature = "postgres")]
            Storage::Postgres(db) => db.meta(key).await,
        }
    }

    /// Loads the keyed-hash secret, once the file has one (written by
    /// [`meta::record_creation`]); a PostgreSQL database keeps it sealed.
    pub(crate) async fn load_hash_salt(&self) -> Result<()> {
        #[cfg(feature = "postgres")]
        if let Storage::Postgres(db) = &self.storage {
            let _ = self.hash_salt.set(db.hash_salt().await?);
            return Ok(());
        }
        if let Some(hex) = self.meta(meta::HASH_SALT).await? {
            let salt = crate::key::parse_hex32(&hex)
                .ok_or_else(|| meta::bad(meta::HASH_SALT, "is not 64 hex digits"))?;
            let _ = self.hash_salt.set(salt);
        }
        Ok(())
    }

    /// HMAC-SHA256 of `domain`, a zero byte and `value` under the vault's
    /// secret salt (see [`Vault::keyed_hash`](crate::Vault::keyed_hash)).
    pub(crate) fn keyed_hash(&self, domain: &str, value: &[u8]) -> Result<[u8; 32]> {
        use hmac::{KeyInit, Mac};
        let salt = self.hash_salt.get().ok_or(Error::MigrationsPending)?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(salt.as_slice()).map_err(|e| {
            Error::Internal {
                detail: format!("HMAC refused the salt: {e}"),
            }
        })?;
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        Ok(mac.finalize().into_bytes().into())
    }
}

/// Runs `$call` on whichever backend a facet's `Backend` enum holds (its
/// variants `Sqlite` and, with feature `postgres`, `Postgres`), inside
/// that enum's `impl`: dispatch by enum, with no boxed futures.
macro_rules! on_backend {
    ($backend:expr, $b:ident => $call:expr) => {
        match $backend {
            Self::Sqlite($b) => $call,
            #[cfg(feature = "postgres")]
            Self::Postgres($b) => $call,
        }
    };
}
pub(crate) use on_backend;

/// Locks `mutex`, recovering from poisoning: the data behind every lock here
/// stays consistent at each step, so a panic elsewhere does not spoil it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Counters in the cache: integers that concurrent increments from any
//! process add up, read and written in one L2 write transaction.

use std::sync::Arc;

use super::backend::{CacheBackend, CacheTx, Row};
use super::codec::decode;
use super::l1::{Item, Meta, Pending};
use super::state::bump;
use super::{Cache, CacheKey, SetOptions};
use crate::{Error, Result, Timestamp};

impl Cache<'_> {
    /// Adds `delta` to the integer under `key` (missing or expired counts as
    /// 0) and returns the new value. Atomic in L2: the read and the write
    /// happen in one write transaction, so concurrent increments from any
    /// process add up. A new counter gets the namespace's default TTL; an
    /// existing one keeps its expiry (and loses its tags). A corrupt row is
    /// dropped and reported as [`Error::CacheCorrupt`], as by [`get`](Cache::get).
    pub async fn incr(&self, key: &CacheKey, delta: i64) -> Result<i64> {
        let state = self.state();
        let now = self.now();
        let mut tx = self.l2().begin().await?;
        let buffered = state.l1.take_pending(key.hashed());
        let result = self
            .incr_in(&mut tx, key, delta, now, buffered.clone())
            .await;
        let result = match result {
            Ok(v) => tx.commit().await.map(|()| v),
            Err(e @ Error::CacheCorrupt { .. }) => {
                // Dropped, as `get` drops it: the error says so.
                bump(&state.counters.corrupt, 1);
                let dropped = async move {
                    tx.delete_keys(&[key.as_str()]).await?;
                    tx.commit().await
                }
                .await;
                state.l1.remove([key.hashed()]);
                Err(dropped.err().unwrap_or(e))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((value, item)) => {
                state.l1.put(key.hashed(), item, now.as_millis());
                Ok(value)
            }
            Err(e) => {
                if let Some(p) = buffered {
                    state.l1.restore_pending(key.hashed(), p);
                }
                Err(e)
            }
        }
    }

    /// Subtracts `delta`; see [`incr`](Cache::incr).
    pub async fn decr(&self, key: &CacheKey, delta: i64) -> Result<i64> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| Error::invalid("counter", "delta out of range"))?;
        self.incr(key, delta).await
    }

    /// The increment inside `tx`: writes the key's buffered set first (so
    /// the row is the newest value), reads the row, writes the sum.
    async fn incr_in(
        &self,
        tx: &mut impl CacheTx,
        key: &CacheKey,
        delta: i64,
        now: Timestamp,
        buffered: Option<Pending>,
    ) -> Result<(i64, Item)> {
        let config = &self.state().config;
        if let Some(p) = buffered {
            let row = Row::encode(
                key.as_str().into(),
                p,
                config.compression_level,
                config.raw_below,
            );
            tx.write(std::slice::from_ref(&row), &[]).await?;
        }
        let (current, expires_at, tags) = self.current(tx, key, now).await?;
        let value = current
            .checked_add(delta)
            .ok_or_else(|| Error::invalid("counter", format!("{key} would overflow")))?;
        let item = Item {
            value: value.to_string().into_bytes().into(),
            expires_at,
            digest: self.digest(key)?,
            meta: Arc::new(Meta {
                namespace: key.namespace().into(),
                user: key.user().map(Into::into),
                tags,
            }),
        };
        let pending = Pending {
            item: item.clone(),
            created_at: now.as_millis(),
        };
        // Stored raw, whatever `raw_below` says: a counter is a few digits.
        let row = Row::encode(
            key.as_str().into(),
            pending,
            config.compression_level,
            usize::MAX,
        );
        tx.write(std::slice::from_ref(&row), &[]).await?;
        Ok((value, item))
    }

    /// The counter's value, expiry and tags as `tx` sees them: a live row's,
    /// or 0 with the namespace's default expiry and no tags.
    async fn current(
        &self,
        tx: &mut impl CacheTx,
        key: &CacheKey,
        now: Timestamp,
    ) -> Result<(i64, Option<i64>, Box<[Box<str>]>)> {
        match tx.read_for_update(key.as_str()).await? {
            Some(r) if r.expires_at.is_none_or(|at| at > now) => {
                let bytes = decode(
                    &r.codec,
                    &r.value,
                    r.size,
                    self.state().config.max_value_bytes,
                )
                .map_err(|detail| Error::CacheCorrupt {
                    key: key.as_str().to_owned(),
                    detail,
                })?;
                let n = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| {
                        Error::invalid("counter", format!("{key} does not hold an integer"))
                    })?;
                Ok((n, r.expires_at.map(Timestamp::as_millis), r.tags))
            }
            _ => Ok((
                0,
                self.expiry(key, &SetOptions::new(), now)?,
                Box::default(),
            )),
        }
    }
}

//! How [`Sessions::validate`] finds a token's row (memory first, then the
//! file, catching up with the change feed before either) and what refuses
//! a row it found.

use std::sync::Arc;

use super::Sessions;
use super::backend::SessionsBackend as _;
use super::state::{Binding, Row};
use super::types::{ExpiryReason, Validation, constant_time_eq};
use crate::Result;
use crate::clock::Timestamp;
use crate::core::lock;

impl Sessions<'_> {
    /// Why `row` is not a live session on this device at `now`, if it is not.
    #[inline]
    pub(super) fn refusal(
        &self,
        row: &Row,
        now: Timestamp,
        device_fingerprint: Option<&str>,
    ) -> Result<Option<Validation>> {
        if let Some(reason) = &row.revoked {
            return Ok(Some(Validation::Revoked {
                session_id: row.id.clone(),
                reason: reason.clone(),
            }));
        }
        let expired = |reason| {
            Some(Validation::Expired {
                session_id: row.id.clone(),
                reason,
            })
        };
        if now >= row.expires_at {
            return Ok(expired(ExpiryReason::Absolute));
        }
        if now >= row.idle_expires_at() {
            return Ok(expired(ExpiryReason::Idle));
        }
        if matches!(row.binding, Binding::Unbound) {
            return Ok(None);
        }
        let presented = device_fingerprint
            .map(|fp| self.core.keyed_hash("device_fingerprint", fp.as_bytes()))
            .transpose()?;
        let matches = match (&row.binding, presented) {
            (Binding::Device(bound), Some(p)) => constant_time_eq(&p, bound),
            _ => false,
        };
        Ok((!matches).then(|| Validation::FingerprintMismatch {
            session_id: row.id.clone(),
            user_id: row.user_id.clone(),
        }))
    }

    /// The row for a token hash: from memory if read recently enough, else
    /// from the file (and then remembered, unless a change raced the read).
    #[inline]
    pub(super) async fn row(&self, hash: &[u8; 32], now: Timestamp) -> Result<Option<Arc<Row>>> {
        let state = self.state;
        self.core
            .catch_up(&state.feed, now, |news| state.apply(news))?;
        if let Some(row) = self.state.remembered(hash, now) {
            return Ok(Some(row));
        }
        let epoch = self.state.epoch();
        let Some(row) = self.backend().by_token(hash).await? else {
            return Ok(None);
        };
        if let Some(pending) = lock(&self.state.touches).get(&row.id) {
            row.seen_at(*pending);
        }
        let row = Arc::new(row);
        self.state.remember(hash, row.clone(), epoch, now);
        Ok(Some(row))
    }
}

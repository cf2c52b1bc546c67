//! The rows of the tower-sessions store (feature `tower-sessions`, see
//! `src/tower_sessions.rs`): written, read and deleted through the same
//! storage as every session, and forgotten from memory as they change.

use super::backend::{SessionsBackend as _, TowerRecord};
use super::{Sessions, config};
use crate::Result;
use crate::clock::Timestamp;

impl Sessions<'_> {
    /// Inserts a tower-sessions record, or (`replace`) updates the one with
    /// the same token hash. Without `replace`, returns false if the hash is
    /// taken. The row's idle timeout and rotation are pushed out of the way:
    /// tower-sessions moves `expires_at` itself.
    pub(crate) async fn put_tower_record(
        &self,
        record: TowerRecord,
        replace: bool,
    ) -> Result<bool> {
        let written = self
            .backend()
            .put_tower_record(&record, config::TEN_YEARS, replace)
            .await?;
        self.state.forget(&[record.token_hash]);
        Ok(written)
    }

    /// A live tower-sessions record's data and expiry, (the file answers on the caller's thread).
    pub(crate) async fn tower_record(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>> {
        self.backend().tower_record(token_hash, now).await
    }

    /// Deletes a tower-sessions record.
    pub(crate) async fn delete_tower_record(&self, token_hash: &[u8; 32]) -> Result<()> {
        self.backend().delete_by_token(token_hash).await?;
        self.state.forget(&[*token_hash]);
        Ok(())
    }
}

//! The storage contract of the sessions facet: what it asks of the file, in
//! its own terms. `sqlite.rs` implements it; another database implements
//! the same operations with the same atomicity.
//!
//! Every method is `async`; the file answers the reads validation and
//! listing make on the caller's thread, without awaiting anything.

use std::collections::HashMap;
use std::time::Duration;

use super::state::Row;
use crate::Result;
use crate::clock::Timestamp;

/// A session row to insert.
pub(crate) struct NewRow<'a> {
    pub(crate) id: &'a str,
    pub(crate) token_hash: [u8; 32],
    pub(crate) csrf_hash: [u8; 32],
    pub(crate) user_id: &'a str,
    pub(crate) org_id: Option<&'a str>,
    /// Keyed hashes of the device fingerprint, client IP and user agent.
    pub(crate) device_fingerprint: Option<[u8; 32]>,
    pub(crate) ip_hash: Option<[u8; 32]>,
    pub(crate) user_agent_hash: Option<[u8; 32]>,
    /// JSON text.
    pub(crate) client_meta: &'a str,
    /// JSON text.
    pub(crate) data: &'a str,
    /// Also its first last-seen time.
    pub(crate) created_at: Timestamp,
    pub(crate) idle_timeout: Duration,
    pub(crate) expires_at: Timestamp,
    pub(crate) rotation_due_at: Timestamp,
}

/// A session that may count against its user's cap: not revoked and not
/// past its absolute expiry (its idle expiry is the facet's to judge, with
/// the last-seen times it has not written yet).
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) token_hash: [u8; 32],
    pub(crate) last_seen: Timestamp,
    pub(crate) idle_timeout: Duration,
}

/// The new secrets of a session, as their hashes.
pub(crate) struct Tokens {
    pub(crate) token_hash: [u8; 32],
    pub(crate) csrf_hash: [u8; 32],
}

/// The session that replaces a regenerated one.
pub(crate) struct Regenerated<'a> {
    pub(crate) id: &'a str,
    pub(crate) tokens: Tokens,
    /// Its creation (and first last-seen) time; the old one is revoked then.
    pub(crate) created_at: Timestamp,
    pub(crate) expires_at: Timestamp,
    pub(crate) rotation_due_at: Timestamp,
}

/// A tower-sessions record as a row (see `tower_sessions.rs`).
#[cfg(feature = "tower-sessions")]
pub(crate) struct TowerRecord {
    pub(crate) id: String,
    pub(crate) token_hash: [u8; 32],
    pub(crate) user_id: String,
    pub(crate) data: String,
    pub(crate) now: Timestamp,
    pub(crate) expires_at: Timestamp,
}

/// What the sessions facet needs from its storage. Every method that
/// changes rows returns the token hashes it changed, for the facet to
/// forget from memory once it has committed.
pub(crate) trait SessionsBackend {
    /// The session with this token hash (the file answers on the caller's thread).
    async fn by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Row>>;

    /// A user's sessions that are not revoked and not past their absolute
    /// expiry at `now`, oldest first (the file answers on the caller's thread).
    async fn unrevoked_of_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<Row>>;

    /// In one transaction that serialises every creator: hands the user's
    /// [`Candidate`]s (oldest first) to `make_room`, revokes the ones it
    /// returns (reason `evicted`) and inserts `row`. Returns the revoked.
    async fn create(
        &self,
        row: &NewRow<'_>,
        make_room: impl FnOnce(Vec<Candidate>) -> Result<Vec<Candidate>> + Send,
    ) -> Result<Vec<Candidate>>;

    /// Gives the unrevoked session with token hash `old` new tokens and
    /// rotation time. Returns false (and changes nothing) if there is none.
    async fn rotate(
        &self,
        old: &[u8; 32],
        new: &Tokens,
        rotation_due_at: Timestamp,
    ) -> Result<bool>;

    /// In one transaction: copies the unrevoked session with token hash
    /// `old` (id `old_id`) to `new`, and revokes it (reason `regenerated`).
    /// Returns false (and changes nothing) if there is none.
    async fn regenerate(&self, old: &[u8; 32], old_id: &str, new: &Regenerated<'_>)
    -> Result<bool>;

    /// Replaces an unrevoked session's data (JSON text). Returns whether
    /// there was one.
    async fn set_data(&self, token_hash: &[u8; 32], data: &str) -> Result<bool>;

    /// Revokes a session by id (reason `revoked`) unless it already is.
    async fn revoke(&self, id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>>;

    /// Revokes every unrevoked session of a user (reason `logout_all`).
    async fn revoke_user(&self, user_id: &str, now: Timestamp) -> Result<Vec<[u8; 32]>>;

    /// How many sessions are live at `now` by their stored last-seen times.
    async fn count_live(&self, now: Timestamp) -> Result<u64>;

    /// Moves each session's last-seen time forward to the one given (never
    /// back), in one transaction.
    async fn write_last_seen(&self, touches: &HashMap<String, Timestamp>) -> Result<()>;

    /// Deletes at most `batch` sessions last seen before `cutoff`.
    async fn delete_idle(&self, cutoff: Timestamp, batch: usize) -> Result<Vec<[u8; 32]>>;

    /// Inserts a tower-sessions record with this idle timeout, or
    /// (`replace`) updates the one with the same token hash. Without
    /// `replace`, returns false if the hash is taken.
    #[cfg(feature = "tower-sessions")]
    async fn put_tower_record(
        &self,
        record: &TowerRecord,
        idle_timeout: Duration,
        replace: bool,
    ) -> Result<bool>;

    /// An unrevoked record's data and expiry, if it has not expired at
    /// `now` (the file answers on the caller's thread).
    #[cfg(feature = "tower-sessions")]
    async fn tower_record(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>>;

    /// Deletes the session with this token hash, if any.
    #[cfg(feature = "tower-sessions")]
    async fn delete_by_token(&self, token_hash: &[u8; 32]) -> Result<()>;
}

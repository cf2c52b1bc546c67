//! Everything about one user, across every facet: export it (GDPR access)
//! or erase it (GDPR erasure) in one transaction.
//!
//! Each facet owns its tables and contributes its part through its own
//! module; this one only orders them and holds the transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::StoredEvent;
use crate::clock::Timestamp;
use crate::ids::check_user;
use crate::limits::{LimitStatus, ViolationRecord};
use crate::prefs::{Preferences, StoredPreferences};
use crate::sessions::ExportedSession;
use crate::{Result, Vault};

/// Everything the vault holds about a user. Token hashes are left out.
/// `Debug` shows the user and how much there is of each part, never the
/// personal data itself (session data, preferences, audit details).
#[derive(Clone, Serialize, Deserialize)]
pub struct UserExport {
    /// The user.
    pub user_id: String,
    /// When the export was made (the vault's clock).
    pub exported_at: Timestamp,
    /// Every session, live or not, with its data.
    pub sessions: Vec<ExportedSession>,
    /// The stored preference overrides.
    pub preferences: Option<serde_json::Value>,
    /// Every audit event about the user, oldest first.
    pub audit_events: Vec<StoredEvent>,
    /// The user's state under every rate limit (as a subject).
    pub rate_limits: Vec<LimitStatus>,
    /// The user's recorded rate-limit violations.
    pub violations: Vec<ViolationRecord>,
    /// The keys of the user's cache entries.
    pub cache_keys: Vec<String>,
}

impl std::fmt::Debug for UserExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserExport")
            .field("user_id", &self.user_id)
            .field("exported_at", &self.exported_at)
            .field("sessions", &self.sessions)
            .field("preferences", &self.preferences.is_some())
            .field("audit_events", &self.audit_events.len())
            .field("rate_limits", &self.rate_limits.len())
            .field("violations", &self.violations.len())
            .field("cache_keys", &self.cache_keys.len())
            .finish()
    }
}

/// What [`Vault::erase_user`](crate::Vault::erase_user) removed, by table.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// The user.
    pub user_id: String,
    /// Rows removed (or, for `audit_events`, emptied) per table.
    pub rows: BTreeMap<String, u64>,
}

impl Vault {
    /// Everything about `user_id`, from every facet, as one document.
    ///
    /// What this process buffers (audit events, rate-limit state, cache
    /// sets, last-seen times) is written first; then every facet's part is
    /// read in one snapshot (one read transaction on the file; on
    /// PostgreSQL one `REPEATABLE READ` transaction), so the parts agree with
    /// each other even while other handles write. Rate-limit state this
    /// process holds in memory is reported from there, as
    /// [`Limits::status`](crate::Limits::status) does.
    #[tracing::instrument(name = "vault.export_user", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn export_user(&self, user_id: &str) -> Result<UserExport> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_user(user_id)?;
                self.flush().await?;
                self.limits().catch_up_now()?;
                #[cfg(feature = "postgres")]
                if let crate::core::Storage::Postgres(db) = self.core().storage() {
                    return self.export_on_postgres(db, user_id).await;
                }
                let vault = self.clone();
                let user = user_id.to_owned();
                crate::store::blocking("user export", move || {
                    vault
                        .store()?
                        .read_snapshot(|conn| vault.export_in_file(conn, &user))
                })
                .await
            }
            .await,
            crate::trace::ok,
        )
    }

    /// [`Vault::export_user`]'s reads, in its snapshot of the file.
    fn export_in_file(&self, conn: &rusqlite::Connection, user_id: &str) -> Result<UserExport> {
        let now = self.now();
        let (rate_limits, violations) = self.limits().export_in_file(conn, user_id)?;
        Ok(UserExport {
            user_id: user_id.to_owned(),
            exported_at: now,
            sessions: crate::sessions::export_user_in_file(conn, user_id, now)?,
            preferences: self
                .current_preferences(crate::prefs::export_user_in_file(conn, user_id)?)?,
            audit_events: crate::audit::export_user_in_file(conn, user_id)?,
            rate_limits,
            violations,
            cache_keys: crate::cache::export_user_in_file(conn, user_id)?,
        })
    }

    /// [`Vault::export_user`]'s reads on PostgreSQL, in one read-only
    /// `REPEATABLE READ` transaction (one snapshot for every statement).
    #[cfg(feature = "postgres")]
    async fn export_on_postgres(
        &self,
        db: &crate::postgres::Database,
        user_id: &str,
    ) -> Result<UserExport> {
        let now = self.now();
        let mut tx = db
            .pool()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let (rate_limits, violations) = self.limits().export_pg(&mut tx, user_id).await?;
        let export = UserExport {
            user_id: user_id.to_owned(),
            exported_at: now,
            sessions: crate::sessions::export_user_pg(db, &mut tx, user_id, now).await?,
            preferences: self
                .current_preferences(crate::prefs::export_user_pg(db, &mut *tx, user_id).await?)?,
            audit_events: crate::audit::export_user_pg(db, &mut tx, user_id).await?,
            rate_limits,
            violations,
            cache_keys: crate::cache::export_user_pg(&mut *tx, user_id).await?,
        };
        tx.commit().await?;
        Ok(export)
    }

    /// The stored preference overrides, upgraded to the current schema:
    /// the document only.
    fn current_preferences(
        &self,
        stored: Option<StoredPreferences>,
    ) -> Result<Option<serde_json::Value>> {
        Ok(self
            .preferences()
            .current(stored)?
            .map(|StoredPreferences { document, .. }| document))
    }

    /// Erases `user_id` from every facet in one transaction: sessions,
    /// preferences, rate-limit buckets and violations, cache entries bound to
    /// the user (as [`CacheKey::derive`](crate::CacheKey::derive) with a user
    /// or [`CacheKey::for_user`](crate::CacheKey::for_user) make them)
    /// deleted, audit events emptied (the chain still verifies), and one
    /// audit event recording that an erasure happened, with counts and the
    /// emptied events' `seq`s but not the user (several, each naming a part
    /// of the `seq`s, when they do not fit in one event's details).
    ///
    /// When it returns `Ok`, no byte of those rows is left in the file or its
    /// WAL, not even in free space: after the transaction the file is
    /// rewritten from its live rows (`VACUUM`) and the WAL is emptied
    /// (`wal_checkpoint(TRUNCATE)`). That costs time in proportion to the
    /// file (0.5–0.7 s for 50k rows, 23 MB, in a debug build here, against
    /// 0.1 s for the transaction alone), during which other writers wait for
    /// the write lock (up to their busy timeout); and it needs the file's
    /// size again in memory (the rewrite is built there, so that no
    /// plaintext reaches a temporary file) and on disk (for the WAL).
    ///
    /// On PostgreSQL the same rows go in one transaction, and every other
    /// instance drops them from its memory as the change arrives; there is
    /// no file to rewrite, so the deleted rows' dead tuples (their values
    /// sealed) stay until the server's vacuum reclaims them, and its WAL,
    /// replicas and backups keep what they already hold.
    ///
    /// Limits: backups made before the erasure still hold the user, and so
    /// does what the vault cannot know is theirs: a cache entry whose key
    /// names the user but is not bound to them, an audit event about someone
    /// else whose details name them. Below the file, the file system or the
    /// disk may keep copies of blocks it freed or remapped.
    ///
    /// Errors: an error before the commit leaves everything as it was; one
    /// after it (the rewrite refused: a full disk, or another process held the
    /// write lock past the busy timeout) leaves the rows deleted but copies
    /// possibly in place. [`Error::ErasureIncomplete`](crate::Error::ErasureIncomplete) says that another
    /// connection (usually another process) kept reading an older snapshot
    /// of the WAL for longer than the busy timeout. Erasing is idempotent: in
    /// every case, calling it again once the cause is gone finishes the job.
    #[tracing::instrument(name = "vault.erase_user", level = "debug", skip_all, fields(outcome = tracing::field::Empty, user_id = user_id))]
    pub async fn erase_user(&self, user_id: &str) -> Result<ErasureReport> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                check_user(user_id)?;
                #[cfg(feature = "postgres")]
                if let crate::core::Storage::Postgres(db) = self.core().storage() {
                    return self.erase_on_postgres(db, user_id).await;
                }
                self.sessions().flush().await?;
                let audit = self.audit();
                let _exclusive = audit.exclusive().await;
                // What is buffered is written in the same transaction; durable
                // appends among it are answered only once that has committed.
                let batch = audit.take_batch();
                let mut conn = match self.store()?.sqlx_writer_conn().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        audit.settle(batch, Some(&e));
                        return Err(e);
                    }
                };
                let erased = self.erase_on(&mut conn, &batch, user_id).await;
                audit.settle(batch, erased.as_ref().err());
                let (rows, hashes) = erased?;
                self.sessions().forget(&hashes);
                self.limits().forget(user_id);
                self.cache().forget_user(user_id);
                self.store()?.purge(&mut conn).await?;
                Ok(ErasureReport {
                    user_id: user_id.to_owned(),
                    rows,
                })
            }
            .await,
            crate::trace::ok,
        )
    }

    /// [`Vault::erase_user`] on PostgreSQL: the same deletions in one
    /// transaction, each publishing what it removed so that every instance
    /// drops it from memory. There is no file to rewrite: the deleted rows'
    /// dead tuples stay until PostgreSQL's vacuum reclaims them (their
    /// values sealed), and the server's WAL, replicas and backups keep what
    /// they already hold.
    #[cfg(feature = "postgres")]
    async fn erase_on_postgres(
        &self,
        db: &crate::postgres::Database,
        user_id: &str,
    ) -> Result<ErasureReport> {
        self.sessions().flush().await?;
        let audit = self.audit();
        let _exclusive = audit.exclusive().await;
        let batch = audit.take_batch();
        let core = self.core();
        // Dropped from memory first too, so that no write-behind flush
        // writes them back between the deletion and the end.
        self.limits().forget(user_id);
        let in_memory = self.cache().forget_user(user_id);
        let erased = async {
            let mut tx = db.pool().begin().await?;
            let mut rows = BTreeMap::new();
            let hashes = crate::sessions::erase_user_pg(core, &mut tx, user_id).await?;
            rows.insert("sessions".to_owned(), hashes.len() as u64);
            rows.insert(
                "preferences".to_owned(),
                crate::prefs::erase_user_pg(&mut tx, user_id).await?,
            );
            let (buckets, violations) =
                crate::limits::erase_subject_pg(core, &mut tx, user_id).await?;
            rows.insert("token_buckets".to_owned(), buckets);
            rows.insert("violations".to_owned(), violations);
            let cached = crate::cache::erase_user_pg(core, &mut tx, user_id).await?;
            rows.insert("cache_entries".to_owned(), cached.max(in_memory));
            let events = audit
                .erase_user_pg(db, &mut tx, &batch, user_id, &rows)
                .await?;
            rows.insert("audit_events".to_owned(), events);
            tx.commit().await?;
            Ok((rows, hashes))
        }
        .await;
        audit.settle(batch, erased.as_ref().err());
        let (rows, hashes) = erased?;
        self.sessions().forget(&hashes);
        self.limits().forget(user_id);
        self.cache().forget_user(user_id);
        Ok(ErasureReport {
            user_id: user_id.to_owned(),
            rows,
        })
    }

    /// The erase transaction of [`Vault::erase_user`](crate::Vault::erase_user), on the writer
    /// connection, committed with `synchronous = FULL` when a durable audit
    /// append waits in `batch`. Returns the rows per table and the erased
    /// sessions' token hashes.
    async fn erase_on(
        &self,
        conn: &mut sqlx::SqliteConnection,
        batch: &crate::audit::Batch,
        user_id: &str,
    ) -> Result<(BTreeMap<String, u64>, Vec<[u8; 32]>)> {
        let audit = self.audit();
        audit
            .durably(conn, batch.durable(), async |conn| {
                self.store()?
                    .immediate(conn, None, async |tx| {
                        let mut rows = BTreeMap::new();
                        let hashes = self.sessions().erase_user(tx, user_id).await?;
                        rows.insert("sessions".to_owned(), hashes.len() as u64);
                        rows.insert(
                            "preferences".to_owned(),
                            Preferences::erase_user(tx, user_id).await?,
                        );
                        let (buckets, violations) =
                            self.limits().erase_subject(tx, user_id).await?;
                        rows.insert("token_buckets".to_owned(), buckets);
                        rows.insert("violations".to_owned(), violations);
                        rows.insert(
                            "cache_entries".to_owned(),
                            self.cache().erase_user(tx, user_id).await?,
                        );
                        let events = audit.erase_user(tx, batch, user_id, &rows).await?;
                        rows.insert("audit_events".to_owned(), events);
                        Ok((rows, hashes))
                    })
                    .await
            })
            .await
    }
}

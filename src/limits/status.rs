//! What the limits hold about one subject: its status under every limit
//! (`Limits::status`), and its part of a user's export, read in the
//! export's snapshot.

use super::backend::{LimitsBackend as _, Stored};
#[cfg(feature = "postgres")]
use super::postgres;
use super::state::Entry;
use super::types::{LimitStatus, ViolationRecord};
use super::{Limits, bucket, limit_status, sqlite};
use crate::{Result, Timestamp};

impl Limits<'_> {
    /// The subject's state under every configured limit, at the vault
    /// clock's now: tokens per window, recent violations, running penalty.
    /// Reads this process's memory where it has the subject, else the file.
    #[tracing::instrument(name = "limits.status", level = "debug", skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn status(&self, subject: &str) -> Result<Vec<LimitStatus>> {
        crate::trace::done(
            tracing::Level::DEBUG,
            async {
                crate::ids::check_subject(subject)?;
                let now = self.core.now();
                self.catch_up(now)?;
                let since = bucket::memory_start(now);
                let mut stored = Vec::with_capacity(self.state.config.limits.len());
                for limit in &self.state.config.limits {
                    stored.push(self.backend().load(subject, &limit.name, since).await?);
                }
                Ok(self.status_from(subject, now, stored))
            }
            .await,
            crate::trace::ok,
        )
    }

    /// The subject's status under every limit at `now`, from this process's
    /// memory where it has the subject under a limit, else from `stored`:
    /// what the storage holds under each limit (in configuration order),
    /// read with [`bucket::memory_start`]`(now)`. The caller has caught up
    /// with the change feed ([`Limits::catch_up`]). Reads nothing: it runs
    /// inside a user export's snapshot, which holds a reader the feed's
    /// check may need.
    fn status_from(&self, subject: &str, now: Timestamp, stored: Vec<Stored>) -> Vec<LimitStatus> {
        let since = bucket::memory_start(now);
        let limits = self.state.config.limits.iter().enumerate();
        limits
            .zip(stored)
            .map(|((idx, limit), stored)| {
                let in_memory = match limit.shared {
                    true => None,
                    false => self.state.in_memory(subject, idx),
                };
                let mut entry = in_memory.unwrap_or_else(|| Entry::from_stored(limit, stored, now));
                entry.recent.retain(|t| *t > since);
                limit_status(limit, &entry, now)
            })
            .collect()
    }

    /// Drops from memory what other handles changed, before a user export
    /// takes its snapshot (inside it, the feed cannot be read: see
    /// [`Limits::export_in_file`]).
    pub(crate) fn catch_up_now(&self) -> Result<()> {
        self.catch_up(self.core.now())
    }

    /// The subject's part of a user's export, read in the export's snapshot
    /// of the file: its status under every limit (as [`Limits::status`])
    /// and its violations. Reads only through `conn`: the snapshot holds a
    /// reader, and another read here could wait for that very one. Call
    /// [`Limits::catch_up_now`] before taking the snapshot.
    pub(crate) fn export_in_file(
        &self,
        conn: &rusqlite::Connection,
        subject: &str,
    ) -> Result<(Vec<LimitStatus>, Vec<ViolationRecord>)> {
        let now = self.core.now();
        let since = bucket::memory_start(now);
        let stored = (self.state.config.limits.iter())
            .map(|limit| sqlite::load(conn, subject, &limit.name, since))
            .collect::<rusqlite::Result<_>>()?;
        Ok((
            self.status_from(subject, now, stored),
            sqlite::all_violations(conn, subject)?,
        ))
    }

    /// [`Limits::export_in_file`] in the transaction of a user's export on
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    pub(crate) async fn export_pg(
        &self,
        conn: &mut sqlx::PgConnection,
        subject: &str,
    ) -> Result<(Vec<LimitStatus>, Vec<ViolationRecord>)> {
        let now = self.core.now();
        let since = bucket::memory_start(now);
        let mut stored = Vec::with_capacity(self.state.config.limits.len());
        for limit in &self.state.config.limits {
            stored.push(postgres::load(conn, subject, &limit.name, since).await?);
        }
        Ok((
            self.status_from(subject, now, stored),
            postgres::violations_of(conn, subject).await?,
        ))
    }
}

//! Every statement of the audit facet, for SQLite: all through sqlx, on the
//! writer for appends, retention and erasure, on the read pool for queries
//! and verification. Times are RFC 3339 text, bound from the vault's clock.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, SqliteConnection};

use super::backend::{AuditBackend, ChainRow, ChainVisitor, EventRow, Removed};
use super::chain::{self, Content, GENESIS, Linked};
use super::types::{AuditQuery, name};
use crate::Result;
use crate::clock::Timestamp;
use crate::core::meta;
use crate::store::{Store, closed_or};

/// The columns [`event_row`] reads.
macro_rules! event_columns {
    () => {
        "seq, id, occurred_at, user_id, session_id, kind, action, resource_type, resource_id, details, \
         gdpr_category, erased_at"
    };
}

/// Rows per multi-row insert (15 variables each, below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 2000;
/// Events per page when the whole log is read for verification: memory
/// for a page, whatever the log's length.
const CHAIN_PAGE: usize = 1000;

/// The audit log in a SQLite file.
pub(crate) struct Sqlite<'a> {
    store: &'a Store,
}

impl<'a> Sqlite<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Sqlite { store }
    }
}

impl AuditBackend for Sqlite<'_> {
    async fn append(&self, events: &[&Content], durable: bool) -> Result<()> {
        let idle = self.store.idle_hot_writer().await;
        let mut conn = self.store.sqlx_writer_conn().await?;
        durably(self.store, &mut conn, durable, async |conn| {
            self.store
                .immediate(conn, idle, async |tx| append_in(tx, events).await)
                .await
        })
        .await
    }

    async fn read_chain(&self, visitor: &mut impl ChainVisitor) -> Result<()> {
        // One read transaction: every page comes from the same snapshot.
        let mut tx = self.store.sqlx_reader().begin().await.map_err(closed_or)?;
        let anchor = meta::get_in(&mut tx, meta::AUDIT_ANCHOR).await?;
        let head = meta::get_in(&mut tx, meta::AUDIT_HEAD).await?;
        visitor.ends(anchor, head)?;
        let mut after = i64::MIN;
        'pages: loop {
            let rows = sqlx::query(concat!(
                "SELECT ",
                event_columns!(),
                ", ip_hash, user_agent_hash, content_digest, chain_digest FROM audit_events
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))
            .bind(after)
            .bind(CHAIN_PAGE as i64)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in &rows {
                if !visitor.row(chain_row(row))? {
                    break 'pages;
                }
            }
            if rows.len() < CHAIN_PAGE {
                break;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query(&self, filter: &AuditQuery, limit: u32) -> Result<Vec<EventRow>> {
        let mut q = QueryBuilder::new(concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE 1 = 1"
        ));
        if let Some(user) = &filter.user_id {
            q.push(" AND user_id = ").push_bind(user);
        }
        if let Some(kind) = &filter.kind {
            q.push(" AND kind = ").push_bind(name(kind));
        }
        if let Some(action) = &filter.action {
            q.push(" AND action = ").push_bind(action);
        }
        if let Some(since) = filter.since {
            q.push(" AND occurred_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND occurred_at < ").push_bind(until);
        }
        q.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(self.store.sqlx_reader())
            .await
            .map_err(closed_or)?;
        rows.iter().map(event_row).collect()
    }

    async fn user_events(&self, user_id: &str) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE user_id = ?1 ORDER BY seq"
        ))
        .bind(user_id)
        .fetch_all(self.store.sqlx_reader())
        .await
        .map_err(closed_or)?;
        rows.iter().map(event_row).collect()
    }

    async fn remove_oldest(
        &self,
        cutoff: Timestamp,
        batch: usize,
        record: impl FnOnce(&Removed) -> Result<Content>,
    ) -> Result<Option<u64>> {
        let mut tx = self.store.sqlx_transaction().await?;
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, chain_digest FROM audit_events WHERE seq IN
                 (SELECT seq FROM audit_events WHERE occurred_at < ?1 ORDER BY seq LIMIT ?2)
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(cutoff)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((through, digest)) = last else {
            return Ok(None);
        };
        let count = sqlx::query("DELETE FROM audit_events WHERE seq <= ?1")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let removed = Removed {
            through,
            count,
            anchor: chain::link_text(through, &digest),
        };
        let event = record(&removed)?;
        meta::set(
            &mut tx,
            meta::AUDIT_ANCHOR,
            &removed.anchor,
            event.occurred_at,
        )
        .await?;
        append_in(&mut tx, &[&event]).await?;
        tx.commit().await?;
        Ok(Some(count))
    }
}

/// Appends events after the current end of the chain, inside the caller's
/// transaction on `tx`, as multi-row inserts, and records the new head in
/// `vault_meta`.
pub(crate) async fn append_in(tx: &mut SqliteConnection, contents: &[&Content]) -> Result<()> {
    if contents.is_empty() {
        return Ok(());
    }
    let end = chain_end(tx).await?;
    let (linked, (seq, head)) = chain::link(end, contents);
    for chunk in linked.chunks(ROWS_PER_STATEMENT) {
        insert_linked(tx, chunk).await?;
    }
    let now = contents
        .last()
        .map_or(Timestamp::UNIX_EPOCH, |c| c.occurred_at);
    meta::set(tx, meta::AUDIT_HEAD, &chain::link_text(seq, &head), now).await
}

/// The chain's last link: its newest event, else the retention anchor,
/// else the start.
async fn chain_end(tx: &mut SqliteConnection) -> Result<(i64, [u8; 32])> {
    let tail: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, chain_digest FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    Ok(match tail {
        Some((seq, digest)) => (seq, chain::digest32(&digest)),
        None => meta::get_in(tx, meta::AUDIT_ANCHOR)
            .await?
            .as_deref()
            .map(chain::parse_anchor)
            .transpose()?
            .unwrap_or(GENESIS),
    })
}

/// Inserts linked events in one statement.
async fn insert_linked(tx: &mut SqliteConnection, rows: &[Linked<'_>]) -> Result<()> {
    let mut q = QueryBuilder::new(
        "INSERT INTO audit_events (seq, id, occurred_at, user_id, session_id, kind, action, resource_type,
             resource_id, details, gdpr_category, ip_hash, user_agent_hash, content_digest, chain_digest) ",
    );
    q.push_values(rows, |mut b, row| {
        let c = row.content;
        b.push_bind(row.seq)
            .push_bind(c.id.as_str())
            .push_bind(c.occurred_at)
            .push_bind(c.user_id.as_deref())
            .push_bind(c.session_id.as_deref())
            .push_bind(c.kind.as_str())
            .push_bind(c.action.as_str())
            .push_bind(c.resource_type.as_deref())
            .push_bind(c.resource_id.as_deref())
            .push_bind(c.details.as_str())
            .push_bind(c.gdpr_category.as_str())
            .push_bind(c.ip_hash.as_deref())
            .push_bind(c.user_agent_hash.as_deref())
            .push_bind(&row.content_digest[..])
            .push_bind(&row.chain_digest[..]);
    });
    crate::store::one_off(&mut q).execute(&mut *tx).await?;
    Ok(())
}

/// Clears the content of `user_id`'s events and marks them erased at `now`,
/// inside the caller's transaction on `tx`; their `seq`s.
pub(crate) async fn clear_user(
    tx: &mut SqliteConnection,
    user_id: &str,
    now: Timestamp,
) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE audit_events SET user_id = NULL, session_id = NULL, resource_type = NULL, resource_id = NULL,
             details = '{}', ip_hash = NULL, user_agent_hash = NULL, erased_at = ?1
         WHERE user_id = ?2 RETURNING seq",
    )
    .bind(now)
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?)
}

/// Runs `work` on the writer connection `conn`, with `synchronous = FULL`
/// around it when `durable`. Putting the setting back is not part of the
/// work's outcome: once the work committed, a failure there is logged, not
/// returned (which would have the batch written again).
pub(crate) async fn durably<T>(
    store: &Store,
    conn: &mut SqliteConnection,
    durable: bool,
    work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
) -> Result<T> {
    if durable {
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
    }
    let result = work(conn).await;
    if durable {
        let normal = store.synchronous_pragma();
        if let Err(e) = sqlx::query(normal).execute(&mut *conn).await {
            tracing::warn!(error = %e, "could not put synchronous back after a durable audit commit; the writer stays at FULL");
        }
    }
    result
}

/// `user_id`'s events, oldest first: their part of a user's export, read
/// in the export's snapshot.
pub(crate) fn user_events_here(
    conn: &rusqlite::Connection,
    user_id: &str,
) -> rusqlite::Result<Vec<EventRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        event_columns!(),
        " FROM audit_events WHERE user_id = ?1 ORDER BY seq"
    ))?;
    stmt.query_map([user_id], |r| {
        Ok(EventRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            occurred_at: r.get(2)?,
            user_id: r.get(3)?,
            session_id: r.get(4)?,
            kind: r.get(5)?,
            action: r.get(6)?,
            resource_type: r.get(7)?,
            resource_id: r.get(8)?,
            details: r.get(9)?,
            gdpr_category: r.get(10)?,
            erased_at: r.get(11)?,
        })
    })?
    .collect()
}

fn event_row(row: &SqliteRow) -> Result<EventRow> {
    Ok(EventRow {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        occurred_at: row.try_get("occurred_at")?,
        user_id: row.try_get("user_id")?,
        session_id: row.try_get("session_id")?,
        kind: row.try_get("kind")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        details: row.try_get("details")?,
        gdpr_category: row.try_get("gdpr_category")?,
        erased_at: row.try_get("erased_at")?,
    })
}

fn chain_row(row: &SqliteRow) -> Result<ChainRow> {
    let event = event_row(row)?;
    let (ip_hash, user_agent_hash) = match event.erased_at {
        Some(_) => (None, None),
        None => (row.try_get("ip_hash")?, row.try_get("user_agent_hash")?),
    };
    Ok(ChainRow {
        content_digest: row.try_get("content_digest")?,
        chain_digest: row.try_get("chain_digest")?,
        event,
        ip_hash,
        user_agent_hash,
    })
}

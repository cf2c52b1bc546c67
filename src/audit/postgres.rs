//! Every statement of the audit facet on PostgreSQL (feature `postgres`).
//! Implements [`AuditBackend`]: one linear hash chain across every
//! instance.
//!
//! - An append locks the chain's head row (`audit_head`, `FOR UPDATE`),
//!   links its events after it, inserts them and moves the head, in one
//!   transaction: appends from every instance take turns on that row. The
//!   primary key on `seq` and the unique `chain_digest` refuse a fork even
//!   from a writer that skipped the lock.
//! - Digests are computed over the plaintext, as in the file, so the one
//!   verifier (`verify.rs`) serves both. `details` is sealed, with the event
//!   id as associated data.
//! - Verification reads one `REPEATABLE READ` snapshot, page by page.
//! - Retention locks the head too, so an append never links after events
//!   it is deleting; its anchor is kept in `vault_meta`.

use sqlx::postgres::PgRow;
use sqlx::{Postgres as Pg, QueryBuilder, Row as _};

use super::backend::{AuditBackend, ChainRow, ChainVisitor, EventRow, Removed};
use super::chain::{self, Content, Linked};
use super::types::{AuditQuery, name};
use crate::clock::Timestamp;
use crate::core::meta;
use crate::postgres::Database;
use crate::postgres::reseal::Sealed;
use crate::seal::TableSealer;
use crate::{Error, Result};

/// The columns [`event_row`] reads (the id as text).
const EVENT_COLUMNS: &str = "seq, id::text AS id, occurred_at, user_id, session_id, kind, action, \
     resource_type, resource_id, details, gdpr_category, erased_at";

/// Events per insert statement (15 parameters each, below PostgreSQL's
/// 65 535).
const ROWS_PER_STATEMENT: usize = 2000;
/// Events per page when the whole log is read for verification.
const CHAIN_PAGE: i64 = 1000;

/// The sealed column, for re-sealing under a new key.
pub(crate) const SEALED: &[Sealed] = &[Sealed {
    table: "audit_events",
    key: "id",
    uuid_key: true,
    column: "details",
    aad: |id| id.as_bytes().to_vec(),
}];

/// The audit log in a PostgreSQL database.
pub(crate) struct Postgres<'a> {
    db: &'a Database,
}

impl<'a> Postgres<'a> {
    pub(crate) fn new(db: &'a Database) -> Self {
        Postgres { db }
    }

    fn sealer(&self) -> TableSealer {
        self.db.sealer().table("audit_events")
    }

    /// Links `contents` after the head, inserts them and moves the head,
    /// inside the caller's transaction on `tx` (which this locks the head
    /// row in, if it has not already).
    pub(crate) async fn append_in(
        &self,
        tx: &mut sqlx::PgConnection,
        contents: &[&Content],
    ) -> Result<()> {
        if contents.is_empty() {
            return Ok(());
        }
        let (seq, digest): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, chain_digest FROM audit_head FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let (linked, (seq, head)) = chain::link((seq, chain::digest32(&digest)), contents);
        let sealer = self.sealer();
        for chunk in linked.chunks(ROWS_PER_STATEMENT) {
            insert_linked(tx, &sealer, chunk).await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, chain_digest = $2")
            .bind(seq)
            .bind(&head[..])
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Empties `user_id`'s events inside the caller's transaction on `conn` (a
/// user's erasure), as the file does: the user, session, resource and
/// client hashes cleared, the details sealed again as `{}`, the time of the
/// erasure set. Their digests stay, so the chain still verifies (the
/// verifier does not check an erased event's content). Returns their `seq`s.
pub(crate) async fn clear_user(
    db: &Database,
    conn: &mut sqlx::PgConnection,
    user_id: &str,
    now: Timestamp,
) -> Result<Vec<i64>> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM audit_events WHERE user_id = $1 ORDER BY seq FOR UPDATE",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    let sealer = db.sealer().table("audit_events");
    let emptied = ids
        .iter()
        .map(|id| sealer.seal(id.to_string().as_bytes(), b"{}"))
        .collect::<Result<Vec<_>>>()?;
    let mut seqs: Vec<i64> = sqlx::query_scalar(
        "UPDATE audit_events SET user_id = NULL, session_id = NULL, resource_type = NULL,
             resource_id = NULL, details = e.details, ip_hash = NULL, user_agent_hash = NULL,
             erased_at = $3
         FROM unnest($1::uuid[], $2::bytea[]) AS e(id, details)
         WHERE audit_events.id = e.id
         RETURNING audit_events.seq",
    )
    .bind(&ids)
    .bind(&emptied)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    seqs.sort_unstable();
    Ok(seqs)
}

/// Inserts linked events in one statement, their details sealed.
async fn insert_linked(
    tx: &mut sqlx::PgConnection,
    sealer: &TableSealer,
    rows: &[Linked<'_>],
) -> Result<()> {
    let mut prepared = Vec::with_capacity(rows.len());
    for row in rows {
        let c = row.content;
        let id = uuid::Uuid::parse_str(&c.id).map_err(|_| Error::InvalidInput {
            what: "audit event id",
            reason: format!("{:?} is not a UUID", c.id),
        })?;
        prepared.push((id, sealer.seal(c.id.as_bytes(), c.details.as_bytes())?));
    }
    let mut q = QueryBuilder::<Pg>::new(
        "INSERT INTO audit_events (seq, id, occurred_at, user_id, session_id, kind, action,
             resource_type, resource_id, details, gdpr_category, ip_hash, user_agent_hash,
             content_digest, chain_digest) ",
    );
    q.push_values(rows.iter().zip(prepared), |mut b, (row, (id, details))| {
        let c = row.content;
        b.push_bind(row.seq)
            .push_bind(id)
            .push_bind(c.occurred_at)
            .push_bind(c.user_id.as_deref())
            .push_bind(c.session_id.as_deref())
            .push_bind(c.kind.as_str())
            .push_bind(c.action.as_str())
            .push_bind(c.resource_type.as_deref())
            .push_bind(c.resource_id.as_deref())
            .push_bind(details)
            .push_bind(c.gdpr_category.as_str())
            .push_bind(c.ip_hash.as_deref())
            .push_bind(c.user_agent_hash.as_deref())
            .push_bind(&row.content_digest[..])
            .push_bind(&row.chain_digest[..]);
    });
    q.build().persistent(false).execute(&mut *tx).await?;
    Ok(())
}

impl AuditBackend for Postgres<'_> {
    /// Every commit on PostgreSQL is durable (`synchronous_commit` is the
    /// server's to set), so `durable` changes nothing here.
    async fn append(&self, events: &[&Content], _durable: bool) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        self.append_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_chain(&self, visitor: &mut impl ChainVisitor) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let anchor: Option<String> =
            sqlx::query_scalar("SELECT value FROM vault_meta WHERE key = $1")
                .bind(meta::AUDIT_ANCHOR)
                .fetch_optional(&mut *tx)
                .await?;
        let (seq, digest): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, chain_digest FROM audit_head")
                .fetch_one(&mut *tx)
                .await?;
        let head = (seq > 0).then(|| chain::link_text(seq, &digest));
        visitor.ends(anchor, head)?;
        let sealer = self.sealer();
        let mut after = i64::MIN;
        'pages: loop {
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, ip_hash, user_agent_hash, content_digest, chain_digest
                 FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(after)
                .bind(CHAIN_PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in &rows {
                if !visitor.row(self.chain_row(&sealer, row))? {
                    break 'pages;
                }
            }
            if rows.len() < CHAIN_PAGE as usize {
                break;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query(&self, filter: &AuditQuery, limit: u32) -> Result<Vec<EventRow>> {
        let mut q = QueryBuilder::<Pg>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE true"
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
        let rows = q.build().fetch_all(self.db.pool()).await?;
        let sealer = self.sealer();
        rows.iter().map(|r| event_row(&sealer, r)).collect()
    }

    async fn user_events(&self, user_id: &str) -> Result<Vec<EventRow>> {
        user_events(self.db, self.db.pool(), user_id).await
    }

    async fn remove_oldest(
        &self,
        cutoff: Timestamp,
        batch: usize,
        record: impl FnOnce(&Removed) -> Result<Content>,
    ) -> Result<Option<u64>> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("SELECT seq FROM audit_head FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, chain_digest FROM audit_events WHERE seq IN
                 (SELECT seq FROM audit_events WHERE occurred_at < $1 ORDER BY seq LIMIT $2)
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(cutoff)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((through, digest)) = last else {
            return Ok(None);
        };
        let count = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
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
        sqlx::query(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(meta::AUDIT_ANCHOR)
        .bind(&removed.anchor)
        .bind(event.occurred_at)
        .execute(&mut *tx)
        .await?;
        self.append_in(&mut tx, &[&event]).await?;
        tx.commit().await?;
        Ok(Some(count))
    }
}

impl Postgres<'_> {
    fn chain_row(&self, sealer: &TableSealer, row: &PgRow) -> Result<ChainRow> {
        let event = event_row(sealer, row)?;
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
}

/// Opens every event's sealed details (`statevault check`).
pub(crate) async fn check_sealed(db: &Database) -> Result<crate::Check> {
    db.open_every_by_id(
        "sealed_audit",
        "SELECT id::text, details FROM audit_events WHERE id > $1::uuid ORDER BY id LIMIT $2",
        "audit_events",
        "audit event",
        "details",
    )
    .await
}

/// An event row with its details opened.
fn event_row(sealer: &TableSealer, row: &PgRow) -> Result<EventRow> {
    let id: String = row.try_get("id")?;
    let sealed: Vec<u8> = row.try_get("details")?;
    let details =
        String::from_utf8(sealer.open(id.as_bytes(), &sealed)?.to_vec()).map_err(|_| {
            Error::BadData {
                what: "audit_events".into(),
                detail: format!("event {id}'s details are not UTF-8"),
            }
        })?;
    Ok(EventRow {
        seq: row.try_get("seq")?,
        occurred_at: row.try_get("occurred_at")?,
        user_id: row.try_get("user_id")?,
        session_id: row.try_get("session_id")?,
        kind: row.try_get("kind")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        details,
        gdpr_category: row.try_get("gdpr_category")?,
        erased_at: row.try_get("erased_at")?,
        id,
    })
}

/// `user_id`'s events, oldest first, read with `conn` (the pool, or the
/// transaction of a user's export).
pub(crate) async fn user_events<'c>(
    db: &Database,
    conn: impl sqlx::PgExecutor<'c>,
    user_id: &str,
) -> Result<Vec<EventRow>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE user_id = $1 ORDER BY seq");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(conn)
        .await?;
    let sealer = db.sealer().table("audit_events");
    rows.iter().map(|r| event_row(&sealer, r)).collect()
}

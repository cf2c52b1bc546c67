//! A cache flush's writes to the file, as multi-row statements: the sets
//! (rows, then their tags) and the last-access touches, in statements of at
//! most [`ROWS_PER_STATEMENT`] rows and about 16 MiB ([`statements`]). A legacy import's
//! single rows go through the same `INSERT` ([`insert_if_absent`]).

use std::sync::Arc;

use sqlx::{QueryBuilder, SqliteConnection};

use super::backend::{Row, statements};
use super::l1::Meta;
use crate::Timestamp;

/// Rows per multi-row statement.
pub(super) const ROWS_PER_STATEMENT: usize = 100;

/// Writes sets, replacing rows and their tags, as multi-row statements.
/// Returns the stored bytes written.
pub(super) async fn write_sets(conn: &mut SqliteConnection, rows: &[Row]) -> sqlx::Result<i64> {
    let mut written = 0;
    for chunk in statements(rows, ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM cache_tags WHERE key IN (");
        let mut keys = q.separated(", ");
        for r in chunk {
            keys.push_bind(&*r.key);
        }
        q.push(")");
        crate::store::one_off(&mut q).execute(&mut *conn).await?;
        upsert(conn, chunk).await?;
        written += chunk.iter().map(|r| r.stored.len() as i64).sum::<i64>();
        insert_tags(conn, chunk).await?;
    }
    Ok(written)
}

/// Inserts or replaces one statement's worth of rows.
async fn upsert(conn: &mut SqliteConnection, chunk: &[Row]) -> sqlx::Result<()> {
    let mut q = insert_rows(chunk);
    q.push(
        " ON CONFLICT (key) DO UPDATE SET namespace = excluded.namespace, \
         user_id = excluded.user_id, codec = excluded.codec, size = excluded.size, \
         stored_size = excluded.stored_size, created_at = excluded.created_at, \
         expires_at = excluded.expires_at, last_access_at = excluded.last_access_at, \
         tags = excluded.tags, value = excluded.value",
    );
    crate::store::one_off(&mut q).execute(&mut *conn).await?;
    Ok(())
}

/// Inserts `row` and its tags unless a row has its key (inside the caller's
/// transaction, a legacy import's). Returns whether it was inserted.
pub(super) async fn insert_if_absent(conn: &mut SqliteConnection, row: &Row) -> sqlx::Result<bool> {
    let rows = std::slice::from_ref(row);
    let mut q = insert_rows(rows);
    q.push(" ON CONFLICT (key) DO NOTHING");
    let inserted = crate::store::one_off(&mut q)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if inserted {
        insert_tags(conn, rows).await?;
    }
    Ok(inserted)
}

/// The `INSERT` of `chunk`'s rows into `cache_entries`, last accessed when
/// they were made, before its `ON CONFLICT` clause.
fn insert_rows(chunk: &[Row]) -> QueryBuilder<sqlx::Sqlite> {
    let mut q = QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO cache_entries (key, namespace, user_id, codec, size, stored_size, \
         created_at, expires_at, last_access_at, tags, value) ",
    );
    q.push_values(chunk, |mut b, r| {
        let item = &r.pending.item;
        let created = Timestamp::from_millis(r.pending.created_at);
        b.push_bind(&*r.key)
            .push_bind(&*item.meta.namespace)
            .push_bind(item.meta.user.as_deref())
            .push_bind(r.codec.as_str())
            .push_bind(item.value.len() as i64)
            .push_bind(r.stored.len() as i64)
            .push_bind(created)
            .push_bind(item.expires_at.map(Timestamp::from_millis))
            .push_bind(created)
            .push_bind(joined_tags(&item.meta))
            .push_bind(r.stored.as_slice());
    });
    q
}

/// Inserts the tags of these rows into `cache_tags`.
async fn insert_tags(conn: &mut SqliteConnection, chunk: &[Row]) -> sqlx::Result<()> {
    let tags: Vec<(&str, &str)> = chunk
        .iter()
        .flat_map(|r| r.pending.item.meta.tags.iter().map(|t| (&**t, &*r.key)))
        .collect();
    for tags in tags.chunks(ROWS_PER_STATEMENT * 4) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO cache_tags (tag, key) ");
        q.push_values(tags, |mut b, (tag, key)| {
            b.push_bind(*tag).push_bind(*key);
        });
        q.push(" ON CONFLICT DO NOTHING");
        crate::store::one_off(&mut q).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Moves rows' last access forward (never back).
pub(super) async fn write_touches(
    conn: &mut SqliteConnection,
    touches: &[(Arc<str>, i64)],
) -> sqlx::Result<()> {
    for chunk in touches.chunks(ROWS_PER_STATEMENT * 2) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE cache_entries SET last_access_at = v.column2 FROM (",
        );
        q.push_values(chunk, |mut b, (key, at)| {
            b.push_bind(&**key).push_bind(Timestamp::from_millis(*at));
        });
        q.push(") AS v WHERE cache_entries.key = v.column1 AND cache_entries.last_access_at < v.column2");
        crate::store::one_off(&mut q).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The tags column: tags joined by U+001F (tags never contain control
/// characters), `None` when there are none.
fn joined_tags(meta: &Meta) -> Option<String> {
    (!meta.tags.is_empty()).then(|| meta.tags.join("\u{1f}"))
}

//! Re-sealing every sealed value under a new key (`statevault rekey` on
//! PostgreSQL). The facets say which columns they seal and how a row's
//! associated data is made ([`Sealed`]); [`Database::reseal`] opens each
//! value with the current key and seals it again with the new one, the key
//! check and the keyed-hash secret in `vault_meta` with them, inside the
//! caller's transaction, which first holds every sealed table against
//! writes ([`Database::hold_sealed`]): another instance's write waits, and
//! either every value is under the new key or, on any error, every value
//! stays as it was.

use std::collections::BTreeSet;

use sqlx::Row as _;

use super::{CHECK_ROW, Database, HASH_SALT_ROW, unhex};
use crate::seal::{Sealer, TableSealer};
use crate::{Error, Result, Timestamp};

/// One sealed column, as a facet declares it.
#[derive(Clone, Copy)]
pub(crate) struct Sealed {
    /// Its table, whose name is also its sealing context.
    pub(crate) table: &'static str,
    /// The column naming the row (text, or `uuid` when `uuid_key`).
    pub(crate) key: &'static str,
    pub(crate) uuid_key: bool,
    /// The sealed column.
    pub(crate) column: &'static str,
    /// The associated data of a row, from its key as text.
    pub(crate) aad: fn(&str) -> Vec<u8>,
}

/// Rows re-sealed per statement.
const PAGE: i64 = 1000;

impl Database {
    /// Holds every table of `columns`, and `vault_meta`, against writes
    /// until the transaction on `tx` ends: another instance's write waits.
    pub(crate) async fn hold_sealed(
        &self,
        tx: &mut sqlx::PgConnection,
        columns: &[Sealed],
    ) -> Result<()> {
        let tables: BTreeSet<&str> = columns.iter().map(|c| c.table).collect();
        let tables: Vec<&str> = tables.into_iter().chain(["vault_meta"]).collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Re-seals every value of `columns`, and `vault_meta`'s sealed rows,
    /// under `new`, inside the caller's transaction on `tx` (which holds
    /// the tables, [`Database::hold_sealed`]); records `key_created_at`.
    /// Returns how many values were sealed again. A value that does not
    /// open with the current key is an error naming its row: the caller's
    /// rollback then leaves every value as it was.
    pub(crate) async fn reseal(
        &self,
        tx: &mut sqlx::PgConnection,
        new: &Sealer,
        columns: &[Sealed],
        now: Timestamp,
    ) -> Result<u64> {
        let mut n = 0;
        for column in columns {
            n += reseal_column(tx, self.sealer(), new, column).await?;
        }
        let (old_meta, new_meta) = (self.sealer().table("vault_meta"), new.table("vault_meta"));
        for row in [CHECK_ROW, HASH_SALT_ROW] {
            let Some(hex) =
                sqlx::query_scalar::<_, String>("SELECT value FROM vault_meta WHERE key = $1")
                    .bind(row)
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                continue;
            };
            let plain = unhex(&hex)
                .and_then(|sealed| old_meta.open(row.as_bytes(), &sealed).ok())
                .ok_or_else(|| refused("vault_meta", row, "value"))?;
            let sealed = new_meta.seal(row.as_bytes(), &plain)?;
            sqlx::query("UPDATE vault_meta SET value = $2, updated_at = now() WHERE key = $1")
                .bind(row)
                .bind(crate::key::hex(&sealed).as_str())
                .execute(&mut *tx)
                .await?;
            n += 1;
        }
        sqlx::query(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES ('key_created_at', $1, now())
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
        )
        .bind(now.to_rfc3339())
        .execute(&mut *tx)
        .await?;
        Ok(n)
    }
}

/// Re-seals one column, a page of rows at a time, in key order.
async fn reseal_column(
    tx: &mut sqlx::PgConnection,
    old: &Sealer,
    new: &Sealer,
    c: &Sealed,
) -> Result<u64> {
    let (old, new) = (old.table(c.table), new.table(c.table));
    let key_type = if c.uuid_key { "uuid" } else { "text" };
    let select = format!(
        "SELECT {key}::text, {column} FROM {table} WHERE {key} > $1::{key_type}
         ORDER BY {key} LIMIT $2",
        key = c.key,
        column = c.column,
        table = c.table,
    );
    let update = format!(
        "UPDATE {table} SET {column} = v.sealed FROM unnest($1::text[], $2::bytea[]) AS v(k, sealed)
         WHERE {table}.{key} = v.k::{key_type}",
        key = c.key,
        column = c.column,
        table = c.table,
    );
    let mut after = if c.uuid_key {
        uuid::Uuid::nil().to_string()
    } else {
        String::new()
    };
    let mut n = 0;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(&after)
            .bind(PAGE)
            .fetch_all(&mut *tx)
            .await?;
        let (keys, sealed) = seal_again(&rows, &old, &new, c)?;
        if keys.is_empty() {
            return Ok(n);
        }
        sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(&keys)
            .bind(&sealed)
            .execute(&mut *tx)
            .await?;
        n += keys.len() as u64;
        after = keys.last().cloned().unwrap_or_default();
        if rows.len() < PAGE as usize {
            return Ok(n);
        }
    }
}

/// A page's keys, and each value opened with `old` and sealed with `new`.
fn seal_again(
    rows: &[sqlx::postgres::PgRow],
    old: &TableSealer,
    new: &TableSealer,
    c: &Sealed,
) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
    let mut keys = Vec::with_capacity(rows.len());
    let mut sealed = Vec::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get(0)?;
        let value: Vec<u8> = row.try_get(1)?;
        let aad = (c.aad)(&key);
        let plain = old
            .open(&aad, &value)
            .map_err(|_| refused(c.table, &key, c.column))?;
        sealed.push(new.seal(&aad, &plain)?);
        keys.push(key);
    }
    Ok((keys, sealed))
}

/// The error of a value that does not open with the current key.
fn refused(table: &str, key: &str, column: &str) -> Error {
    Error::BadData {
        what: table.to_owned(),
        detail: format!(
            "{key:?}: {column} does not open with the current key, so nothing was re-sealed \
             (`statevault check` names every such row)"
        ),
    }
}

//! What an operator reads about the file: its settings, its tables, and one
//! read-only statement of their own.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};

use super::{Store, read_only_sql};
use crate::{Error, Result};

/// The file's settings and contents, as `PRAGMA`s and counts report them.
pub(crate) struct Description {
    /// SQLCipher's version (`PRAGMA cipher_version`).
    pub(crate) cipher_version: Option<String>,
    /// `PRAGMA journal_mode`.
    pub(crate) journal_mode: String,
    /// Rows per table.
    pub(crate) tables: BTreeMap<String, i64>,
}

/// Rows of a read-only statement: column names, then values as JSON.
pub(crate) type Table = (Vec<String>, Vec<Vec<Value>>);

impl Store {
    /// Reads the file's settings and counts every table's rows, on a reader.
    pub(crate) async fn describe(&self) -> Result<Description> {
        let mut conn = self.sqlx_reader_conn().await?;
        let cipher_version: Option<String> = sqlx::query_scalar("PRAGMA cipher_version")
            .fetch_optional(&mut *conn)
            .await?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut tables = BTreeMap::new();
        for name in names {
            // Table names come from sqlite_schema, quoted as identifiers.
            let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
            let rows: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?;
            tables.insert(name, rows);
        }
        Ok(Description {
            cipher_version,
            journal_mode,
            tables,
        })
    }

    /// Runs `PRAGMA quick_check` on a reader connection: `["ok"]` or what
    /// is wrong, a line each.
    pub(crate) async fn quick_check(&self) -> Result<Vec<String>> {
        let mut conn = self.sqlx_reader_conn().await?;
        Ok(sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&mut *conn)
            .await?)
    }

    /// Runs one statement that [`read_only_sql::check`] lets through, on a
    /// read-only connection, and returns every row.
    pub(crate) async fn query_read_only(&self, sql: &str) -> Result<Table> {
        read_only_sql::check(sql)?;
        let mut conn = self.sqlx_reader_conn().await?;
        let writes = |e: sqlx::Error| {
            let read_only = e
                .as_database_error()
                .and_then(|db| db.code()?.parse::<i32>().ok())
                .is_some_and(|code| code & 0xff == libsqlite3_sys::SQLITE_READONLY);
            if read_only {
                read_only_sql::refused("the statement writes")
            } else {
                Error::from(e)
            }
        };
        let stmt = conn
            .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .map_err(writes)?;
        let columns = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        let rows = stmt
            .query()
            .fetch_all(&mut *conn)
            .await
            .map_err(writes)?
            .iter()
            .map(|row| (0..row.len()).map(|i| json_value(row, i)).collect())
            .collect::<Result<_>>()?;
        Ok((columns, rows))
    }
}

/// A SQLite value as JSON: integers and reals as numbers, text as strings,
/// blobs as `x'<hex>'` strings (the SQL literal form).
fn json_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Value> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" => Value::from(row.try_get_unchecked::<i64, _>(i)?),
        "REAL" => Value::from(row.try_get_unchecked::<f64, _>(i)?),
        "BLOB" => {
            let bytes = row.try_get_unchecked::<Vec<u8>, _>(i)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Value::from(format!("x'{hex}'"))
        }
        _ => Value::from(row.try_get_unchecked::<String, _>(i)?),
    })
}

//! What `statevault check` asks of a PostgreSQL database: that every sealed
//! value opens with the vault's key, a table at a time, a page of rows at
//! a time (the facets say which rows and how each opens). A table that
//! cannot be read fails its check; the others still run.

use sqlx::postgres::PgRow;

use super::Database;
use crate::Result;

/// Rows per page when [`Database::open_every`] reads a table.
const CHECK_PAGE: i64 = 1000;

impl Database {
    /// Opens every sealed value that `select` reads, page by page: `select`
    /// takes the last key read (`$1`, text, `start` at first) and a page
    /// size (`$2`), and returns rows in key order; `open` opens one row's
    /// sealed values and returns its key (as text) and what did not open.
    /// The `check` named `name` fails, naming each row, if any did not.
    pub(crate) async fn open_every(
        &self,
        name: &'static str,
        select: &'static str,
        start: &str,
        mut open: impl FnMut(&PgRow) -> Result<(String, Vec<String>)>,
    ) -> Result<crate::Check> {
        let mut problems = Vec::new();
        let mut after = start.to_owned();
        loop {
            // A table that cannot be read (dropped by hand) fails its check,
            // with the server's words, and the other checks still run.
            let rows = match sqlx::query(select)
                .bind(&after)
                .bind(CHECK_PAGE)
                .fetch_all(&self.pool)
                .await
                .map_err(crate::Error::from)
            {
                Ok(rows) => rows,
                Err(crate::Error::Closed) => return Err(crate::Error::Closed),
                Err(e) => {
                    problems.push(format!("cannot read: {e}"));
                    break;
                }
            };
            for row in &rows {
                let (key, failed) = open(row)?;
                problems.extend(failed);
                after = key;
            }
            if rows.len() < CHECK_PAGE as usize {
                break;
            }
        }
        Ok(crate::Check {
            name,
            ok: problems.is_empty(),
            problems,
            passes: 1,
        })
    }

    /// [`Database::open_every`] for a table whose rows are named by a uuid
    /// `id` and sealed with it as associated data: `select` reads `id::text`
    /// and the sealed `column`; each failure names the row as `what`.
    pub(crate) async fn open_every_by_id(
        &self,
        name: &'static str,
        select: &'static str,
        table: &'static str,
        what: &'static str,
        column: &'static str,
    ) -> Result<crate::Check> {
        let sealer = self.sealer.table(table);
        self.open_every(name, select, &uuid::Uuid::nil().to_string(), |row| {
            let id: String = sqlx::Row::try_get(row, 0)?;
            let sealed: Vec<u8> = sqlx::Row::try_get(row, 1)?;
            let failed = match sealer.open(id.as_bytes(), &sealed) {
                Ok(_) => Vec::new(),
                Err(_) => vec![format!("{what} {id}: {column} does not open")],
            };
            Ok((id, failed))
        })
        .await
    }
}

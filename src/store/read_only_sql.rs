//! What [`Vault::query_read_only`](crate::Vault::query_read_only) lets run:
//! one statement that reads. The connection is read-only too, but that is
//! not enough on its own: SQLCipher runs `PRAGMA rekey` (and its other key
//! pragmas) while the statement is prepared, SQLite answers a write with a
//! bare "attempt to write a readonly database", and `VACUUM INTO` creates
//! its output file before it fails. So the text is looked at first, and
//! anything but `SELECT`, `WITH`, `VALUES`, `EXPLAIN` and the PRAGMAs that
//! only read is refused before SQLite sees it.

use crate::{Error, Result};

/// PRAGMAs that only read, whatever their argument (a table or index name,
/// a row limit).
const READING_PRAGMAS: &[&str] = &[
    "cipher_integrity_check",
    "foreign_key_check",
    "foreign_key_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// PRAGMAs that read a setting when given no value (and would change it
/// when given one).
const SETTING_PRAGMAS: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "cache_size",
    "cipher_provider",
    "cipher_provider_version",
    "cipher_version",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "journal_mode",
    "journal_size_limit",
    "max_page_count",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "query_only",
    "schema_version",
    "secure_delete",
    "synchronous",
    "user_version",
    "wal_autocheckpoint",
];

#[derive(Debug, PartialEq)]
enum Token {
    /// A keyword or bare identifier, upper-cased.
    Word(String),
    /// A string literal or a quoted identifier.
    Quoted,
    /// Any other character but `;`.
    Punct(char),
}

/// Refuses `sql` unless it is one statement that only reads.
pub(crate) fn check(sql: &str) -> Result<()> {
    let statements = statements(sql);
    match statements.as_slice() {
        [] => Err(refused("there is no statement")),
        [one] => check_statement(one),
        _ => Err(refused("only one statement runs at a time")),
    }
}

/// The error for a refused statement.
pub(crate) fn refused(why: impl std::fmt::Display) -> Error {
    Error::invalid(
        "sql",
        format!(
            "queries are read-only: {why}; SELECT, WITH, VALUES, EXPLAIN and PRAGMAs that only read run here"
        ),
    )
}

fn check_statement(tokens: &[Token]) -> Result<()> {
    let Some(Token::Word(first)) = tokens.first() else {
        return Err(refused("the statement does not start with a keyword"));
    };
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" => Ok(()),
        "EXPLAIN" => {
            let rest = match tokens.get(1..3) {
                Some([Token::Word(q), Token::Word(p)]) if q == "QUERY" && p == "PLAN" => {
                    &tokens[3..]
                }
                _ => &tokens[1..],
            };
            check_statement(rest)
        }
        "PRAGMA" => check_pragma(&tokens[1..]),
        other => Err(refused(format_args!("{other} would change the file"))),
    }
}

fn check_pragma(tokens: &[Token]) -> Result<()> {
    // An optional schema: `main.page_count`.
    let tokens = match tokens {
        [Token::Word(_) | Token::Quoted, Token::Punct('.'), rest @ ..] => rest,
        _ => tokens,
    };
    let Some((Token::Word(name), value)) = tokens.split_first() else {
        return Err(refused("PRAGMA without a name"));
    };
    let name = name.to_ascii_lowercase();
    let reads = READING_PRAGMAS.contains(&name.as_str())
        || (SETTING_PRAGMAS.contains(&name.as_str()) && value.is_empty());
    if reads {
        Ok(())
    } else if value.is_empty() {
        Err(refused(format_args!(
            "PRAGMA {name} may change the file, its key or the connection"
        )))
    } else {
        Err(refused(format_args!(
            "PRAGMA {name} with a value changes a setting"
        )))
    }
}

/// The statements of `sql`, as tokens, without comments, whitespace or
/// empty statements.
fn statements(sql: &str) -> Vec<Vec<Token>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ';' => statements.push(std::mem::take(&mut current)),
            c if c.is_whitespace() => {}
            '-' if chars.peek() == Some(&'-') => {
                chars.by_ref().find(|&c| c == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                // A doubled quote inside is an escaped one: the literal
                // simply continues after it.
                while let Some(c) = chars.next() {
                    if c == close && (close == ']' || chars.peek() != Some(&close)) {
                        break;
                    }
                    if c == close {
                        chars.next();
                    }
                }
                current.push(Token::Quoted);
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = c.to_string();
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                current.push(Token::Word(word.to_ascii_uppercase()));
            }
            c => current.push(Token::Punct(c)),
        }
    }
    statements.push(current);
    statements.retain(|s| !s.is_empty());
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_and_everything_else_is_refused() {
        for ok in [
            "SELECT 1",
            "select 'a;b' -- ; PRAGMA rekey = 'x'",
            "/* PRAGMA rekey */ VALUES (1);",
            "PRAGMA main.table_info('sessions')",
            "PRAGMA \"main\".page_count",
            "EXPLAIN QUERY PLAN SELECT 1",
            "SELECT 'it''s; fine'",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-- nothing",
            "PRAGMA rekey = 'x'",
            "PRAGMA key",
            "PRAGMA page_size = 512",
            "PRAGMA journal_mode(DELETE)",
            "SELECT 1; SELECT 2",
            "SELECT 'x'; PRAGMA rekey='y'",
            "EXPLAIN PRAGMA rekey = 'x'",
            "VACUUM INTO 'f'",
            "INSERT INTO t VALUES (1)",
            "ATTACH 'x' AS y",
            "(SELECT 1)",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}

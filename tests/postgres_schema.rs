//! The PostgreSQL schema (`migrations/postgres`) on a real server: stock
//! `sqlx-cli` applies it into a schema of its own, once; what must never be
//! plaintext is stored as bytes for sealing; the cache is UNLOGGED; the
//! audit chain has one head and refuses a fork.
//!
//! Needs `STATEVAULT_TEST_POSTGRES` (`.ci/run` starts a throwaway server),
//! `psql`, and `sqlx` built with the postgres feature; each test makes a
//! database of its own.

mod common;

use std::collections::BTreeSet;
use std::process::Output;

use common::{PgDatabase, stderr, stdout};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");

/// Every table the migrations make, with sqlx's bookkeeping.
const TABLES: [&str; 13] = [
    "_sqlx_migrations",
    "audit_events",
    "audit_head",
    "cache_entries",
    "cache_tags",
    "changes",
    "metrics",
    "preferences",
    "session_users",
    "sessions",
    "token_buckets",
    "vault_meta",
    "violations",
];

/// The columns that hold what a database administrator, a dump or a replica
/// must not read: sealed by statevault before they leave the process.
const SEALED: [(&str, &str); 6] = [
    ("sessions", "data"),
    ("sessions", "client_meta"),
    ("cache_entries", "value"),
    ("preferences", "document"),
    ("audit_events", "details"),
    ("violations", "client_info"),
];

fn sqlx(url: &str, args: &[&str]) -> Option<Output> {
    let sqlx = common::tool("sqlx")?;
    Some(
        std::process::Command::new(sqlx)
            .args(args)
            .args(["--source", MIGRATIONS, "--database-url", url])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap(),
    )
}

fn migrations() -> usize {
    std::fs::read_dir(MIGRATIONS).unwrap().count()
}

/// Migrates `schema` (made first) of `db` with stock sqlx-cli.
fn migrate(db: &PgDatabase, schema: &str) -> Option<Output> {
    db.psql(&format!("CREATE SCHEMA {schema}"));
    let out = sqlx(&db.url_in_schema(schema), &["migrate", "run"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Some(out)
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn stock_sqlx_cli_migrates_a_schema_of_its_own_once() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let Some(first) = migrate(&db, "statevault") else {
        return;
    };
    assert_eq!(
        stdout(&first).matches("Applied").count(),
        migrations(),
        "{}",
        stdout(&first)
    );
    let url = db.url_in_schema("statevault");
    let again = sqlx(&url, &["migrate", "run"]).unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(!stdout(&again).contains("Applied"), "{}", stdout(&again));
    let info = sqlx(&url, &["migrate", "info"]).unwrap();
    let text = stdout(&info);
    assert_eq!(text.matches("installed").count(), migrations(), "{text}");
    assert!(!text.contains("pending"), "{text}");

    // Every table, sqlx's included, is in the schema; none in public.
    let tables = db.psql(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('public', 'statevault')",
    );
    let expected: BTreeSet<String> = TABLES.iter().map(|t| format!("statevault.{t}")).collect();
    assert_eq!(lines(&tables), expected);
}

#[test]
fn sealed_columns_are_bytes_and_the_cache_is_unlogged() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    if migrate(&db, "statevault").is_none() {
        return;
    }
    for (table, column) in SEALED {
        let kind = db.psql(&format!(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_schema = 'statevault' AND table_name = '{table}' AND column_name = '{column}'"
        ));
        assert_eq!(kind.trim(), "bytea", "{table}.{column}");
    }
    // No other column of these tables holds JSON text or a document.
    let json = db.psql(
        "SELECT table_name || '.' || column_name FROM information_schema.columns \
         WHERE table_schema = 'statevault' AND data_type IN ('json', 'jsonb')",
    );
    assert_eq!(json.trim(), "", "JSON stored unsealed");
    let unlogged = db.psql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'statevault' AND c.relkind = 'r' AND c.relpersistence = 'u'",
    );
    assert_eq!(
        lines(&unlogged),
        lines("cache_entries\ncache_tags"),
        "only the cache may be lost in a crash"
    );
}

#[test]
fn the_audit_chain_has_one_head_and_refuses_a_fork() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    if migrate(&db, "statevault").is_none() {
        return;
    }
    let head = db.psql("SELECT seq, encode(chain_digest, 'hex') FROM statevault.audit_head");
    assert_eq!(
        head.trim(),
        format!("0|{}", "0".repeat(64)),
        "the genesis link"
    );
    let second =
        db.psql_fails("INSERT INTO statevault.audit_head (seq, chain_digest) VALUES (1, '\\x01')");
    assert!(second.contains("duplicate key"), "{second}");

    let event = |seq: u32, id: &str, digest: &str| {
        format!(
            "INSERT INTO statevault.audit_events (seq, id, occurred_at, kind, action, details, \
             gdpr_category, content_digest, chain_digest) VALUES ({seq}, '{id}', now(), \
             'auth', 'login', '\\x00', 'necessary', '\\x00', '\\x{digest}')"
        )
    };
    db.psql(&event(1, "0192b3c4-0000-7000-8000-000000000001", "01"));
    // Another event at the same position, or with the same link, is a fork.
    let same_seq = db.psql_fails(&event(1, "0192b3c4-0000-7000-8000-000000000002", "02"));
    assert!(same_seq.contains("audit_events_pkey"), "{same_seq}");
    let same_link = db.psql_fails(&event(2, "0192b3c4-0000-7000-8000-000000000003", "01"));
    assert!(same_link.contains("chain_digest"), "{same_link}");
    let unknown_kind = db.psql_fails(
        &event(2, "0192b3c4-0000-7000-8000-000000000004", "04").replace("'auth'", "'other'"),
    );
    assert!(unknown_kind.contains("check constraint"), "{unknown_kind}");
}

#[test]
fn two_schemas_in_one_database_keep_their_own_state_and_bookkeeping() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    if migrate(&db, "tenant_a").is_none() {
        return;
    }
    migrate(&db, "tenant_b").unwrap();
    db.psql("INSERT INTO tenant_a.vault_meta VALUES ('created_at', '2026-11-29T00:00:00Z', now())");
    assert_eq!(
        db.psql("SELECT count(*) FROM tenant_a.vault_meta").trim(),
        "1"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM tenant_b.vault_meta").trim(),
        "0"
    );
    for schema in ["tenant_a", "tenant_b"] {
        let applied = db.psql(&format!(
            "SELECT count(*) FROM {schema}._sqlx_migrations WHERE success"
        ));
        assert_eq!(applied.trim(), migrations().to_string(), "{schema}");
    }
}

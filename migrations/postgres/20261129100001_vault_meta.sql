-- statevault on PostgreSQL: the vault's own facts (schema creation time, the
-- check that proves the vault key opens this database's sealed values).
--
-- No statement names a schema: the tables go into the first schema of the
-- connection's search_path (`statevault` unless configured otherwise), with
-- sqlx's `_sqlx_migrations` beside them. That schema must exist before the
-- first migration; statevault creates it, an operator running sqlx-cli
-- creates it first (`CREATE SCHEMA statevault`), see docs/operations.md.
CREATE TABLE vault_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL
);

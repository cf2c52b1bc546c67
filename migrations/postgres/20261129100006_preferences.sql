-- Preferences: a user's overrides, merge-patched under a row lock
-- (`SELECT … FOR UPDATE`, then the update, in one transaction). The
-- document is sealed, with the user id as associated data.
CREATE TABLE preferences (
    user_id        text PRIMARY KEY,
    document       bytea NOT NULL,                       -- sealed JSON
    schema_version bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- Sessions. Tokens are stored as SHA-256 hashes and client IPs and user
-- agents as keyed hashes, as in the file. `client_meta` and `data` are
-- sealed: AEAD ciphertext (nonce, ciphertext, tag) under a key derived for
-- this table, with the session id as associated data.
CREATE TABLE sessions (
    id                 text PRIMARY KEY,             -- public id (uuid v7), safe to log
    token_hash         bytea NOT NULL UNIQUE,        -- SHA-256 of the bearer token
    csrf_hash          bytea NOT NULL,               -- SHA-256 of the session's CSRF token
    user_id            text NOT NULL,
    org_id             text,
    device_fingerprint bytea,                        -- keyed hash; NULL when unbound
    ip_hash            bytea,                        -- keyed hash of the client IP
    user_agent_hash    bytea,                        -- keyed hash of the user agent
    client_meta        bytea NOT NULL,               -- sealed JSON
    data               bytea NOT NULL,               -- sealed JSON
    created_at         timestamptz NOT NULL,
    last_seen_at       timestamptz NOT NULL,
    idle_timeout_secs  bigint NOT NULL CHECK (idle_timeout_secs > 0),
    expires_at         timestamptz NOT NULL,         -- absolute expiry
    rotation_due_at    timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoked_reason     text
);

CREATE INDEX sessions_user ON sessions (user_id, created_at);
CREATE INDEX sessions_last_seen ON sessions (last_seen_at);

-- One row per user with sessions: a create locks it (`FOR UPDATE`) for the
-- length of its transaction, so that the per-user cap holds across every
-- instance without advisory locks.
CREATE TABLE session_users (
    user_id text PRIMARY KEY
);

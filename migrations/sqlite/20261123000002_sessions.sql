-- One row per session. The bearer token is never stored: `token_hash` is its
-- SHA-256, so a copy of the file cannot be replayed as a live session. Times are
-- RFC 3339 UTC text with milliseconds ('2026-11-23T05:23:17.123Z'): they sort and
-- compare as text, and read as dates in any SQLite shell.
CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY NOT NULL,   -- public id (uuid v7), safe to log
    token_hash         BLOB NOT NULL UNIQUE,        -- SHA-256 of the bearer token
    csrf_hash          BLOB NOT NULL,               -- SHA-256 of the session's CSRF token
    user_id            TEXT NOT NULL,
    org_id             TEXT,
    device_fingerprint BLOB,                        -- keyed hash; NULL when unbound
    ip_hash            BLOB,                        -- keyed hash of the client IP
    user_agent_hash    BLOB,                        -- keyed hash of the user agent
    client_meta        TEXT NOT NULL DEFAULT '{}',  -- JSON, nothing that identifies a person
    data               TEXT NOT NULL DEFAULT '{}',  -- JSON session data (typed by the caller)
    created_at         TEXT NOT NULL,
    last_seen_at       TEXT NOT NULL,
    idle_timeout_secs  INTEGER NOT NULL,
    expires_at         TEXT NOT NULL,               -- absolute expiry
    rotation_due_at    TEXT NOT NULL,
    revoked_at         TEXT,
    revoked_reason     TEXT
) STRICT;

-- list / revoke a user's sessions, oldest first for the concurrent-session cap
CREATE INDEX sessions_user ON sessions (user_id, created_at);
-- retention: sessions idle past the retention period
CREATE INDEX sessions_last_seen ON sessions (last_seen_at);
-- retention: sessions past their absolute expiry
CREATE INDEX sessions_expires ON sessions (expires_at);

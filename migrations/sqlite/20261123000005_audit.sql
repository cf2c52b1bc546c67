-- Append-only audit log with a hash chain. `content_digest` covers the event's
-- content; `chain_digest` covers the previous chain digest, `seq` and
-- `content_digest`. Erasure clears the content columns and sets `erased_at` but
-- keeps both digests, so the chain still verifies after a GDPR erasure; retention
-- keeps the digest of the last removed event in vault_meta as the new anchor.
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,            -- position in the chain
    id              TEXT NOT NULL UNIQUE,           -- uuid v7
    occurred_at     TEXT NOT NULL,
    user_id         TEXT,
    session_id      TEXT,
    kind            TEXT NOT NULL,                  -- api_call | auth | data_access | error | consent | admin
    action          TEXT NOT NULL,
    resource_type   TEXT,
    resource_id     TEXT,
    details         TEXT NOT NULL DEFAULT '{}',     -- JSON
    gdpr_category   TEXT NOT NULL,                  -- necessary | analytics | marketing | preferences
    ip_hash         BLOB,                           -- keyed hash, never the address
    user_agent_hash BLOB,                           -- keyed hash
    content_digest  BLOB NOT NULL,
    chain_digest    BLOB NOT NULL,
    erased_at       TEXT                            -- set when the content was erased
) STRICT;

-- query / export / erase by user
CREATE INDEX audit_events_user ON audit_events (user_id, occurred_at) WHERE user_id IS NOT NULL;
-- query by kind and action
CREATE INDEX audit_events_kind ON audit_events (kind, action, occurred_at);
-- query by time, retention
CREATE INDEX audit_events_time ON audit_events (occurred_at);

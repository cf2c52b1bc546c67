-- The audit log: one hash chain across every instance. An append locks the
-- head row (`FOR UPDATE`), inserts the event at the next position and moves
-- the head, in one transaction; the primary key on `seq` and the unique
-- chain digest refuse a fork even from a writer that skipped the lock.
-- Digests are computed over the plaintext, as in the file, so one verifier
-- serves both. `details` is sealed, with the event id as associated data.
CREATE TABLE audit_events (
    seq             bigint PRIMARY KEY CHECK (seq > 0),  -- position in the chain
    id              uuid NOT NULL UNIQUE,                -- uuid v7
    occurred_at     timestamptz NOT NULL,
    user_id         text,
    session_id      text,
    kind            text NOT NULL CHECK (kind IN ('api_call', 'auth', 'data_access', 'error', 'consent', 'admin')),
    action          text NOT NULL,
    resource_type   text,
    resource_id     text,
    details         bytea NOT NULL,                      -- sealed JSON
    gdpr_category   text NOT NULL CHECK (gdpr_category IN ('necessary', 'analytics', 'marketing', 'preferences')),
    ip_hash         bytea,                               -- keyed hash, never the address
    user_agent_hash bytea,                               -- keyed hash
    content_digest  bytea NOT NULL,
    chain_digest    bytea NOT NULL UNIQUE,
    erased_at       timestamptz                          -- set when the content was erased
);

CREATE INDEX audit_events_user ON audit_events (user_id, occurred_at) WHERE user_id IS NOT NULL;
CREATE INDEX audit_events_kind ON audit_events (kind, action, occurred_at);
CREATE INDEX audit_events_time ON audit_events (occurred_at);

-- The chain's tip: exactly one row, starting at the genesis link (position
-- 0, a digest of 32 zero bytes).
CREATE TABLE audit_head (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq          bigint NOT NULL CHECK (seq >= 0),
    chain_digest bytea NOT NULL
);

INSERT INTO audit_head (seq, chain_digest) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

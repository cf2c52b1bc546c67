-- Rate limits. A shared-mode check is one statement in autocommit:
-- INSERT … ON CONFLICT (subject, limit_name, window_secs) DO UPDATE … WHERE
-- … RETURNING, refilling and taking in SQL. Violations and penalties are in
-- a logged table; `client_info` (keyed hashes of the IP and user agent, and
-- the route) is sealed, with the violation's id as associated data.
CREATE TABLE token_buckets (
    subject        text NOT NULL,
    limit_name     text NOT NULL,
    window_secs    bigint NOT NULL CHECK (window_secs > 0),
    tokens         double precision NOT NULL,
    last_refill_at timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (subject, limit_name, window_secs)
);

CREATE INDEX token_buckets_idle ON token_buckets (updated_at);

CREATE TABLE violations (
    id            uuid PRIMARY KEY,                     -- uuid v7, made by the instance
    subject       text NOT NULL,
    limit_name    text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    cost          double precision NOT NULL,
    penalty_until timestamptz,
    client_info   bytea NOT NULL                        -- sealed JSON
);

CREATE INDEX violations_subject ON violations (subject, occurred_at);
CREATE INDEX violations_time ON violations (occurred_at);

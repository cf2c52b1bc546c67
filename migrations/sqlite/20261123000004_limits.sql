-- Token buckets, one row per (subject, limit, window). A limit with a per-minute
-- and a per-hour window has two rows; a request must fit both.
CREATE TABLE token_buckets (
    subject        TEXT NOT NULL,
    limit_name     TEXT NOT NULL,
    window_secs    INTEGER NOT NULL,
    tokens         REAL NOT NULL,
    last_refill_at TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (subject, limit_name, window_secs)
) STRICT, WITHOUT ROWID;

-- retention: buckets idle for 30 days
CREATE INDEX token_buckets_idle ON token_buckets (updated_at);

-- Every refused request; the count in the last hour sets the escalating penalty.
CREATE TABLE violations (
    id            INTEGER PRIMARY KEY,
    subject       TEXT NOT NULL,
    limit_name    TEXT NOT NULL,
    occurred_at   TEXT NOT NULL,
    cost          REAL NOT NULL,
    penalty_until TEXT,
    client_info   TEXT NOT NULL DEFAULT '{}'        -- JSON; IP and user agent as keyed hashes
) STRICT;

-- recent violations of a subject (penalty, status)
CREATE INDEX violations_subject ON violations (subject, occurred_at);
-- retention: violations older than 7 days
CREATE INDEX violations_time ON violations (occurred_at);

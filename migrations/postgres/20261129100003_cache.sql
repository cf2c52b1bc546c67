-- The cache's second level. UNLOGGED: not written to the WAL, so not on a
-- replica and emptied after a crash, which a cache may be. `value` is
-- sealed (the key as associated data) after compression.
CREATE UNLOGGED TABLE cache_entries (
    key            text PRIMARY KEY,
    namespace      text NOT NULL,
    user_id        text,
    codec          text NOT NULL CHECK (codec IN ('raw', 'zstd')),
    size           bigint NOT NULL CHECK (size >= 0),   -- the value's length before compression
    stored_size    bigint NOT NULL CHECK (stored_size >= 0),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz,                         -- NULL: no expiry
    last_access_at timestamptz NOT NULL,
    tags           text[],                              -- the entry's tags; NULL: none
    value          bytea NOT NULL                       -- sealed
);

CREATE INDEX cache_entries_expires ON cache_entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX cache_entries_lru ON cache_entries (last_access_at, stored_size);
CREATE INDEX cache_entries_user ON cache_entries (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX cache_entries_namespace ON cache_entries (namespace);

CREATE UNLOGGED TABLE cache_tags (
    tag text NOT NULL,
    key text NOT NULL REFERENCES cache_entries (key) ON DELETE CASCADE,
    PRIMARY KEY (tag, key)
);

CREATE INDEX cache_tags_key ON cache_tags (key);

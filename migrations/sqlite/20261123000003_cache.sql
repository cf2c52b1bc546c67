-- L2 of the two-level cache. `codec` says how `value` is stored ('raw' for tiny
-- values, 'zstd' otherwise); `size` is the value's length before compression,
-- `stored_size` its length in the file (the byte cap counts this one).
-- `value` is the last column so that scans of the other columns never read
-- a blob's overflow pages.
CREATE TABLE cache_entries (
    key            TEXT PRIMARY KEY NOT NULL,
    namespace      TEXT NOT NULL,
    user_id        TEXT,
    codec          TEXT NOT NULL CHECK (codec IN ('raw', 'zstd')),
    size           INTEGER NOT NULL,
    stored_size    INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT,                            -- NULL: no expiry
    last_access_at TEXT NOT NULL,
    tags           TEXT,                            -- the entry's tags, joined by char(31); NULL: none
    value          BLOB NOT NULL
) STRICT;

-- retention: expired rows, in expiry order
CREATE INDEX cache_entries_expires ON cache_entries (expires_at) WHERE expires_at IS NOT NULL;
-- byte cap: least recently used first; covers the byte total too
CREATE INDEX cache_entries_lru ON cache_entries (last_access_at, stored_size);
-- clear a user's entries / a namespace
CREATE INDEX cache_entries_user ON cache_entries (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX cache_entries_namespace ON cache_entries (namespace);

-- (tag, key) pairs for invalidation by tag; a deleted entry takes its tags along.
-- (`cache_entries.tags` repeats them so that a point read needs no second lookup.)
CREATE TABLE cache_tags (
    tag TEXT NOT NULL,
    key TEXT NOT NULL REFERENCES cache_entries (key) ON DELETE CASCADE,
    PRIMARY KEY (tag, key)
) STRICT, WITHOUT ROWID;

CREATE INDEX cache_tags_key ON cache_tags (key);

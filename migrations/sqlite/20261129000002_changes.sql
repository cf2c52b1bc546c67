-- The change feed: what one process committed that another must drop from its
-- memory (a revoked token, a replaced cache value, a reset limit). Written in
-- the same transaction as the change itself; each process reads the records
-- after the last `seq` it applied, skipping its own (`origin`). `seq` is
-- AUTOINCREMENT so that it never goes back, even after retention deleted
-- every row. Retention keeps the newest row, so a process can tell that
-- records it had not read were trimmed (the oldest `seq` is past its own).
CREATE TABLE changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    origin INTEGER NOT NULL,
    at     TEXT NOT NULL,
    facet  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    target BLOB NOT NULL
) STRICT;

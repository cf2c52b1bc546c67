-- Aggregated metric points: one row per (name, labels, interval). `labels` is
-- canonical JSON (sorted keys) so equal label sets compare equal as text.
-- `sketch` is a serialised mergeable quantile sketch: percentiles over any range
-- are the merge of the points in it.
CREATE TABLE metrics (
    name           TEXT NOT NULL,
    labels         TEXT NOT NULL DEFAULT '{}',
    kind           TEXT NOT NULL CHECK (kind IN ('counter', 'gauge', 'timing')),
    interval_start TEXT NOT NULL,
    interval_secs  INTEGER NOT NULL,
    count          INTEGER NOT NULL,
    sum            REAL NOT NULL,
    min            REAL,
    max            REAL,
    last           REAL,                            -- a gauge's last value in the interval
    sketch         BLOB,
    PRIMARY KEY (name, labels, interval_start, interval_secs)
) STRICT, WITHOUT ROWID;

-- range queries across names, retention and downsampling
CREATE INDEX metrics_time ON metrics (interval_start);

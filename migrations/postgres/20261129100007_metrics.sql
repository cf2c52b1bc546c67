-- Metrics: each instance writes its own interval rows (`instance`), and
-- queries merge them (sums, mins, maxes, and the DDSketch of a timing).
CREATE TABLE metrics (
    name           text NOT NULL,
    labels         text NOT NULL DEFAULT '{}',           -- JSON object, keys sorted
    kind           text NOT NULL CHECK (kind IN ('counter', 'gauge', 'timing')),
    interval_start timestamptz NOT NULL,
    interval_secs  bigint NOT NULL CHECK (interval_secs > 0),
    instance       text NOT NULL,
    count          bigint NOT NULL,
    sum            double precision NOT NULL,
    min            double precision,
    max            double precision,
    last           double precision,                     -- a gauge's last value in the interval
    sketch         bytea,
    PRIMARY KEY (name, labels, interval_start, interval_secs, instance)
);

CREATE INDEX metrics_time ON metrics (interval_start);

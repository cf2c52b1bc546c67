-- The change feed: what one instance changed that others may hold in
-- memory. Written in the same transaction as the change, announced with
-- NOTIFY after the commit; an instance whose listener reconnects reads the
-- rows it missed from here. Trimmed by age.
CREATE TABLE changes (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin bigint NOT NULL,                              -- the writing instance
    at     timestamptz NOT NULL,
    facet  text NOT NULL,
    kind   text NOT NULL,
    target bytea NOT NULL
);

CREATE INDEX changes_at ON changes (at);

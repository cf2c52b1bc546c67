-- One JSON document per user, stored as the user's overrides of the
-- application's defaults, with the schema version it was written in.
CREATE TABLE preferences (
    user_id        TEXT PRIMARY KEY NOT NULL,
    document       TEXT NOT NULL CHECK (json_valid(document)),
    schema_version INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
) STRICT;

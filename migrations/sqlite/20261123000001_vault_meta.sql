-- Facts about the file itself: when it was created, when its key was set, the
-- salts and chain anchors the facets keep. Values are text so that an operator
-- reads them as they are in the sqlcipher shell.
CREATE TABLE vault_meta (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;

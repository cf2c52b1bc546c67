-- Nothing reads `sessions_expires`: every query on `expires_at` either looks a
-- session up by token or user first, or reads `sessions_live`, which starts
-- with `expires_at`. It cost a b-tree write on every session insert and on
-- every row the retention sweep deletes.
DROP INDEX IF EXISTS sessions_expires;

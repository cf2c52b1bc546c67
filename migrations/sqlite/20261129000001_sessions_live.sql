-- The live-session count (`Metrics::active_sessions`, on every /metrics scrape)
-- reads this index alone: unrevoked sessions within their absolute lifetime, with
-- what the idle check needs. Revoked and expired rows, kept until the retention
-- sweep, are not read. (`revoked_at`, always NULL here, makes it covering.)
CREATE INDEX sessions_live ON sessions (expires_at, last_seen_at, idle_timeout_secs, revoked_at)
    WHERE revoked_at IS NULL;

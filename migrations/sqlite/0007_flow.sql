-- Flow control: global limits, per-key limits and rates on queues, as in
-- the Postgres store (its migration 0011 says what each column means).
-- `starts` is a JSON array of microseconds since the epoch.
ALTER TABLE tasks ADD COLUMN key TEXT CHECK (key IS NULL OR length(key) BETWEEN 1 AND 128);
CREATE INDEX tasks_queue_claim ON tasks (queue, key, priority, run_at, id)
    WHERE status = 'waiting';

ALTER TABLE queues ADD COLUMN max_running INTEGER CHECK (max_running > 0);
ALTER TABLE queues ADD COLUMN key_limit INTEGER CHECK (key_limit > 0);
ALTER TABLE queues ADD COLUMN rate_count INTEGER CHECK (rate_count > 0);
ALTER TABLE queues ADD COLUMN rate_window_ms INTEGER CHECK (rate_window_ms > 0);
ALTER TABLE queues ADD COLUMN rate_per_key INTEGER NOT NULL DEFAULT 0 CHECK (rate_per_key IN (0, 1));
ALTER TABLE queues ADD COLUMN starts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE queues ADD COLUMN key_cursor TEXT;

CREATE TABLE queue_keys (
    queue  TEXT NOT NULL,
    key    TEXT NOT NULL,
    starts TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (queue, key)
) STRICT;

CREATE TABLE counted_runs (
    task_id INTEGER PRIMARY KEY,
    queue   TEXT NOT NULL,
    key     TEXT
) STRICT;
CREATE INDEX counted_runs_by_queue ON counted_runs (queue, key);

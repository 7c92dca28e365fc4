-- Flow control: global limits, per-key limits and rates on queues. A queue
-- with none of them is claimed as before, by the one claim statement; a
-- queue with any is claimed under a lock on its `queues` row, so every
-- worker counts against the same numbers.

-- A task's key (a tenant, a customer): in a queue with a key limit, at
-- most that many of one key run at once, and claims take keys in turn.
-- (NOT VALID: no row before this one has a key, and checking would hold
-- the table locked for a scan.)
ALTER TABLE tasks ADD COLUMN key text;
ALTER TABLE tasks ADD CONSTRAINT key_named
    CHECK (key IS NULL OR char_length(key) BETWEEN 1 AND 128) NOT VALID;
-- A queue's waiting tasks: finds its keys with one probe per key, each
-- key's next tasks in claim order (those without a key last, as a group of
-- their own), and whether a queue named by `queue pause` exists.
CREATE INDEX tasks_queue_claim ON tasks (queue, key, priority, run_at, id) WHERE is_waiting;

-- `max_running`: at most this many of the queue's tasks run at once, on
-- all workers together. `key_limit`: at most this many per key.
-- `rate_count` per `rate_window_ms`: at most this many starts in any such
-- window (per key when `rate_per_key`); `starts` are the recent starts
-- (microseconds since the epoch) the claim counts. `key_cursor`: the key
-- the last claim ended its turn at.
ALTER TABLE queues
    ADD COLUMN max_running integer CHECK (max_running > 0),
    ADD COLUMN key_limit integer CHECK (key_limit > 0),
    ADD COLUMN rate_count integer CHECK (rate_count > 0),
    ADD COLUMN rate_window_ms bigint CHECK (rate_window_ms > 0),
    ADD COLUMN rate_per_key boolean NOT NULL DEFAULT false,
    ADD COLUMN starts bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN key_cursor text,
    ADD CONSTRAINT rate_whole CHECK ((rate_count IS NULL) = (rate_window_ms IS NULL));

-- A key's own recent starts, for a rate per key.
CREATE TABLE queue_keys (
    queue  text   NOT NULL,
    key    text   NOT NULL,
    starts bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (queue, key)
);

-- The running tasks a limit counts: written by the claim that started them
-- under a limit, removed by the completion that ends their run (in the same
-- transaction as the row's own change, rescue and release included).
CREATE TABLE counted_runs (
    task_id bigint PRIMARY KEY,
    queue   text NOT NULL,
    key     text
);
CREATE INDEX counted_runs_by_queue ON counted_runs (queue, key);

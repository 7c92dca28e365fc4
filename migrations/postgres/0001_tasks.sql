-- The task queue. The status machine is enforced here, not only in code:
--   waiting -> running -> success | error | timeout | cancelled
--   running -> waiting (a retry with attempts left, or a rescued attempt)
-- Finished rows carry finished_at; live rows never do.
CREATE TABLE tasks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text        NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    plugin        text        NOT NULL CHECK (plugin <> ''),
    args          bytea       NOT NULL,
    status        text        NOT NULL DEFAULT 'waiting',
    priority      integer     NOT NULL DEFAULT 0,
    attempt       integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 1,
    timeout_ms    bigint,
    run_at        timestamptz NOT NULL DEFAULT now(),
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    deadline_at   timestamptz,
    finished_at   timestamptz,
    worker_id     text,
    cancel_requested_at timestamptz,
    plugin_digest text,
    result        bytea,
    stdout        bytea,
    stderr        bytea,
    error         text,
    errors        text[]      NOT NULL DEFAULT '{}',

    CONSTRAINT status_known CHECK (
        status IN ('waiting', 'running', 'success', 'error', 'timeout', 'cancelled')),
    CONSTRAINT attempts_in_range CHECK (
        max_attempts >= 1 AND attempt >= 0 AND attempt <= max_attempts),
    CONSTRAINT timeout_positive CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    -- A running row was claimed by a worker for a counted attempt with a deadline.
    CONSTRAINT running_is_claimed CHECK (
        status <> 'running'
        OR (attempt >= 1 AND started_at IS NOT NULL AND deadline_at IS NOT NULL
            AND worker_id IS NOT NULL)),
    -- Exactly the final rows are finished.
    CONSTRAINT finished_iff_final CHECK (
        (status IN ('waiting', 'running')) = (finished_at IS NULL)),
    -- Only success has a result; error and timeout say why.
    CONSTRAINT success_has_result CHECK ((status = 'success') = (result IS NOT NULL)),
    CONSTRAINT failure_has_error CHECK (
        status NOT IN ('error', 'timeout') OR error IS NOT NULL),
    -- success, error and timeout are reached only by running an attempt.
    CONSTRAINT ran_before_ending CHECK (
        status NOT IN ('success', 'error', 'timeout') OR attempt >= 1)
);

-- Serves the claim query exactly: equality on status (partial), then the
-- claim order.
CREATE INDEX tasks_claim ON tasks (priority, run_at, id) WHERE status = 'waiting';
-- Serves the rescuer: running rows by deadline. The redundant second
-- condition keeps the planner from using this index for the completion's
-- `status = 'running'` fence, where it would walk every dead entry a long
-- drain leaves behind instead of probing the primary key.
CREATE INDEX tasks_running_deadline ON tasks (deadline_at)
    WHERE status = 'running' AND deadline_at IS NOT NULL;
-- No index on status alone: every claim and completion changes it, and
-- `list --status` walks the primary key newest first instead.

-- Each task's row is rewritten twice (claim, completion); vacuum often so the
-- claim index does not fill with dead entries on long drains.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- Live workers. The rescuer returns a running row only when its worker has
-- stopped sending heartbeats, so a slow but live worker is never overtaken.
CREATE TABLE workers (
    id           text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

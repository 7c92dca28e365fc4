-- The task queue for the embedded SQLite store: the same table, columns and
-- state machine as migrations/postgres/0001_tasks.sql.
--   waiting -> running -> success | error | timeout | cancelled
--   running -> waiting (a retry with attempts left, or a rescued attempt)
-- Finished rows carry finished_at; live rows never do.
--
-- Differences forced by SQLite, kept to the storage form only:
-- * every time is an INTEGER of microseconds since the Unix epoch (UTC), the
--   precision of a Postgres timestamptz; integers compare and sort correctly;
-- * `errors` is a JSON array of strings (Postgres: text[]);
-- * tables are STRICT, so a value of the wrong type is refused, not coerced.
CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    plugin        TEXT    NOT NULL CHECK (plugin <> ''),
    args          BLOB    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'waiting',
    priority      INTEGER NOT NULL DEFAULT 0,
    attempt       INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 1,
    timeout_ms    INTEGER,
    run_at        INTEGER NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    started_at    INTEGER,
    deadline_at   INTEGER,
    finished_at   INTEGER,
    worker_id     TEXT,
    cancel_requested_at INTEGER,
    plugin_digest TEXT,
    result        BLOB,
    stdout        BLOB,
    stderr        BLOB,
    error         TEXT,
    errors        TEXT    NOT NULL DEFAULT '[]',

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
        status NOT IN ('success', 'error', 'timeout') OR attempt >= 1),
    -- The history of failed attempts is a JSON array of strings.
    CONSTRAINT errors_is_array CHECK (json_valid(errors) AND json_type(errors) = 'array')
) STRICT;

-- Serves the claim query exactly: equality on status (partial), then the
-- claim order.
CREATE INDEX tasks_claim ON tasks (priority, run_at, id) WHERE status = 'waiting';
-- Serves the rescuer: running rows by deadline.
CREATE INDEX tasks_running_deadline ON tasks (deadline_at) WHERE status = 'running';
-- Serves `list` filtered by status, newest first, and `stats` (it covers the
-- count per status).
CREATE INDEX tasks_status_id ON tasks (status, id);

-- Live workers. The rescuer returns a running row only when its worker has
-- stopped sending heartbeats, so a slow but live worker is never overtaken.
CREATE TABLE workers (
    id           TEXT    PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;

//! The Postgres store: production storage, shared by any number of workers
//! on any number of machines. Claims use `FOR UPDATE SKIP LOCKED`, completions
//! are one fenced `UPDATE ... FROM unnest(...)` per batch, and wake-ups travel
//! over LISTEN/NOTIFY.
//!
//! Everything taskbox keeps lives in one schema of its own ([`SchemaName`],
//! `taskbox` by default), its migration history included: every connection
//! has the schema as its whole search path, so no statement can reach a
//! table of the application beside it. `migrate` creates the schema, and
//! moves the tables of a database made before schemas existed (all in
//! `public`) into it.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use super::flow::{self, FlowChange, QUEUES_SET, QueuesSeen, QueuesSet};
use super::pg_flow::{self, PgFlow};
use super::pg_kept::KeptConnection;
use super::pg_leases::LeaseBook;
use super::pg_schema::{self, SchemaName};
use super::{
    ADOPTED_RUN_NOTE, ANALYZE_EVERY, CancelOutcome, ClaimRequest, ClaimedTask, Completion,
    DEFAULT_MAX_ARGS_BYTES, LIVE_WORKER_TTL, ListFilter, LostRun, MAX_TASK_TIMEOUT, NewTask,
    Notification, PluginSchemas, QUEUES, QueueInfo, QueueRow, RECORD_SCHEMAS, RescueRequest,
    SCHEMAS_OF, Scope, Stats, Status, StoreError, StoreResult, TaskRecord, TaskStore, Tidied,
    VACUUM_BUSY_FACTOR, VACUUM_DEAD_FRACTION, VACUUM_DEAD_ROWS, VACUUM_MIN_DEAD_ROWS,
    new_claim_token, refused_timeout_reason,
};

pub use taskbox_client::postgres::WAIT_RECHECK;
/// Connections for everything but claims, completions and heartbeats:
/// migrations, enqueues, reads, the rescuer and the drain check. Two, so a
/// rescue transaction never holds up the drain check.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 2;
/// Connections for claiming (the one claim loop of a worker needs one).
pub const CLAIM_CONNECTIONS: u32 = 1;
/// Connections for writing outcomes (the one completer needs one).
pub const COMPLETION_CONNECTIONS: u32 = 1;
/// The heartbeat's own connection: nothing else uses it, so a heartbeat
/// never waits behind other statements, and once open it is kept.
pub const HEARTBEAT_CONNECTIONS: u32 = 1;
/// The LISTEN connection for wake-ups and cancels.
pub const LISTENER_CONNECTIONS: u32 = 1;
/// Connections one worker process holds at most on Postgres: plan
/// `max_connections` as workers × this (plus other clients). A short-lived
/// command (`enqueue`, `stats`, ...) uses one.
pub const WORKER_CONNECTION_BUDGET: u32 = DEFAULT_MAX_CONNECTIONS
    + CLAIM_CONNECTIONS
    + COMPLETION_CONNECTIONS
    + HEARTBEAT_CONNECTIONS
    + LISTENER_CONNECTIONS;
/// How long a caller waits for a pooled connection before giving up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one direct connection attempt may take when finding out why
/// the database cannot be reached.
pub const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// `args_json` as text: sqlx reads no `jsonb` without its `json` feature,
/// and the text is all the reader needs.
const TASK_COLUMNS: &str = "id, queue, key, plugin, args, args_json::text AS args_json, status, \
     priority, attempt, max_attempts, timeout_ms, run_at, enqueued_at, started_at, finished_at, \
     plugin_digest, result, stdout, stderr, error, errors, worker_id";

/// The claim of queues without a limit or a rate. `$4` is NULL for every
/// queue, else the queues to serve; `$7` likewise for the plugins the
/// worker has loaded; `$8` is the claim's fencing token.
///
/// Paused and limited queues are left out with `(queue || '')`, an
/// expression without statistics: on `queue` itself, where one queue holds
/// nearly every row, the planner took "not that queue" to match nothing and
/// swapped the index walk for a sequential scan and a sort. Limited queues
/// are claimed by [`super::flow::claim_limited`] alone.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        concat!(
            "SELECT id, timeout_ms, key FROM tasks
    WHERE is_waiting AND run_at <= now()
      AND ($4::text[] IS NULL OR queue = ANY($4))
      AND ($7::text[] IS NULL OR plugin = ANY($7))
      AND (queue || '') <> ALL (ARRAY(SELECT name FROM queues WHERE ",
            flow::left_out_queue!(),
            "))
    ORDER BY priority, run_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED"
        ),
        "",
    )
});

/// The claim of queues without a limit or a rate, one index walk per
/// queue, merged in claim order: for a worker serving the queues `$4`, or
/// (`$4` NULL) for every queue with waiting tasks, found one index probe
/// each, while some queue is paused or limited. [`CLAIM`]'s one walk over
/// every queue would read through all the waiting tasks of the queues it
/// leaves before reaching one it takes. Paused and limited queues are left
/// out before their tasks are walked.
static CLAIM_BY_QUEUE: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        &format!(
            "WITH RECURSIVE {served}
    SELECT t.id, t.timeout_ms, t.key FROM served s CROSS JOIN LATERAL (
        SELECT id, timeout_ms, key, priority, run_at FROM tasks
        WHERE is_waiting AND queue = s.queue AND run_at <= now()
          AND ($7::text[] IS NULL OR plugin = ANY($7))
        ORDER BY priority, run_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) t
    ORDER BY t.priority, t.run_at, t.id
    LIMIT $1",
            served = served_queues_named(4, flow::LEFT_OUT),
        ),
        "",
    )
});

/// [`flow::served_queues`] of the names `$n` (NULL: every queue with
/// waiting tasks).
fn served_queues_named(n: u8, skip: &str) -> String {
    flow::served_queues(
        "t.is_waiting",
        &format!("SELECT queue FROM unnest(${n}::text[]) AS named(queue)"),
        &format!("${n}::text[] IS NULL"),
        skip,
    )
}

/// Whether a drain has anything left: a running task, or a waiting one
/// that is due or in backoff, of the queues `$1` (NULL: all) and plugins
/// `$2` (NULL: all), paused queues aside. Every running task is in a lease,
/// and leases are few: their tasks are primary-key probes (as a join, with
/// statistics that counted no running row, the planner scanned the whole
/// table for one). Each queue's waiting tasks are read on their own, so a
/// paused queue's backlog is not read at all.
static HAS_PENDING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH RECURSIVE {served}
SELECT EXISTS (SELECT 1 FROM tasks t
               WHERE t.id = ANY(ARRAY(SELECT unnest(task_ids) FROM leases))
                 AND t.status = 'running')
    OR EXISTS (SELECT 1 FROM served s
               WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.is_waiting AND t.queue = s.queue
                             AND (t.run_at <= now() OR t.attempt > 0)
                             AND ($2::text[] IS NULL OR t.plugin = ANY($2))))",
        served = served_queues_named(1, flow::PAUSED),
    )
});

/// The claim of queues without a limit or a rate: one walk over every
/// queue while it passes no task it leaves, else one walk per queue.
fn plain_claim(scoped: bool, set: QueuesSet) -> &'static str {
    if set.claims_by_queue(scoped) {
        &CLAIM_BY_QUEUE
    } else {
        &CLAIM
    }
}

/// The claim of one limited queue `$9` in claim order, its queue row locked
/// by the caller, recording its runs in `counted_claims` when `$10`.
pub(super) static CLAIM_LIMITED: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        "SELECT id, timeout_ms, key FROM tasks
    WHERE is_waiting AND queue = $9 AND run_at <= now()
      AND ($4::text[] IS NULL OR queue = ANY($4))
      AND ($7::text[] IS NULL OR plugin = ANY($7))
    ORDER BY priority, run_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED",
        COUNT_RUNS,
    )
});

/// The claim of one limited queue `$9` by keys in turn: the keys `$11`
/// (NULL: the tasks without one) each give at most their share `$12` in
/// claim order; the first task of every key is taken, then the second, and
/// so on, up to `$1` in all. Each key's tasks are one index range. The rows
/// come back in no order: the caller sorts them into claim order, and
/// [`flow::claim_limited`] puts them in turns.
///
/// The pick locks its rows, as the other claims do, though the queue's lock
/// already keeps other claims away: a locked row is still waiting when the
/// claim updates it (a cancel may have come since the pick's snapshot), so
/// the runs counted and the lease can be written from the pick, and the
/// update streams its rows out instead of keeping them for a join. Each
/// claim of 300 tasks over 100 keys took an eighth less time.
pub(super) static CLAIM_KEYED: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        "SELECT p.id, p.timeout_ms, p.key FROM unnest($11::text[], $12::bigint[]) WITH ORDINALITY AS k(key, share, turn)
    CROSS JOIN LATERAL (
        SELECT x.*, row_number() OVER () AS rank FROM (
            SELECT id, timeout_ms, key FROM tasks
            WHERE is_waiting AND queue = $9 AND k.key IS NOT NULL AND key = k.key
              AND run_at <= now() AND ($7::text[] IS NULL OR plugin = ANY($7))
            ORDER BY key, priority, run_at, id LIMIT k.share
            FOR UPDATE SKIP LOCKED
        ) x
        UNION ALL
        SELECT x.*, row_number() OVER () AS rank FROM (
            SELECT id, timeout_ms, key FROM tasks
            WHERE is_waiting AND queue = $9 AND k.key IS NULL AND key IS NULL
              AND run_at <= now() AND ($7::text[] IS NULL OR plugin = ANY($7))
            ORDER BY key, priority, run_at, id LIMIT k.share
            FOR UPDATE SKIP LOCKED
        ) x
    ) p
    WHERE ($4::text[] IS NULL OR $9 = ANY($4))
    ORDER BY p.rank, k.turn
    LIMIT $1",
        COUNT_RUNS,
    )
});

/// SQL: the deadline of a run starting now, after the row's own timeout
/// (`timeout_ms`) or the default `$3`. An interval times the milliseconds:
/// as `make_interval(secs => ms / 1000.0)` every claimed row took a numeric
/// division and a conversion to seconds, twice, an eighth of a claim.
macro_rules! deadline {
    () => {
        "now() + coalesce(timeout_ms, $3) * interval '1 millisecond'"
    };
}

/// SQL: whether a picked row (`timeout_ms` its own timeout) can be given a
/// deadline: its timeout is within the bound `$5`.
macro_rules! runnable {
    () => {
        "coalesce(timeout_ms <= $5, true)"
    };
}

/// Records the claimed runs of the limited queue `$9` for its limits to
/// count, as one row of the claim's tasks, their keys and its token `$8`,
/// and removes the rows of the queue that completions emptied (none of
/// their tasks run).
const COUNT_RUNS: &str = concat!(
    ", counted AS (
    INSERT INTO counted_claims (queue, task_ids, keys, token)
    SELECT $9, array_agg(id), array_agg(key), $8 FROM picked WHERE $10 AND ",
    runnable!(),
    "
    HAVING count(*) > 0
), emptied AS (
    DELETE FROM counted_claims WHERE $10 AND queue = $9 AND task_ids = '{}'
)"
);

/// A claim: the rows `picked` selects (`id, timeout_ms, key`, locked, so
/// all still waiting) become `running`, in one lease, and `more` (further
/// CTEs over `picked`) runs with it.
///
/// The update is the statement itself, so its rows stream out instead of
/// being kept for a join that restores claim order and for the lease
/// (cheaper by a tenth to a seventh of the statement, measured on claims
/// of 256 and 512); the lease, and whatever `more` records, is written from
/// `picked`; the caller puts the batch in claim order: `priority, run_at,
/// id`, the order the plain and limited claims walk in, or the keys' turns.
/// The lease is written in the same statement, so no claimed row is ever
/// without one. The update finds its rows by `id = ANY(...)`, always a
/// primary-key probe: as a join, a freshly filled queue without statistics
/// got a hash join over a sequential scan of the whole table (7 ms instead
/// of 3 ms for 256 rows of 20,000).
///
/// A row whose own timeout is over `$5` (the bound, written before the
/// schema held it) could not be given a deadline: it is refused
/// ([`REFUSE`]) instead of failing the whole claim, and not handed out.
fn claim_statement(picked: &str, more: &str) -> String {
    const DEADLINE: &str = deadline!();
    const RUNNABLE: &str = runnable!();
    format!(
        "
WITH picked AS (
    SELECT id, timeout_ms, key FROM ({picked}) p
), refused AS ({REFUSE}
), lease AS (
    INSERT INTO leases (worker_id, task_ids, expires_at)
    SELECT $2, array_agg(id), max({DEADLINE}) FROM picked WHERE {RUNNABLE}
    HAVING count(*) > 0
    RETURNING id
){more}
UPDATE tasks t{START}
WHERE t.id = ANY(ARRAY(SELECT id FROM picked WHERE {RUNNABLE})) AND t.is_waiting
RETURNING t.id, t.key, t.plugin, t.args, t.args_json::text AS args_json, t.attempt,
          t.max_attempts, coalesce(t.timeout_ms, $3) AS timeout_ms, t.claim_token AS token,
          (SELECT id FROM lease) AS lease, t.priority, t.run_at"
    )
}

/// The refusal transition (`waiting -> error`, its attempt counted) of the
/// picked rows whose own timeout is over the bound `$5`, with the reason
/// `$6` and the timeout they had, cleared so that the row satisfies it.
const REFUSE: &str = "
    UPDATE tasks t
    SET status = 'error',
        is_waiting = false,
        attempt = t.attempt + 1,
        started_at = now(),
        deadline_at = NULL,
        worker_id = $2,
        claim_token = $8,
        finished_at = now(),
        timeout_ms = NULL,
        error = $6 || ' (it was ' || t.timeout_ms || ' ms)',
        errors = array_append(t.errors, $6 || ' (it was ' || t.timeout_ms || ' ms)')
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked WHERE timeout_ms > $5)) AND t.is_waiting";

/// A claimed row starts running (`waiting -> running`) for worker `$2`
/// under the claim's token `$8`, until its deadline (`deadline!`).
const START: &str = concat!(
    "
SET status = 'running',
    is_waiting = false,
    attempt = t.attempt + 1,
    started_at = now(),
    deadline_at = ",
    deadline!(),
    ",
    worker_id = $2,
    claim_token = $8"
);

/// Every column a finished attempt changes is outside all indexes, so the
/// update stays heap-only; `is_waiting` and `run_at` change for retries only.
/// `$11` are the leases whose last task this batch finishes. A task that
/// ends here and that someone waits for (`waited`) is told on the schema's
/// ended channel `$12` at commit; tasks nobody waits for cost nothing more
/// (a trigger for this cost the drain 10–20%).
///
/// A run a queue's limit counted is forgotten here, with the row's own
/// change: the ended tasks leave the counted claims holding them (found by
/// the claims' tokens, which the ended tasks carry; a row counted before
/// rows had tokens, by its tasks), each row recomputed
/// from its current version, so two completions of one claim's tasks (a
/// rescue beside a slow worker) each keep the other's change.
/// Freed places are told on the tasks channel `$15` (once per batch), so a
/// worker idle behind the limit claims at once. While no queue counts
/// runs, none is looked for: a probe per row cost a tenth of the statement.
///
/// The batch's columns are unnested side by side in the select list, where
/// they stream row by row; as `unnest(...)` in `FROM` each column was first
/// stored whole in a tuplestore of its own, and completions of 512 took an
/// eighth longer.
///
/// The fence is the claim's token `$13`. A row that waits just as it did
/// before the completion's claim (one attempt fewer, another token) lost
/// that claim in a crash: the run is recorded as its attempt, with the
/// history line `$14`, instead of running the task once more.
const COMPLETE: &str = concat!(
    "
WITH ended AS (
    DELETE FROM leases WHERE id = ANY($11)
), done AS (
UPDATE tasks t
SET status = CASE WHEN c.status = 'waiting' AND t.cancel_requested_at IS NOT NULL
                  THEN 'cancelled' ELSE c.status END,
    is_waiting = (c.status = 'waiting' AND t.cancel_requested_at IS NULL),
    attempt = CASE WHEN c.spend_attempt THEN c.attempt ELSE c.attempt - 1 END,
    claim_token = c.token,
    result = c.result,
    stdout = c.stdout,
    stderr = c.stderr,
    error = c.error,
    errors = CASE WHEN t.status = 'running' THEN
                  CASE WHEN c.error IS NULL THEN t.errors ELSE array_append(t.errors, c.error) END
             ELSE array_cat(t.errors, array_remove(
                  ARRAY[replace($14, '{attempt}', c.attempt::text), c.error], NULL)) END,
    finished_at = CASE WHEN c.status = 'waiting' AND t.cancel_requested_at IS NULL
                       THEN NULL ELSE now() END,
    run_at = CASE WHEN c.retry_in IS NULL THEN t.run_at
                  ELSE now() + c.retry_in * interval '1 microsecond' END,
    plugin_digest = coalesce(c.plugin_digest, t.plugin_digest)
FROM (SELECT unnest($1::bigint[]) AS id, unnest($2::int[]) AS attempt,
             unnest($3::text[]) AS status, unnest($4::bytea[]) AS result,
             unnest($5::bytea[]) AS stdout, unnest($6::bytea[]) AS stderr,
             unnest($7::text[]) AS error, unnest($8::text[]) AS plugin_digest,
             unnest($9::bigint[]) AS retry_in, unnest($10::bool[]) AS spend_attempt,
             unnest($13::bigint[]) AS token) AS c
WHERE t.id = c.id
  AND ((t.status = 'running' AND t.claim_token = c.token)
       OR (t.status = 'waiting' AND c.spend_attempt AND t.attempt = c.attempt - 1
           AND t.claim_token IS DISTINCT FROM c.token))
RETURNING t.id, t.waited, t.status, c.token
), uncounted AS (
    UPDATE counted_claims c
    SET (task_ids, keys) = (
        SELECT coalesce(array_agg(u.id ORDER BY u.place), '{}'),
               coalesce(array_agg(u.key ORDER BY u.place), '{}')
        FROM unnest(c.task_ids, c.keys) WITH ORDINALITY AS u(id, key, place)
        WHERE u.id NOT IN (SELECT id FROM done))
    WHERE (c.token = ANY(ARRAY(SELECT DISTINCT token FROM done))
           OR (c.token IS NULL AND c.task_ids && ARRAY(SELECT id FROM done)))
      AND EXISTS (SELECT 1 FROM queues WHERE ",
    flow::counting_queue!(),
    ")
    RETURNING c.id
)
SELECT count(*),
       count(pg_notify($12, id::text)) FILTER (WHERE waited AND status <> 'waiting'),
       (SELECT count(pg_notify($15, '')) FROM (SELECT 1 FROM uncounted LIMIT 1) freed)
FROM done"
);

/// A batch of completions as [`COMPLETE`] takes them: one array per column.
struct CompletionColumns<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    statuses: Vec<&'a str>,
    results: Vec<Option<&'a [u8]>>,
    stdouts: Vec<&'a [u8]>,
    stderrs: Vec<&'a [u8]>,
    errors: Vec<Option<&'a str>>,
    digests: Vec<Option<&'a str>>,
    retry_ins: Vec<Option<i64>>,
    spends: Vec<bool>,
    tokens: Vec<i64>,
}

impl<'a> CompletionColumns<'a> {
    fn of(completions: &'a [Completion]) -> Self {
        CompletionColumns {
            ids: completions.iter().map(|c| c.id).collect(),
            attempts: completions.iter().map(|c| c.attempt).collect(),
            statuses: completions
                .iter()
                .map(|c| c.transition.status().as_str())
                .collect(),
            results: completions.iter().map(|c| c.transition.result()).collect(),
            stdouts: completions.iter().map(|c| c.stdout.as_slice()).collect(),
            stderrs: completions.iter().map(|c| c.stderr.as_slice()).collect(),
            errors: completions.iter().map(|c| c.transition.error()).collect(),
            digests: completions
                .iter()
                .map(|c| c.plugin_digest.as_deref())
                .collect(),
            retry_ins: completions
                .iter()
                .map(|c| c.transition.retry_micros())
                .collect(),
            spends: completions
                .iter()
                .map(|c| c.transition.spends_attempt())
                .collect(),
            tokens: completions.iter().map(|c| c.token).collect(),
        }
    }

    /// `statement` ([`COMPLETE`], or a statement around it) with these
    /// columns bound, `ends` the leases the batch finishes.
    fn bind<'q, O>(
        &'q self,
        statement: &'q str,
        ends: &'q [i64],
        schema: &'q SchemaName,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        sqlx::query_as(statement)
            .bind(&self.ids)
            .bind(&self.attempts)
            .bind(&self.statuses)
            .bind(&self.results)
            .bind(&self.stdouts)
            .bind(&self.stderrs)
            .bind(&self.errors)
            .bind(&self.digests)
            .bind(&self.retry_ins)
            .bind(&self.spends)
            .bind(ends)
            .bind(schema.ended_channel())
            .bind(&self.tokens)
            .bind(ADOPTED_RUN_NOTE)
            .bind(schema.tasks_channel())
    }
}

/// The history lines `$3` of runs whose claim was lost while their task
/// went on under another claim, or ended: run after [`COMPLETE`] wrote
/// fewer rows than it was given, for the completions `$1` with tokens `$2`.
/// Rows it wrote or fenced out for other reasons (a rescue) hold the token.
const NOTE_LOST_RUNS: &str = "
UPDATE tasks t SET errors = array_append(t.errors, c.note)
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS c(id, token, note)
WHERE t.id = c.id AND t.claim_token IS DISTINCT FROM c.token";

/// Leases past their deadline whose worker is dead, or is the asking one
/// (whose claim reply may have been lost): `$1` grace in seconds, `$2` the
/// heartbeat TTL in seconds, `$3` the asking worker. Locked, so concurrent
/// rescuers split them.
const LAPSED_LEASES: &str = "
SELECT l.id FROM leases l
WHERE l.expires_at < now() - make_interval(secs => $1)
  AND (l.worker_id = $3 OR NOT EXISTS (
      SELECT 1 FROM workers w
      WHERE w.id = l.worker_id
        AND w.heartbeat_at > now() - make_interval(secs => $2)))
FOR UPDATE SKIP LOCKED";

/// The running tasks of the lapsed leases `$4` past their deadline by the
/// grace `$1` (seconds), except those the asking worker `$2` holds (`$3`),
/// each with the token a completion must carry (`$5` for a row claimed
/// before claims had tokens). Locked, so concurrent rescuers split them;
/// the rescuer decides where each goes and writes it as any completion.
const LOST: &str = "
WITH candidates AS (
    SELECT DISTINCT l.worker_id, unnest(l.task_ids) AS id FROM leases l
    WHERE l.id = ANY($4)
), lost AS (
    SELECT t.id FROM tasks t
    JOIN candidates c ON c.id = t.id AND c.worker_id = t.worker_id
    WHERE t.status = 'running'
      AND t.deadline_at < now() - make_interval(secs => $1)
      AND (t.worker_id <> $2 OR NOT (t.id = ANY($3)))
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE tasks t SET claim_token = coalesce(t.claim_token, $5)
FROM lost WHERE t.id = lost.id
RETURNING t.id, t.attempt, t.max_attempts, t.claim_token AS token, t.worker_id,
          t.cancel_requested_at IS NOT NULL AS cancel_requested";

/// Drop those of the leases `$1` none of whose tasks still runs under the
/// lease's worker: their lost tasks were written in an earlier round.
const DROP_SPENT_LEASES: &str = "
DELETE FROM leases l
WHERE l.id = ANY($1)
  AND NOT EXISTS (
      SELECT 1 FROM tasks t
      WHERE t.id = ANY(l.task_ids) AND t.status = 'running' AND t.worker_id = l.worker_id)";

/// Pause (`$2`) or resume queue `$1`, if it holds tasks or has a row.
const SET_PAUSED: &str = "
INSERT INTO queues (name, paused_at)
SELECT $1, CASE WHEN $2 THEN now() END
WHERE EXISTS (SELECT 1 FROM tasks WHERE queue = $1) OR EXISTS (SELECT 1 FROM queues WHERE name = $1)
ON CONFLICT (name) DO UPDATE
SET paused_at = CASE WHEN $2 THEN coalesce(queues.paused_at, now()) END";

/// `$2` is the schema's ended channel, told when someone waits for it.
const CANCEL_WAITING: &str = "
WITH cancelled AS (
UPDATE tasks
SET status = 'cancelled', is_waiting = false, finished_at = now(), cancel_requested_at = now(),
    error = 'cancelled before it ran', errors = array_append(errors, 'cancelled before it ran')
WHERE id = $1 AND status = 'waiting'
RETURNING id, waited
)
SELECT id, (SELECT count(pg_notify($2, id::text)) FROM cancelled WHERE waited)
FROM cancelled";

/// `$2` is the schema's cancel channel.
const CANCEL_RUNNING: &str = "
WITH asked AS (
    UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now())
    WHERE id = $1 AND status = 'running'
    RETURNING id
)
SELECT pg_notify($2, id::text) FROM asked";

/// A claimed row, the lease its claim recorded, and what puts it in claim
/// order (a claim's rows come back in none).
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRow {
    #[sqlx(flatten)]
    pub task: ClaimedTask,
    pub lease: i64,
    pub priority: i32,
    pub run_at: chrono::DateTime<chrono::Utc>,
}

impl ClaimedRow {
    /// The order of the claims that walk tasks by priority and time.
    pub fn claim_order(&self) -> (i32, chrono::DateTime<chrono::Utc>, i64) {
        (self.priority, self.run_at, self.task.id)
    }
}

/// Postgres-backed [`TaskStore`].
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Claims only, committed asynchronously: a durable commit per claim
    /// cost the drain about a third. A crash may make the database forget a
    /// claim whose tasks are running; the claim's token fences their
    /// completions, and [`COMPLETE`] records every such run.
    ///
    /// Always the generic plan, made once per connection: a custom plan of
    /// the claim took 0.5–0.6 ms to make, a tenth of a full claim's time,
    /// and a keyed claim made four each time. The generic plans walk the
    /// same indexes (see the tests).
    ///
    /// Kept checked out between claims (see [`KeptConnection`]).
    claims: KeptConnection,
    /// Completions only: always the generic plan, which drives the join from
    /// the batch into the primary key. Custom plans trust statistics taken
    /// when nothing was running and scan the whole table instead. Kept
    /// checked out between batches, as the claims' is.
    completions: KeptConnection,
    /// Heartbeats only (see [`HEARTBEAT_CONNECTIONS`]).
    heartbeats: PgPool,
    /// The LISTEN connection only: sqlx's listener keeps its pooled
    /// connection, so on the general pool it would take one of its slots.
    listen: PgPool,
    /// For direct connection attempts that find out why a pool failed.
    options: PgConnectOptions,
    /// `host:port` (or socket), for messages.
    target: String,
    /// Args over this many bytes are refused at enqueue.
    max_args_bytes: usize,
    /// Where every table lives; the pools' search path.
    schema: SchemaName,
    /// Each claim's lease and its tasks not written yet.
    leases: Arc<LeaseBook>,
    /// Whether any queue is limited, or paused, as last looked up.
    queues_seen: Arc<QueuesSeen>,
}

impl PgStore {
    /// Connect lazily, in the default schema ([`pg_schema::DEFAULT_SCHEMA`]).
    pub fn connect_lazy(url: &str) -> StoreResult<Self> {
        Self::connect_lazy_in(url, &SchemaName::default())
    }

    /// Connect lazily, every table in `schema`: the pool opens connections
    /// on first use, so a worker can start while the database is still
    /// coming up.
    pub fn connect_lazy_in(url: &str, schema: &SchemaName) -> StoreResult<Self> {
        let options = schema.search_path_of(url.parse()?);
        let sized = |max| {
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(ACQUIRE_TIMEOUT)
        };
        let pool = sized(DEFAULT_MAX_CONNECTIONS).connect_lazy_with(options.clone());
        // The hot pools skip sqlx's ping before every acquire, a round trip
        // per statement: a dead connection fails the statement itself, which
        // the producer and the completer retry.
        let claims = sized(CLAIM_CONNECTIONS)
            .test_before_acquire(false)
            .connect_lazy_with(options.clone().options([
                ("synchronous_commit", "off"),
                ("plan_cache_mode", "force_generic_plan"),
            ]));
        let completions = sized(COMPLETION_CONNECTIONS)
            .test_before_acquire(false)
            .connect_lazy_with(
                options
                    .clone()
                    .options([("plan_cache_mode", "force_generic_plan")]),
            );
        // Connections opened once and kept, so they never wait to reconnect.
        let kept = |max| sized(max).idle_timeout(None).max_lifetime(None);
        let heartbeats = kept(HEARTBEAT_CONNECTIONS).connect_lazy_with(options.clone());
        let listen = kept(LISTENER_CONNECTIONS).connect_lazy_with(options.clone());
        Ok(PgStore {
            pool,
            claims: KeptConnection::kept(claims),
            completions: KeptConnection::kept(completions),
            heartbeats,
            listen,
            target: target(&options),
            options,
            max_args_bytes: DEFAULT_MAX_ARGS_BYTES,
            schema: schema.clone(),
            leases: Arc::default(),
            queues_seen: Arc::default(),
        })
    }

    /// A store with `pool`'s database and settings, in the default schema
    /// (every statement durable).
    pub fn from_pool(pool: PgPool) -> Self {
        Self::from_pool_in(pool, &SchemaName::default())
    }

    /// A store with `pool`'s database and settings, every table in
    /// `schema`: its connections are its own, each with the schema as its
    /// search path.
    pub fn from_pool_in(pool: PgPool, schema: &SchemaName) -> Self {
        let options = schema.search_path_of((*pool.connect_options()).clone());
        let own = pool.options().clone().connect_lazy_with(options);
        Self::on_pool(own, schema)
    }

    /// A store on `pool` as it is, for callers that set their connections'
    /// search path themselves: it must find `schema`'s tables. Migrations
    /// still run with `schema` alone as the search path.
    pub fn on_pool(pool: PgPool, schema: &SchemaName) -> Self {
        let options = (*pool.connect_options()).clone();
        PgStore {
            claims: KeptConnection::shared(pool.clone()),
            completions: KeptConnection::shared(pool.clone()),
            heartbeats: pool.clone(),
            listen: pool.clone(),
            target: target(&options),
            options,
            pool,
            max_args_bytes: DEFAULT_MAX_ARGS_BYTES,
            schema: schema.clone(),
            leases: Arc::default(),
            queues_seen: Arc::default(),
        }
    }

    /// The schema every table of this store lives in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Create the schema (moving a database made before schemas into it)
    /// and apply the migrations, on `conn`.
    async fn migrate_on(&self, conn: &mut sqlx::PgConnection) -> StoreResult<()> {
        // The schema alone, whatever the connection was given: the history
        // and every object the migrations create land in it, and functions
        // keep it (`SET search_path FROM CURRENT`).
        sqlx::query(&format!("SET search_path TO {}", self.schema.quoted()))
            .execute(&mut *conn)
            .await?;
        pg_schema::prepare(conn, &self.schema, &MIGRATOR).await?;
        MIGRATOR.run_direct(conn).await?;
        Ok(())
    }

    /// Where this store connects: `host:port`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Run `work`, turning a failure to get a connection into a
    /// [`StoreError::Connect`] that names this store's `host:port` and the
    /// real cause, instead of sqlx's "pool timed out".
    async fn explain<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match work.await {
            Err(StoreError::Database(sqlx::Error::PoolTimedOut)) => Err(self
                .probe()
                .await
                .err()
                .unwrap_or_else(|| StoreError::Connect {
                    target: self.target.clone(),
                    reason: format!(
                        "every connection of this process stayed busy for {}",
                        humantime::format_duration(ACQUIRE_TIMEOUT)
                    ),
                    transient: true,
                })),
            Err(StoreError::Database(err)) => {
                Err(connect_error(&self.target, &err).unwrap_or(StoreError::Database(err)))
            }
            other => other,
        }
    }

    /// One direct connection, closed at once: `Ok` when the database
    /// answers, else why not.
    async fn probe(&self) -> StoreResult<()> {
        use sqlx::Connection;
        match tokio::time::timeout(
            CONNECT_PROBE_TIMEOUT,
            sqlx::PgConnection::connect_with(&self.options),
        )
        .await
        {
            Err(_) => Err(StoreError::Connect {
                target: self.target.clone(),
                reason: format!(
                    "timed out after {} (is the host reachable?)",
                    humantime::format_duration(CONNECT_PROBE_TIMEOUT)
                ),
                transient: true,
            }),
            Ok(Err(err)) => Err(
                connect_error(&self.target, &err).unwrap_or(StoreError::Connect {
                    target: self.target.clone(),
                    reason: err.to_string(),
                    transient: true,
                }),
            ),
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether any queue is limited, or paused (looked up at most once per
    /// [`flow::FLOW_RECHECK`]). Only the claim's plan depends on it: each
    /// claim statement leaves paused and limited queues out by itself.
    async fn queues_set(&self, conn: &mut PgConnection) -> StoreResult<QueuesSet> {
        if let Some(set) = self.queues_seen.fresh() {
            return Ok(set);
        }
        let set: QueuesSet = sqlx::query_as(QUEUES_SET).fetch_one(conn).await?;
        self.queues_seen.note(set);
        Ok(set)
    }

    /// Claim from the limited queues in scope, in one transaction that
    /// holds their rows; the leases are noted once it commits.
    async fn claim_limited(
        &self,
        conn: &mut PgConnection,
        request: &ClaimRequest<'_>,
    ) -> StoreResult<Vec<ClaimedTask>> {
        let mut tx = conn.begin().await?;
        let mut flow = PgFlow {
            conn: &mut tx,
            token: new_claim_token(),
            leases: Vec::new(),
        };
        let claimed = flow::claim_limited(&mut flow, request, &self.queues_seen.keys).await?;
        let leases = std::mem::take(&mut flow.leases);
        tx.commit().await?;
        for (lease, ids) in leases {
            self.leases.opened(lease, &ids);
        }
        Ok(claimed)
    }
}

fn target(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// A connection failure in plain words, or `None` when `err` is not one.
fn connect_error(target: &str, err: &sqlx::Error) -> Option<StoreError> {
    let (reason, transient) = match err {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => (
                "connection refused (is Postgres running and listening there?)".to_owned(),
                true,
            ),
            std::io::ErrorKind::TimedOut => ("timed out".to_owned(), true),
            _ => (io.to_string(), true),
        },
        sqlx::Error::Tls(tls) => (format!("TLS failed: {tls}"), false),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("53300") => (
                "too many clients: raise max_connections or run fewer workers".to_owned(),
                true,
            ),
            Some("57P03") => ("the database is starting up".to_owned(), true),
            Some("28P01" | "28000") => (format!("authentication failed ({})", db.message()), false),
            Some("3D000") => (format!("unknown database ({})", db.message()), false),
            _ => return None,
        },
        _ => return None,
    };
    Some(StoreError::Connect {
        target: target.to_owned(),
        reason,
        transient,
    })
}

/// Vacuum the tables of `schema` past the dead-row threshold (the live
/// rows of a table with fewer than [`VACUUM_DEAD_ROWS`], but at least
/// [`VACUUM_MIN_DEAD_ROWS`]; raised by [`VACUUM_BUSY_FACTOR`] for a `busy`
/// worker), and analyze those whose statistics are due ([`ANALYZE_EVERY`]).
///
/// VACUUM takes a lock that claims, completions and enqueues never wait
/// for; it cannot run in a transaction, so each is a statement of its own.
async fn vacuum_where_dead(
    conn: &mut sqlx::PgConnection,
    schema: &SchemaName,
    busy: bool,
) -> StoreResult<Tidied> {
    let autovacuum_off: bool = sqlx::query_scalar("SELECT current_setting('autovacuum') = 'off'")
        .fetch_one(&mut *conn)
        .await?;
    let due: Vec<(String, i64, bool, bool)> = sqlx::query_as(
        "SELECT relname::text, n_dead_tup, dead, stale FROM (
             SELECT relname, n_dead_tup,
                    n_dead_tup >= $5 * (least($2, greatest($6, n_live_tup)) + $3 * n_live_tup)
                    AS dead,
                    n_mod_since_analyze >= $2 + $3 * n_live_tup
                    AND coalesce(greatest(last_analyze, last_autoanalyze)
                                 < now() - make_interval(secs => $4), true) AS stale
             FROM pg_stat_user_tables WHERE schemaname = $1) t
         WHERE dead OR stale
         ORDER BY n_dead_tup DESC",
    )
    .bind(schema.as_str())
    .bind(VACUUM_DEAD_ROWS)
    .bind(VACUUM_DEAD_FRACTION)
    .bind(ANALYZE_EVERY.as_secs_f64())
    .bind(if busy { VACUUM_BUSY_FACTOR } else { 1 })
    .bind(VACUUM_MIN_DEAD_ROWS)
    .fetch_all(&mut *conn)
    .await?;
    let mut tidied = Tidied {
        autovacuum_off,
        ..Tidied::default()
    };
    for (table, dead_rows, dead, stale) in due {
        let name = format!("{}.\"{}\"", schema.quoted(), table.replace('"', "\"\""));
        let command = match (dead, stale) {
            (true, true) => "VACUUM (ANALYZE)",
            (true, false) => "VACUUM",
            _ => "ANALYZE",
        };
        sqlx::query(&format!("{command} {name}"))
            .execute(&mut *conn)
            .await?;
        if stale {
            tidied.analyzed.push(table.clone());
        }
        if dead {
            tidied.vacuumed.push((table, dead_rows));
        }
    }
    Ok(tidied)
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl TaskStore for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.explain(async {
            let mut conn = self.pool.acquire().await?;
            match self.migrate_on(&mut conn).await {
                Ok(()) => {
                    // Back to the search path the connection was opened with.
                    sqlx::query("RESET search_path").execute(&mut *conn).await?;
                    Ok(())
                }
                Err(err) => {
                    // Its search path may be the one set above: not reused.
                    conn.close_on_drop();
                    Err(err)
                }
            }
        })
        .await
    }

    fn with_max_args_bytes(mut self, limit: usize) -> Self {
        self.max_args_bytes = limit;
        self
    }

    async fn enqueue(&self, tasks: &[NewTask]) -> StoreResult<Vec<i64>> {
        self.explain(async {
            taskbox_client::task::check(tasks, self.max_args_bytes, Utc::now())?;
            let ids = taskbox_client::postgres::insert(&self.pool, &self.schema, tasks).await?;
            // A key new to its queue gets its turn at this process's next claim.
            self.queues_seen.keys.forget_all();
            Ok(ids)
        })
        .await
    }

    async fn claim(&self, request: &ClaimRequest<'_>) -> StoreResult<Vec<ClaimedTask>> {
        self.explain(async {
            let mut conn = self.claims.acquire().await?;
            let set = self.queues_set(&mut conn).await?;
            let mut claimed = if set.limited {
                self.claim_limited(&mut conn, request).await?
            } else {
                Vec::new()
            };
            let limit = request.limit.saturating_sub(claimed.len());
            if limit == 0 {
                conn.keep();
                return Ok(claimed);
            }
            let scope = &request.scope;
            let queues = (!scope.queues.is_empty()).then_some(scope.queues);
            let statement = plain_claim(!scope.queues.is_empty(), set);
            let query = sqlx::query_as::<_, ClaimedRow>(statement)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(request.worker_id)
                .bind(millis(request.default_timeout.min(MAX_TASK_TIMEOUT)))
                .bind(queues)
                .bind(millis(MAX_TASK_TIMEOUT))
                .bind(refused_timeout_reason())
                .bind(scope.plugins)
                .bind(new_claim_token());
            let mut rows = query.fetch_all(&mut *conn).await?;
            conn.keep();
            rows.sort_unstable_by_key(ClaimedRow::claim_order);
            // One claim, one lease: every row of the batch carries it.
            if let Some(first) = rows.first() {
                let ids: Vec<i64> = rows.iter().map(|row| row.task.id).collect();
                self.leases.opened(first.lease, &ids);
            }
            claimed.extend(rows.into_iter().map(|row| row.task));
            Ok(claimed)
        })
        .await
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<u64> {
        self.explain(async {
            let columns = CompletionColumns::of(completions);
            let mut conn = self.completions.acquire().await?;
            let taken = self.leases.take(columns.ids.iter().copied());
            let written = columns
                .bind(COMPLETE, &taken.ends, &self.schema)
                .fetch_one(&mut *conn)
                .await;
            let (written, _told, _freed): (i64, i64, i64) = match written {
                Ok(counts) => counts,
                Err(err) => {
                    self.leases.restore(taken);
                    return Err(err.into());
                }
            };
            if (written as usize) < completions.len() {
                let notes: Vec<String> =
                    completions.iter().map(Completion::lost_run_note).collect();
                sqlx::query(NOTE_LOST_RUNS)
                    .bind(columns.ids)
                    .bind(columns.tokens)
                    .bind(notes)
                    .execute(&mut *conn)
                    .await?;
            }
            conn.keep();
            Ok(written as u64)
        })
        .await
    }

    async fn get(&self, id: i64) -> StoreResult<Option<TaskRecord>> {
        self.explain(async {
            let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
            Ok(sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<TaskRecord>> {
        self.explain(async {
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR plugin = $2)
             ORDER BY id DESC LIMIT $3"
            );
            Ok(sqlx::query_as(&sql)
                .bind(filter.status.map(Status::as_str))
                .bind(filter.plugin.as_deref())
                .bind(filter.limit)
                .fetch_all(&self.pool)
                .await?)
        })
        .await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.explain(async {
            let rows: Vec<(Status, i64)> =
                sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY status")
                    .fetch_all(&self.pool)
                    .await?;
            let mut stats = Stats::default();
            for (status, count) in rows {
                stats.set(status, count);
            }
            stats.unserved = sqlx::query_scalar(
                "SELECT DISTINCT plugin FROM tasks t
                 WHERE is_waiting AND NOT EXISTS (
                     SELECT 1 FROM workers w
                     WHERE w.heartbeat_at > now() - make_interval(secs => $1)
                       AND t.plugin = ANY(w.plugins))
                 ORDER BY plugin",
            )
            .bind(LIVE_WORKER_TTL.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
            Ok(stats)
        })
        .await
    }

    async fn has_pending(&self, scope: &Scope<'_>) -> StoreResult<bool> {
        self.explain(async {
            Ok(sqlx::query_scalar(&HAS_PENDING)
                .bind((!scope.queues.is_empty()).then_some(scope.queues))
                .bind(scope.plugins)
                .fetch_one(&self.pool)
                .await?)
        })
        .await
    }

    async fn warm_up(&self) -> StoreResult<()> {
        // A claim of nothing and a completion of nothing: each connects its
        // pool and leaves the statement prepared and the backend's caches
        // filled, so the first real batch pays for neither.
        let nothing = ClaimRequest {
            worker_id: "",
            limit: 0,
            scope: Scope::default(),
            default_timeout: Duration::ZERO,
        };
        let (claimed, completed) = tokio::join!(self.claim(&nothing), self.complete(&[]));
        claimed?;
        completed?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.probe().await
    }

    async fn wait_until_ended(&self, id: i64) -> StoreResult<Option<TaskRecord>> {
        let ended = self
            .explain(async {
                Ok(
                    taskbox_client::postgres::wait_until_ended(&self.pool, &self.schema, id)
                        .await?,
                )
            })
            .await?;
        match ended {
            Some(_) => self.get(id).await,
            None => Ok(None),
        }
    }

    async fn record_schemas(&self, schemas: &PluginSchemas) -> StoreResult<()> {
        self.explain(async {
            sqlx::query(RECORD_SCHEMAS)
                .bind(&schemas.digest)
                .bind(&schemas.args)
                .bind(&schemas.result)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn schemas(&self, digest: &str) -> StoreResult<Option<PluginSchemas>> {
        self.explain(async {
            let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(SCHEMAS_OF)
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|(args, result)| PluginSchemas {
                digest: digest.to_owned(),
                args,
                result,
            }))
        })
        .await
    }

    async fn heartbeat(&self, worker_id: &str, plugins: &[String]) -> StoreResult<()> {
        self.explain(async {
            sqlx::query(
                "INSERT INTO workers (id, plugins) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), plugins = excluded.plugins",
            )
            .bind(worker_id)
            .bind(plugins)
            .execute(&self.heartbeats)
            .await?;
            Ok(())
        })
        .await
    }

    async fn deregister(&self, worker_id: &str) -> StoreResult<()> {
        self.explain(async {
            sqlx::query("DELETE FROM workers WHERE id = $1")
                .bind(worker_id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn tidy(&self, busy: bool) -> StoreResult<Tidied> {
        let mut conn = self.pool.acquire().await?;
        let lock = format!("{}.vacuum", self.schema.as_str());
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&lock)
            .fetch_one(&mut *conn)
            .await?;
        if !mine {
            return Ok(Tidied::default());
        }
        let tidied = vacuum_where_dead(&mut conn, &self.schema, busy).await;
        // Unlocked even when the vacuum failed; a lost connection drops the
        // lock with it.
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&lock)
            .execute(&mut *conn)
            .await?;
        tidied
    }

    async fn lost(&self, request: &RescueRequest<'_>) -> StoreResult<Vec<LostRun>> {
        self.explain(async {
            let grace = request.grace.as_secs_f64();
            let mut tx = self.pool.begin().await?;
            let lapsed: Vec<i64> = sqlx::query_scalar(LAPSED_LEASES)
                .bind(grace)
                .bind(request.worker_ttl.as_secs_f64())
                .bind(request.worker_id)
                .fetch_all(&mut *tx)
                .await?;
            if lapsed.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query(DROP_SPENT_LEASES)
                .bind(&lapsed)
                .execute(&mut *tx)
                .await?;
            let lost = sqlx::query_as(LOST)
                .bind(grace)
                .bind(request.worker_id)
                .bind(request.in_flight)
                .bind(&lapsed)
                .bind(new_claim_token())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(lost)
        })
        .await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<bool> {
        self.explain(async {
            let found = sqlx::query(SET_PAUSED)
                .bind(queue)
                .bind(paused)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0;
            self.queues_seen.forget();
            if found && !paused {
                // Idle workers claim the queue's tasks at once.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(self.schema.tasks_channel())
                    .execute(&self.pool)
                    .await?;
            }
            Ok(found)
        })
        .await
    }

    async fn set_flow(&self, queue: &str, change: &FlowChange) -> StoreResult<()> {
        self.explain(async {
            let mut tx = self.pool.begin().await?;
            pg_flow::set_flow(&mut tx, queue, change).await?;
            tx.commit().await?;
            self.queues_seen.forget();
            // Claims may take more now: idle workers look at once.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(self.schema.tasks_channel())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn queues(&self) -> StoreResult<Vec<QueueInfo>> {
        self.explain(async {
            let rows: Vec<QueueRow> = sqlx::query_as(&format!(
                "SELECT name, waiting::bigint, running::bigint, paused = 1 AS paused,
                        max_running::int4, key_limit::int4, rate_count::int4,
                        rate_window_ms::int8, rate_per_key = 1 AS rate_per_key
                 FROM ({QUEUES}) counted"
            ))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(QueueInfo::from).collect())
        })
        .await
    }

    async fn cancel(&self, id: i64) -> StoreResult<CancelOutcome> {
        self.explain(async {
            // A task may be claimed or retried between the statements; try again
            // until one of them sees it.
            loop {
                let waiting: Option<(i64, i64)> = sqlx::query_as(CANCEL_WAITING)
                    .bind(id)
                    .bind(self.schema.ended_channel())
                    .fetch_optional(&self.pool)
                    .await?;
                if waiting.is_some() {
                    return Ok(CancelOutcome::Cancelled);
                }
                let running = sqlx::query(CANCEL_RUNNING)
                    .bind(id)
                    .bind(self.schema.cancel_channel())
                    .fetch_optional(&self.pool)
                    .await?;
                if running.is_some() {
                    return Ok(CancelOutcome::Interrupting);
                }
                let status: Option<Status> =
                    sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                match status {
                    None => return Ok(CancelOutcome::NotFound),
                    Some(Status::Waiting | Status::Running) => continue,
                    Some(status) => return Ok(CancelOutcome::AlreadyFinished(status)),
                }
            }
        })
        .await
    }

    async fn subscribe(&self) -> StoreResult<mpsc::Receiver<Notification>> {
        self.explain(async {
            let mut listener = PgListener::connect_with(&self.listen).await?;
            let cancel_channel = self.schema.cancel_channel();
            listener
                .listen_all([self.schema.tasks_channel().as_str(), &cancel_channel])
                .await?;
            let (sender, receiver) = mpsc::channel(64);
            tokio::spawn(async move {
                let mut connected = true;
                loop {
                    // `try_recv` reconnects by itself; `None` marks a lost
                    // connection, after which notifications may have been missed.
                    let received = tokio::select! {
                        received = listener.try_recv() => received,
                        // The subscriber is gone: close the connection with it.
                        _ = sender.closed() => break,
                    };
                    let event = match received {
                        Ok(Some(notification)) => {
                            if !connected {
                                tracing::info!("listening for notifications again");
                                connected = true;
                            }
                            if notification.channel() == cancel_channel {
                                match notification.payload().parse() {
                                    Ok(id) => Notification::Cancel(id),
                                    Err(_) => continue,
                                }
                            } else {
                                Notification::TasksAvailable
                            }
                        }
                        Ok(None) => {
                            if connected {
                                tracing::warn!("lost the notification connection; reconnecting");
                                connected = false;
                            }
                            Notification::TasksAvailable
                        }
                        Err(err) => {
                            if connected {
                                tracing::warn!("notification connection down: {err}; retrying");
                                connected = false;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                                _ = sender.closed() => break,
                            }
                        }
                    };
                    if sender.send(event).await.is_err() {
                        break;
                    }
                }
            });
            Ok(receiver)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node of a plan (`EXPLAIN (FORMAT JSON)`'s `Plan`), itself
    /// first, then its children's, depth first.
    pub(super) fn plan_nodes(node: &serde_json::Value) -> Vec<&serde_json::Value> {
        let children = node["Plans"].as_array().into_iter().flatten();
        std::iter::once(node)
            .chain(children.flat_map(plan_nodes))
            .collect()
    }

    /// Issue 12: filtering the claim by the worker's plugins keeps it on
    /// the claim index (`tasks_claim`, priority then run_at then id), with
    /// the plugins a filter on the rows it walks, not a scan of the table.
    #[sqlx::test(migrations = false)]
    async fn the_claim_walks_its_index_with_the_plugin_filter(pool: PgPool) {
        let store = analyzed_store_of(
            &pool,
            (0..20_000).map(|n| NewTask::new(["add", "puts", "fib"][n % 3], vec![0])),
        )
        .await;
        let plugins = vec!["add".to_owned(), "puts".to_owned()];
        let mut conn = store.claims.acquire().await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", *CLAIM))
            .bind(512i64)
            .bind("w")
            .bind(1000i64)
            .bind(None::<Vec<String>>)
            .bind(millis(MAX_TASK_TIMEOUT))
            .bind("refused")
            .bind(Some(&plugins))
            .bind(0i64)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        assert_walks(&plan.join("\n"), "Index Scan using tasks_claim");

        // The worker's own plan: the claims pool's generic one.
        let plan = generic_plan(
            &store,
            &CLAIM,
            "512, 'w', 1000, NULL, 604800000, 'refused', ARRAY['add', 'puts'], 0",
        )
        .await;
        assert_walks(&plan, "Index Scan using tasks_claim");
    }

    /// A store with `tasks` enqueued and the table analyzed.
    pub(super) async fn analyzed_store_of(
        pool: &PgPool,
        tasks: impl Iterator<Item = NewTask>,
    ) -> PgStore {
        let store = PgStore::from_pool(pool.clone());
        store.migrate().await.unwrap();
        store.enqueue(&tasks.collect::<Vec<_>>()).await.unwrap();
        sqlx::query("ANALYZE taskbox.tasks")
            .execute(pool)
            .await
            .unwrap();
        store
    }

    /// A store with `count` `add` tasks over `keys` keys, analyzed.
    pub(super) async fn keyed_store_of(pool: &PgPool, count: usize, keys: usize) -> PgStore {
        let tasks = (0..count).map(|n| NewTask::new("add", vec![0]).key(format!("k{}", n % keys)));
        analyzed_store_of(pool, tasks).await
    }

    /// `plan` walks `index` and scans no table.
    fn assert_walks(plan: &str, index: &str) {
        assert!(plan.contains(index), "{plan}");
        assert!(!plan.contains("Seq Scan on tasks"), "{plan}");
    }

    /// The plan a claim connection makes of `statement` (`args`: its
    /// arguments as SQL literals): the generic one, made once and kept.
    async fn generic_plan(store: &PgStore, statement: &str, args: &str) -> String {
        explained_generic_plan(store, "", statement, args).await
    }

    /// [`generic_plan`] as `EXPLAIN` with `options` (say `(VERBOSE)`) shows it.
    async fn explained_generic_plan(
        store: &PgStore,
        options: &str,
        statement: &str,
        args: &str,
    ) -> String {
        let mut conn = store.claims.acquire().await.unwrap();
        sqlx::raw_sql(&format!("PREPARE planned AS {statement}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN {options} EXECUTE planned({args})"))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        sqlx::raw_sql("DEALLOCATE planned")
            .execute(&mut *conn)
            .await
            .unwrap();
        plan.join("\n")
    }

    /// A claim gives its runs their deadlines without numeric arithmetic,
    /// which cost a claim of 512 an eighth of its time: plain, limited and
    /// keyed claims alike.
    #[sqlx::test(migrations = false)]
    async fn a_claim_computes_deadlines_without_numeric_arithmetic(pool: PgPool) {
        for plan in claim_plans(&pool, "(VERBOSE)").await {
            assert!(plan.contains("now() +"), "no deadline in {plan}");
            assert!(!plan.contains("numeric"), "{plan}");
        }
    }

    /// The generic plans (as `EXPLAIN` with `options` shows them) of the
    /// plain, limited and keyed claims of a queue of 1,000 tasks over 10
    /// keys.
    async fn claim_plans(pool: &PgPool, options: &str) -> Vec<String> {
        let store = keyed_store_of(pool, 1_000, 10).await;
        let plain = "512, 'w', 1000, NULL, 604800000, 'refused', NULL, 0";
        let limited = format!("{plain}, 'default', true");
        let keyed = format!("{limited}, ARRAY['k1', 'k2'], ARRAY[10, 10]::bigint[]");
        let mut plans = Vec::new();
        for (statement, args) in [
            (&*CLAIM, plain),
            (&*CLAIM_LIMITED, limited.as_str()),
            (&*CLAIM_KEYED, keyed.as_str()),
        ] {
            plans.push(explained_generic_plan(&store, options, statement, args).await);
        }
        plans
    }

    /// Every claim is the update itself, its rows streaming out, with the
    /// limited and keyed claims' picks locking their rows like the plain
    /// one's: the limited claims kept their updated rows for a join back
    /// to the pick and a sort, an eighth of a keyed claim of 300.
    #[sqlx::test(migrations = false)]
    async fn every_claim_streams_the_rows_it_updates(pool: PgPool) {
        for plan in claim_plans(&pool, "").await {
            assert!(plan.starts_with("Update on tasks"), "{plan}");
            assert!(plan.contains("LockRows"), "the pick locks nothing: {plan}");
        }
    }

    /// A keyed claim's generic plans walk each key's own range of the
    /// per-queue index, for the keys and for their tasks.
    #[sqlx::test(migrations = false)]
    async fn a_keyed_claim_walks_each_keys_index_range(pool: PgPool) {
        let store = keyed_store_of(&pool, 20_000, 100).await;
        let plan = generic_plan(
            &store,
            &CLAIM_KEYED,
            "300, 'w', 1000, NULL, 604800000, 'refused', NULL, 0, 'default', true, \
             ARRAY['k1', 'k2'], ARRAY[10, 10]::bigint[]",
        )
        .await;
        assert_walks(&plan, "using tasks_queue_claim on tasks");
        let plan = generic_plan(&store, &pg_flow::WAITING_KEYS, "'default', NULL, NULL, 64").await;
        assert_walks(&plan, "using tasks_queue_claim on tasks");
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;
    use crate::store::NewTask;

    /// Rows of `tasks` a plan (`EXPLAIN (ANALYZE, FORMAT JSON)`) read: each
    /// node's rows out plus those its filter removed, over all its loops.
    fn rows_read(plan: &serde_json::Value) -> f64 {
        super::tests::plan_nodes(plan)
            .into_iter()
            .filter(|node| node["Relation Name"] == "tasks")
            .map(|node| {
                let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
                (node["Actual Rows"].as_f64().unwrap_or(0.0)
                    + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0))
                    * loops
            })
            .sum()
    }

    /// The plain claim `store` would make of 10 tasks of `queues` (`None`:
    /// every queue), run and rolled back: it must claim 10 and read fewer
    /// than 1,000 rows of `tasks`.
    async fn claims_ten_reading_little(
        store: &PgStore,
        pool: &PgPool,
        queues: Option<Vec<String>>,
        case: &str,
    ) {
        let mut conn = store.claims.acquire().await.unwrap();
        let set = store.queues_set(&mut conn).await.unwrap();
        drop(conn);
        let statement = plain_claim(queues.is_some(), set);
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL search_path = taskbox")
            .execute(&mut *tx)
            .await
            .unwrap();
        let plan: serde_json::Value =
            sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {statement}"))
                .bind(10i64)
                .bind("w")
                .bind(1000i64)
                .bind(queues)
                .bind(millis(MAX_TASK_TIMEOUT))
                .bind("refused")
                .bind(None::<Vec<String>>)
                .bind(0i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        let claimed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'running'")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.rollback().await.unwrap();
        let read = rows_read(&plan[0]["Plan"]);
        assert_eq!(claimed, 10, "{case}");
        assert!(read < 1_000.0, "a claim {case} read {read} rows");
    }

    /// A store with 20,000 tasks waiting in queue `bulk`, then `wanted` in
    /// `default`, analyzed.
    async fn with_backlog(pool: &PgPool, wanted: usize) -> PgStore {
        let backlog = (0..20_000).map(|_| NewTask::new("add", vec![0]).queue("bulk"));
        let wanted = (0..wanted).map(|_| NewTask::new("add", vec![0]));
        super::tests::analyzed_store_of(pool, backlog.chain(wanted)).await
    }

    /// A queue's backlog that a claim does not take (a paused queue, or one
    /// outside the worker's `--queue`s) lies ahead of the other queues'
    /// tasks in claim order; the claim must not read its way past it.
    #[sqlx::test(migrations = false)]
    async fn a_claim_reads_past_no_backlog_it_does_not_take(pool: PgPool) {
        let store = with_backlog(&pool, 10).await;

        let scoped = Some(vec!["default".to_owned()]);
        claims_ten_reading_little(&store, &pool, scoped, "of --queue default").await;
        assert!(store.set_paused("bulk", true).await.unwrap());
        claims_ten_reading_little(&store, &pool, None, "beside a paused backlog").await;
        assert!(store.set_paused("bulk", false).await.unwrap());
        store
            .set_flow("bulk", &FlowChange::Limit(Some(5)))
            .await
            .unwrap();
        claims_ten_reading_little(&store, &pool, None, "beside a limited backlog").await;
    }

    /// A store whose queue holds twice `limit` tasks under a limit of
    /// `limit`, the claim that took `limit` of them (asking for all), and
    /// the successes that end them.
    async fn limited_claim(
        pool: &PgPool,
        limit: usize,
    ) -> (PgStore, ClaimRequest<'static>, Vec<Completion>) {
        let store = super::tests::analyzed_store_of(
            pool,
            (0..2 * limit).map(|_| NewTask::new("add", vec![0])),
        )
        .await;
        store
            .set_flow("default", &FlowChange::Limit(Some(limit as u32)))
            .await
            .unwrap();
        let request = ClaimRequest {
            worker_id: "w",
            limit: 2 * limit,
            scope: Scope::default(),
            default_timeout: Duration::from_secs(60),
        };
        let claimed = store.claim(&request).await.unwrap();
        assert_eq!(claimed.len(), limit, "the limit holds the first claim");
        let finished = claimed
            .iter()
            .map(|task| {
                Completion::new(
                    task,
                    crate::store::Transition::Succeeded { result: vec![6] },
                )
            })
            .collect();
        (store, request, finished)
    }

    /// Two completions of one claim's tasks at once (a rescue beside a slow
    /// worker) each free their own runs: the one held back by the other's
    /// lock on the claim's counted row works from the row the other left,
    /// not from what it read before, so no run stays counted for ever.
    #[sqlx::test(migrations = false)]
    async fn two_completions_of_one_claim_at_once_free_every_run(pool: PgPool) {
        const LIMIT: usize = 10;
        let (store, request, finished) = limited_claim(&pool, LIMIT).await;
        let (first, second) = finished.split_at(LIMIT / 2);

        // The first completion writes and holds its transaction open.
        let mut held = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL search_path = taskbox")
            .execute(&mut *held)
            .await
            .unwrap();
        let (written, _, _): (i64, i64, i64) = CompletionColumns::of(first)
            .bind(COMPLETE, &[], &store.schema)
            .fetch_one(&mut *held)
            .await
            .unwrap();
        assert_eq!(written as usize, first.len());
        // The second waits for its lock on the claim's counted row.
        let racing = store.clone();
        let second = second.to_vec();
        let completing = tokio::spawn(async move { racing.complete(&second).await });
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE wait_event_type = 'Lock' AND query LIKE '%WITH ended%')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting {
                break;
            }
            tokio::task::yield_now().await;
        }
        held.commit().await.unwrap();
        assert_eq!(completing.await.unwrap().unwrap() as usize, LIMIT / 2);

        let still_counted: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(cardinality(task_ids)), 0) FROM taskbox.counted_claims",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(still_counted, 0, "runs that ended are still counted");
        let again = store.claim(&request).await.unwrap();
        assert_eq!(
            again.len(),
            LIMIT,
            "the limit has room for a full claim again"
        );
    }

    /// A run counted before counted claims carried their claims' tokens
    /// (a row the upgrade left without one) is still freed by the
    /// completion of its task, found by its tasks.
    #[sqlx::test(migrations = false)]
    async fn a_run_counted_without_a_token_is_freed_by_its_completion(pool: PgPool) {
        const LIMIT: usize = 4;
        let (store, request, finished) = limited_claim(&pool, LIMIT).await;
        sqlx::query("UPDATE taskbox.counted_claims SET token = NULL")
            .execute(&pool)
            .await
            .unwrap();
        store.complete(&finished).await.unwrap();
        let again = store.claim(&request).await.unwrap();
        assert_eq!(again.len(), LIMIT, "runs that ended are still counted");
    }

    /// A drain's check for work left reads no paused queue's backlog.
    #[sqlx::test(migrations = false)]
    async fn the_drain_check_reads_no_paused_backlog(pool: PgPool) {
        let store = with_backlog(&pool, 0).await;
        assert!(store.set_paused("bulk", true).await.unwrap());
        assert!(!store.has_pending(&Scope::default()).await.unwrap());
        let plan: serde_json::Value =
            sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", *HAS_PENDING))
                .bind(None::<Vec<String>>)
                .bind(None::<Vec<String>>)
                .fetch_one(&store.pool)
                .await
                .unwrap();
        let read = rows_read(&plan[0]["Plan"]);
        assert!(read < 1_000.0, "the drain check read {read} rows");
    }
}

#[cfg(test)]
mod heap_tests {
    use super::*;
    use std::collections::HashMap;

    use crate::store::{NewTask, Transition};

    /// The page each task's row is on, by id.
    async fn pages(pool: &PgPool) -> HashMap<i64, i64> {
        sqlx::query_as("SELECT id, (ctid::text::point)[0]::bigint FROM taskbox.tasks")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// A task's run, claimed and finished in batches as a worker does,
    /// leaves its row on the page it was enqueued on: the completion is a
    /// heap-only update, with no new page and no index entry.
    #[sqlx::test(migrations = false)]
    async fn a_finished_task_stays_on_its_page(pool: PgPool) {
        // `add`'s args, `{"a": 1, "b": 2}`.
        let tasks = (0..1_000).map(|_| NewTask::new("add", vec![2, 4]));
        let store = super::tests::analyzed_store_of(&pool, tasks).await;
        let enqueued = pages(&pool).await;
        let digest = format!("sha256:{}", "0f".repeat(32));
        loop {
            let claimed = store
                .claim(&ClaimRequest {
                    worker_id: "vm-40211-7c2e",
                    limit: 256,
                    scope: Scope::default(),
                    default_timeout: Duration::from_secs(1),
                })
                .await
                .unwrap();
            if claimed.is_empty() {
                break;
            }
            let finished: Vec<Completion> = claimed
                .iter()
                .map(|task| Completion {
                    plugin_digest: Some(digest.clone()),
                    ..Completion::new(task, Transition::Succeeded { result: vec![6] })
                })
                .collect();
            store.complete(&finished).await.unwrap();
        }
        let moved = pages(&pool)
            .await
            .into_iter()
            .filter(|(id, page)| enqueued[id] != *page)
            .count();
        assert_eq!(moved, 0, "{moved} of 1000 finished rows left their page");
    }

    /// The plan (`EXPLAIN (ANALYZE, FORMAT JSON)`, run and rolled back) of
    /// the completion of 50 claimed tasks, while no queue has a limit.
    async fn completion_plan(pool: &PgPool) -> serde_json::Value {
        let tasks = (0..50).map(|_| NewTask::new("add", vec![2, 4]));
        let store = super::tests::analyzed_store_of(pool, tasks).await;
        completion_plan_of(&store, pool).await
    }

    /// The plan of a completion of the 50 tasks `store` claims (`EXPLAIN
    /// (ANALYZE, FORMAT JSON)`, rolled back).
    async fn completion_plan_of(store: &PgStore, pool: &PgPool) -> serde_json::Value {
        let claimed = store
            .claim(&ClaimRequest {
                worker_id: "vm-40211-7c2e",
                limit: 50,
                scope: Scope::default(),
                default_timeout: Duration::from_secs(1),
            })
            .await
            .unwrap();
        let finished: Vec<Completion> = claimed
            .iter()
            .map(|task| Completion::new(task, Transition::Succeeded { result: vec![6] }))
            .collect();
        let columns = CompletionColumns::of(&finished);
        let explained = format!("EXPLAIN (ANALYZE, FORMAT JSON) {COMPLETE}");
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL search_path = taskbox")
            .execute(&mut *tx)
            .await
            .unwrap();
        let (plan,): (serde_json::Value,) = columns
            .bind(&explained, &[], &store.schema)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        plan[0]["Plan"].clone()
    }

    /// The completion reads its batch a row at a time: no column of it is
    /// first stored whole, as `unnest(...)` in `FROM` (a function scan)
    /// stores each, which cost completions of 512 an eighth of their time.
    #[sqlx::test(migrations = false)]
    async fn a_completion_streams_its_batch_instead_of_storing_it(pool: PgPool) {
        let plan = completion_plan(&pool).await;
        let stored: Vec<&serde_json::Value> = super::tests::plan_nodes(&plan)
            .into_iter()
            .filter(|node| {
                node["Node Type"] == "Function Scan"
                    && node["Actual Loops"].as_f64().unwrap_or(0.0) > 0.0
            })
            .collect();
        assert!(
            stored.is_empty(),
            "the completion stored its batch in a function scan: {stored:?}"
        );
        let written = super::tests::plan_nodes(&plan)
            .into_iter()
            .find(|node| node["Node Type"] == "ModifyTable" && node["Relation Name"] == "tasks")
            .and_then(|node| node["Actual Rows"].as_f64());
        assert_eq!(
            written,
            Some(50.0),
            "the completion wrote every row: {plan}"
        );
    }

    /// How many times each scan of `relation` in a plan (`EXPLAIN
    /// (ANALYZE, FORMAT JSON)`) ran.
    fn scans_of(plan: &serde_json::Value, relation: &str) -> Vec<f64> {
        super::tests::plan_nodes(plan)
            .into_iter()
            .filter(|node| {
                node["Relation Name"] == relation
                    && node["Node Type"]
                        .as_str()
                        .is_some_and(|kind| kind.contains("Scan"))
            })
            .map(|node| node["Actual Loops"].as_f64().unwrap_or(0.0))
            .collect()
    }

    /// A completion finds the counted claims holding its tasks by their
    /// claims' tokens: testing every counted claim's tasks against the
    /// batch's (an array overlap, each against each) took a millisecond
    /// of each completion of a keyed drain. The overlap, kept for rows
    /// counted before rows had tokens, is not even computed.
    #[sqlx::test(migrations = false)]
    async fn a_completion_finds_its_counted_claims_by_their_tokens(pool: PgPool) {
        let store = super::tests::keyed_store_of(&pool, 50, 5).await;
        store
            .set_flow("default", &FlowChange::KeyLimit(Some(100)))
            .await
            .unwrap();
        let plan = completion_plan_of(&store, &pool).await;
        let nodes = super::tests::plan_nodes(&plan);
        let scan = nodes
            .iter()
            .find(|node| node["Relation Name"] == "counted_claims" && node["Filter"].is_string())
            .unwrap_or_else(|| panic!("no filtered scan of the counted claims: {plan}"));
        let filter = scan["Filter"].as_str().unwrap_or_default();
        assert!(filter.contains("token = ANY"), "{filter}");
        assert_eq!(scan["Actual Rows"].as_f64(), Some(1.0), "{plan}");
        // The overlap's operand (`task_ids && $N`) is an init plan of its own.
        let overlap = filter
            .split("task_ids && ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("no overlap left in {filter}"));
        let operand = nodes
            .iter()
            .find(|node| {
                node["Subplan Name"]
                    .as_str()
                    .is_some_and(|name| name.contains(&format!("returns {overlap}")))
            })
            .unwrap_or_else(|| panic!("no init plan returns {overlap}: {plan}"));
        assert_eq!(operand["Actual Loops"].as_f64(), Some(0.0), "{operand}");
    }

    /// While no queue has a limit or a key limit, no run is counted, and a
    /// completion does not look for any: a probe of the counted runs per
    /// completed task cost a tenth of the statement.
    #[sqlx::test(migrations = false)]
    async fn a_completion_looks_for_no_counted_run_while_no_queue_counts_them(pool: PgPool) {
        let plan = completion_plan(&pool).await;
        let scans = scans_of(&plan, "counted_claims");
        assert!(
            !scans.is_empty(),
            "the completion reads no counted_claims at all: {plan}"
        );
        assert!(
            scans.iter().all(|&loops| loops == 0.0),
            "a completion looked for counted runs (scans ran {scans:?} times)"
        );
    }
}

//! The storage contract: everything the worker and the CLI need from the
//! database, behind one trait so that Postgres (production) and SQLite (the
//! embedded default) are interchangeable. All SQL lives in the submodules.

pub mod flow;
mod pg_flow;
mod pg_kept;
mod pg_leases;
pub mod pg_schema;
pub mod postgres;
pub mod sqlite;
mod sqlite_changes;
mod sqlite_flow;
mod transition;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use pg_schema::SchemaName;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use transition::{Ending, Transition};

pub use taskbox_client::task::{
    DEFAULT_MAX_ARGS_BYTES, DEFAULT_QUEUE, MAX_SCHEDULE_AHEAD, MAX_TASK_TIMEOUT, NewTask, Refused,
};
pub use taskbox_client::{Status, TaskState};
/// Longest pause before a retry or a task given back; a longer one asked
/// for is cut to this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tasks a worker can run: those of its queues whose plugin it has
/// loaded. Its claims take only these, and a drain waits only for these.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// Empty: every queue.
    pub queues: &'a [String],
    /// The plugins the worker has loaded; `None`: any plugin (for callers
    /// that run no plugins themselves).
    pub plugins: Option<&'a [String]>,
}

/// What a worker asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub worker_id: &'a str,
    pub limit: usize,
    pub scope: Scope<'a>,
    /// Applied to tasks enqueued without a timeout of their own.
    pub default_timeout: Duration,
}

/// A task a worker now owns for one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedTask {
    pub id: i64,
    /// The task's key, for a queue's key limit; `None`: it has none.
    #[sqlx(default)]
    pub key: Option<String>,
    pub plugin: String,
    /// Postcard bytes; empty when the args came as JSON.
    pub args: Vec<u8>,
    /// JSON text, for a task enqueued from SQL (`enqueue(plugin, args
    /// jsonb, ...)` on Postgres): the worker encodes it with the plugin's
    /// args schema before running.
    #[sqlx(default)]
    pub args_json: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    /// The claim's fencing token ([`new_claim_token`]): only a completion
    /// that carries it writes the attempt's outcome.
    pub token: i64,
}

impl ClaimedTask {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(0) as u64)
    }
}

/// How an attempt ended, as the completer writes it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: i64,
    pub attempt: i32,
    /// The claim's token: the fence. The attempt number is no fence, since a
    /// claim the database lost in a crash is made again under the same one.
    pub token: i64,
    /// Where the task goes.
    pub transition: Transition,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub plugin_digest: Option<String>,
}

impl Completion {
    /// The claimed attempt takes `transition`, with no output.
    pub fn new(task: &ClaimedTask, transition: Transition) -> Self {
        Completion::of(task.id, task.attempt, task.token, transition)
    }

    /// Attempt `attempt` of task `id`, claimed under `token`, takes
    /// `transition`.
    pub fn of(id: i64, attempt: i32, token: i64, transition: Transition) -> Self {
        Completion {
            id,
            attempt,
            token,
            transition,
            stdout: Vec::new(),
            stderr: Vec::new(),
            plugin_digest: None,
        }
    }

    /// Give the task back unrun: waiting again, the attempt not spent.
    pub fn release(task: &ClaimedTask) -> Self {
        Completion::new(task, Transition::Released)
    }

    /// The history line for this run when its claim was lost and the task
    /// went on without it: another claim holds the row, or it ended. The
    /// run still shows, but never as the task's outcome.
    pub(crate) fn lost_run_note(&self) -> String {
        let ending = match &self.transition {
            Transition::Released | Transition::Cancelled { ran: false } => {
                "was interrupted and given back".to_owned()
            }
            Transition::Retry { error, .. } => format!("failed ({error})"),
            other => match other.error() {
                Some(error) => format!("ended {} ({error})", other.status().as_str()),
                None => format!("ended {}", other.status().as_str()),
            },
        };
        format!(
            "claim lost: a run of attempt {} {ending} under a claim the database no longer \
             held, so it is not the task's outcome",
            self.attempt
        )
    }
}

/// A fresh claim's fencing token. Random, so it cannot repeat: a sequence
/// or the attempt number can, once the database has forgotten a claim in a
/// crash and hands the same attempt out again.
pub(crate) fn new_claim_token() -> i64 {
    rand::random()
}

/// The history line of a run whose claim the database lost (a crash before
/// the claim was written) and that ended while its task was still waiting:
/// its outcome is recorded as that attempt's, the way it would have been.
/// `{attempt}` is filled in by the statement.
pub(crate) const ADOPTED_RUN_NOTE: &str = "claim lost: the database forgot the claim of attempt \
     {attempt}; the run that held it ended and is recorded here";

/// A whole row, for `show` and `list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRecord {
    pub id: i64,
    pub queue: String,
    /// Who the task is for (a tenant, a customer), when it was given one.
    pub key: Option<String>,
    pub plugin: String,
    /// Postcard bytes; empty when the args came as JSON (`args_json`).
    pub args: Vec<u8>,
    /// The args as JSON text, when they were enqueued as JSON from SQL.
    #[sqlx(default)]
    pub args_json: Option<String>,
    pub status: Status,
    pub priority: i32,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: Option<i64>,
    pub run_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub plugin_digest: Option<String>,
    pub result: Option<Vec<u8>>,
    pub stdout: Option<Vec<u8>>,
    pub stderr: Option<Vec<u8>>,
    pub error: Option<String>,
    pub errors: Vec<String>,
    pub worker_id: Option<String>,
}

impl TaskRecord {
    /// The args as the JSON they were enqueued as, when they came as JSON
    /// (from SQL); `None` for postcard args.
    pub fn json_args(&self) -> Option<serde_json::Value> {
        let text = self.args_json.as_deref()?;
        // The database checked it as jsonb; text it cannot have written
        // still shows, as a string.
        Some(
            serde_json::from_str(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_owned())),
        )
    }
}

/// Filters for `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub plugin: Option<String>,
    pub limit: i64,
}

/// The args and result schemas one plugin version declared (postcard-encoded
/// `OwnedNamedType`s), kept by the digest its tasks record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSchemas {
    pub digest: String,
    pub args: Vec<u8>,
    pub result: Vec<u8>,
}

/// Both dialects take `$N` parameters: one statement serves both stores.
/// A version's schemas never change, so the first record stands.
pub(crate) const RECORD_SCHEMAS: &str =
    "INSERT INTO plugin_schemas (digest, args_schema, result_schema)
     VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING";
pub(crate) const SCHEMAS_OF: &str =
    "SELECT args_schema, result_schema FROM plugin_schemas WHERE digest = $1";

/// A queue as `taskbox queue list` shows it: every queue that holds tasks
/// or has settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub waiting: i64,
    pub running: i64,
    /// At most this many run at once, on all workers together.
    pub limit: Option<u32>,
    /// At most this many of one key run at once.
    pub key_limit: Option<u32>,
    /// At most so many starts per window, e.g. `100/1s`.
    pub rate: Option<String>,
    /// The rate holds for each key on its own.
    pub rate_per_key: bool,
    /// No worker claims its tasks.
    pub paused: bool,
}

/// A row of [`QUEUES`], as both stores read it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct QueueRow {
    name: String,
    waiting: i64,
    running: i64,
    paused: bool,
    max_running: Option<i32>,
    key_limit: Option<i32>,
    rate_count: Option<i32>,
    rate_window_ms: Option<i64>,
    rate_per_key: bool,
}

impl From<QueueRow> for QueueInfo {
    fn from(row: QueueRow) -> Self {
        QueueInfo {
            name: row.name,
            waiting: row.waiting,
            running: row.running,
            limit: row.max_running.map(|n| n as u32),
            key_limit: row.key_limit.map(|n| n as u32),
            rate: flow::Rate::stored(row.rate_count, row.rate_window_ms).map(|r| r.to_string()),
            rate_per_key: row.rate_per_key,
            paused: row.paused,
        }
    }
}

/// Every queue with tasks or settings, counted: one statement for both
/// backends (`paused_at` is a time in one and microseconds in the other,
/// `rate_per_key` a boolean in one and 0 or 1 in the other). Each store
/// casts the columns to [`QueueRow`]'s types.
pub(crate) const QUEUES: &str = "
SELECT name, sum(waiting) AS waiting, sum(running) AS running, max(paused) AS paused,
       max(max_running) AS max_running, max(key_limit) AS key_limit,
       max(rate_count) AS rate_count, max(rate_window_ms) AS rate_window_ms,
       max(rate_per_key) AS rate_per_key
FROM (
    SELECT queue AS name,
           CASE WHEN status = 'waiting' THEN 1 ELSE 0 END AS waiting,
           CASE WHEN status = 'running' THEN 1 ELSE 0 END AS running,
           0 AS paused, NULL AS max_running, NULL AS key_limit, NULL AS rate_count,
           NULL AS rate_window_ms, 0 AS rate_per_key
    FROM tasks
    UNION ALL
    SELECT name, 0, 0, CASE WHEN paused_at IS NULL THEN 0 ELSE 1 END, max_running, key_limit,
           rate_count, rate_window_ms, CASE WHEN rate_per_key THEN 1 ELSE 0 END
    FROM queues
) q GROUP BY name ORDER BY name";

/// Counts per status (every status is present), and the plugins that have
/// waiting tasks while no live worker serves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub waiting: i64,
    pub running: i64,
    pub success: i64,
    pub error: i64,
    pub timeout: i64,
    pub cancelled: i64,
    /// Sorted. A worker is live while its heartbeat is younger than
    /// [`LIVE_WORKER_TTL`].
    pub unserved: Vec<String>,
}

/// How recent a worker's heartbeat must be for `stats` to count its
/// plugins as served: the rescuer's default for a lost worker.
pub const LIVE_WORKER_TTL: Duration = crate::worker::rescuer::DEFAULT_WORKER_TTL;

impl Stats {
    pub fn set(&mut self, status: Status, count: i64) {
        let slot = match status {
            Status::Waiting => &mut self.waiting,
            Status::Running => &mut self.running,
            Status::Success => &mut self.success,
            Status::Error => &mut self.error,
            Status::Timeout => &mut self.timeout,
            Status::Cancelled => &mut self.cancelled,
        };
        *slot = count;
    }

    pub fn total(&self) -> i64 {
        self.waiting + self.running + self.success + self.error + self.timeout + self.cancelled
    }

    pub fn finished(&self) -> i64 {
        self.success + self.error + self.timeout + self.cancelled
    }
}

/// Something the database tells listening workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New tasks may be claimable.
    TasksAvailable,
    /// Whoever runs this task should interrupt it.
    Cancel(i64),
}

/// What `cancel` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting; it is now `cancelled`.
    Cancelled,
    /// It is running; its worker has been asked to interrupt it.
    Interrupting,
    /// It had already ended with this status.
    AlreadyFinished(Status),
    NotFound,
}

/// What the rescuer asks for.
#[derive(Debug, Clone)]
pub struct RescueRequest<'a> {
    pub grace: Duration,
    pub worker_ttl: Duration,
    /// The asking worker and the tasks it holds (running or unwritten).
    pub worker_id: &'a str,
    pub in_flight: &'a [i64],
}

/// A running row whose worker is gone (or, for the asking worker, whose
/// claim reply was lost): the rescuer decides where it goes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LostRun {
    pub id: i64,
    pub attempt: i32,
    pub max_attempts: i32,
    /// The token the row holds: the rescue's completion is fenced on it,
    /// so of two rescuers, or a rescuer and a late worker, one writes.
    pub token: i64,
    /// The worker that ran it.
    pub worker_id: Option<String>,
    pub cancel_requested: bool,
}

/// A task the rescuer took back, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub id: i64,
    /// `waiting` (attempts remain), `error` ("worker lost") or `cancelled`.
    pub status: Status,
}

/// Storage failures, typed so callers can tell a lost connection (retry
/// later) from a refused write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Displayed with its cause and not returned as a `source`, so a chain
    /// printed with `{:#}` names the cause once.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database could not be reached or refused the connection;
    /// `reason` is the real cause in plain words.
    #[error("cannot connect to the database at {target}: {reason}")]
    Connect {
        /// `host:port` (or the socket) that was tried.
        target: String,
        reason: String,
        /// True when waiting may help (refused, timed out, too many
        /// clients, starting up); false for authentication or an unknown
        /// database.
        transient: bool,
    },
    /// A read found none of taskbox's tables: nothing was created.
    #[error("the database has no taskbox tables yet; create them with `taskbox migrate`")]
    NotMigrated,
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// A task past a bound (args size, timeout, `run_at`, attempts);
    /// nothing was written.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The database admits one worker process and another one holds it.
    #[error(
        "another taskbox worker{} already runs on {}; SQLite allows one worker process per database file, so stop that one first or use Postgres for several",
        .holder.map(|pid| format!(" (process {pid})")).unwrap_or_default(),
        .database.display()
    )]
    WorkerLocked {
        database: PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot use the worker lock file {}: {source}", .path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_missing_table(&err) {
            StoreError::NotMigrated
        } else {
            StoreError::Database(err)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(err)
    }
}

/// Postgres `undefined_table`, or SQLite's "no such table".
fn is_missing_table(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table")
    })
}

impl StoreError {
    /// True when the database could not be reached at all (or, for SQLite,
    /// stayed locked by another process past the busy timeout): the caller
    /// should keep its work and try again once the database is back.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(err)) => {
                StoreError::connection_lost(err)
            }
            StoreError::Database(err) => StoreError::connection_lost(err),
            StoreError::Connect { .. } => true,
            _ => false,
        }
    }

    /// True when the database could not be reached for a reason that
    /// waiting may cure (refused, timed out, too many clients, starting up).
    pub fn is_transient_connection(&self) -> bool {
        match self {
            StoreError::Connect { transient, .. } => *transient,
            other => other.is_connection(),
        }
    }

    /// True when the same write may succeed later without anything changed
    /// on the caller's side: the database is unreachable
    /// ([`StoreError::is_connection`]) or, for SQLite, its disk is full or
    /// failing. A worker holds its results through either.
    pub fn is_transient(&self) -> bool {
        self.is_connection()
            || match self {
                StoreError::Database(err) => sqlite::is_disk_trouble(err),
                _ => false,
            }
    }

    /// The innermost database error, without the layers that wrap it.
    pub fn cause(&self) -> String {
        match self {
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(err))
            | StoreError::Database(err) => err.to_string(),
            other => other.to_string(),
        }
    }

    fn connection_lost(err: &sqlx::Error) -> bool {
        matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed
        ) || err
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08"))
            || sqlite::is_busy(err)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The reason a claim gives for ending a row it cannot run: a timeout past
/// [`MAX_TASK_TIMEOUT`] (written before the schema's bound existed).
pub(crate) fn refused_timeout_reason() -> String {
    format!(
        "refused: the task's timeout is more than the maximum of {}, so it can never run",
        humantime::format_duration(MAX_TASK_TIMEOUT)
    )
}

/// Dead row versions past which a table is vacuumed, on top of
/// [`VACUUM_DEAD_FRACTION`] of its live rows: autovacuum's own rule, with
/// numbers for a queue, whose every task rewrites its row twice.
pub const VACUUM_DEAD_ROWS: i64 = 20_000;
pub const VACUUM_DEAD_FRACTION: f64 = 0.05;
/// A table with fewer live rows than [`VACUUM_DEAD_ROWS`] is vacuumed once
/// its dead rows outnumber its live ones, and no fewer than this: the small
/// tables of wide rows that every claim writes (its lease, its counted
/// runs) never reached 20,000 dead rows (792 after a 100,000-task keyed
/// drain) while they grew by a page every claim or two (260 pages), read
/// whole by every completion.
pub const VACUUM_MIN_DEAD_ROWS: i64 = 50;

/// A worker in the middle of work vacuums only past this many times the
/// threshold (20% of the live rows, autovacuum's default fraction): a
/// vacuum beside a burst takes one of the burst's cores for the length of
/// it. A drain of 20,000 tasks right after one of 1,000,000 ran at about
/// half the rate when the 45,000–155,000 dead rows the long drain left
/// were vacuumed beside it, and at about a fresh table's when they were
/// not. The rows it defers are vacuumed once the worker is quiet.
pub const VACUUM_BUSY_FACTOR: i64 = 4;

/// A table's statistics are refreshed (`ANALYZE`) once its rows changed as
/// many times as would have it vacuumed, and no more often than this,
/// whoever analyzed it last. Analyzing at every vacuum read a sample of a
/// table that has lived (1,000,000 rows: 350 ms, twice the vacuum) every
/// few seconds of a drain: the 20,000-task drain after a 1,000,000-task
/// one ran at 0.49–1.35× of a fresh one, against 0.80–1.30× since (nine
/// runs each).
pub const ANALYZE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`TaskStore::tidy`] found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tidied {
    /// The server's autovacuum is off: taskbox's tidying is all there is.
    pub autovacuum_off: bool,
    /// Each table vacuumed, with its dead row versions before.
    pub vacuumed: Vec<(String, i64)>,
    /// Each table whose statistics were refreshed.
    pub analyzed: Vec<String>,
}

/// The operations taskbox needs from a database. Implementations must make
/// `claim` safe under concurrent workers and fence `complete` on the claim's
/// token.
pub trait TaskStore: Send + Sync + Clone + 'static {
    /// Apply the embedded migrations; safe to call every start.
    fn migrate(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Insert all tasks in one transaction (all or nothing) and wake workers
    /// once; returns the new ids in input order. Fails with
    /// [`StoreError::ArgsTooLarge`], writing nothing, when any task's args
    /// are over the store's limit ([`DEFAULT_MAX_ARGS_BYTES`] unless set by
    /// [`TaskStore::with_max_args_bytes`]).
    fn enqueue(&self, tasks: &[NewTask]) -> impl Future<Output = StoreResult<Vec<i64>>> + Send;

    /// The same store, refusing args over `limit` bytes at enqueue.
    fn with_max_args_bytes(self, limit: usize) -> Self;

    /// Claim up to `limit` runnable tasks: lowest priority number first, then
    /// oldest `run_at`, then id. Each claimed row is `running` with its
    /// attempt incremented.
    fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> impl Future<Output = StoreResult<Vec<ClaimedTask>>> + Send;

    /// Record outcomes; a row is written only while it is still `running`
    /// under the completion's claim token. Two exceptions keep a claim the
    /// database lost from going unseen: a run whose row waits exactly as
    /// before its claim is recorded as that attempt (with
    /// [`ADOPTED_RUN_NOTE`]), and a run whose row went on under another
    /// claim, or ended, only adds [`Completion::lost_run_note`] to its
    /// history. Returns how many outcomes were recorded.
    fn complete(&self, completions: &[Completion])
    -> impl Future<Output = StoreResult<u64>> + Send;

    fn get(&self, id: i64) -> impl Future<Output = StoreResult<Option<TaskRecord>>> + Send;

    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = StoreResult<Vec<TaskRecord>>> + Send;

    fn stats(&self) -> impl Future<Output = StoreResult<Stats>> + Send;

    /// True while any task is running, or waiting in `scope` and due
    /// (retries in backoff count; tasks scheduled by the user for later do
    /// not).
    fn has_pending(&self, scope: &Scope<'_>) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Open the connections a worker claims and completes on, so its first
    /// tasks do not wait for them. Stores without such pools do nothing.
    fn warm_up(&self) -> impl Future<Output = StoreResult<()>> + Send {
        async { Ok(()) }
    }

    /// Open one fresh connection and close it, to learn whether the
    /// database can be reached now and, if not, exactly why (a
    /// [`StoreError::Connect`]). Stores without a server succeed.
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send {
        async { Ok(()) }
    }

    /// Vacuum the store's tables whose dead row versions passed the
    /// threshold ([`VACUUM_DEAD_ROWS`] plus [`VACUUM_DEAD_FRACTION`] of the
    /// live ones; [`VACUUM_BUSY_FACTOR`] times that for a `busy` worker),
    /// if no other worker is doing it now; never blocks claims or
    /// completions. Stores that leave no dead rows do nothing.
    fn tidy(&self, _busy: bool) -> impl Future<Output = StoreResult<Tidied>> + Send {
        async { Ok(Tidied::default()) }
    }

    /// Wait until task `id` has ended (a final status) and return its row;
    /// `None` when there is no such task. Callers bound the wait with a
    /// timeout. Postgres wakes the waiter with a notification when the
    /// task ends; SQLite, which has none across processes, polls.
    fn wait_until_ended(
        &self,
        id: i64,
    ) -> impl Future<Output = StoreResult<Option<TaskRecord>>> + Send;

    /// Keep a plugin version's schemas by its digest (once; later calls
    /// for the same digest change nothing).
    fn record_schemas(
        &self,
        schemas: &PluginSchemas,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The schemas recorded for a plugin version, if any.
    fn schemas(
        &self,
        digest: &str,
    ) -> impl Future<Output = StoreResult<Option<PluginSchemas>>> + Send;

    /// Record that `worker_id` is alive and serves `plugins` (and register
    /// it the first time).
    fn heartbeat(
        &self,
        worker_id: &str,
        plugins: &[String],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Forget a worker that stopped cleanly.
    fn deregister(&self, worker_id: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Rows still `running` more than `grace` past their deadline that no
    /// live worker holds: their worker sent no heartbeat for `worker_ttl`,
    /// or it is the asking worker and the row is not among its `in_flight`
    /// tasks (a claim whose reply was lost). Only found: the rescuer decides
    /// where each goes and writes it through [`TaskStore::complete`]. Safe
    /// to run concurrently.
    fn lost(
        &self,
        request: &RescueRequest<'_>,
    ) -> impl Future<Output = StoreResult<Vec<LostRun>>> + Send;

    /// Stop (`paused`) or start again claiming `queue`'s tasks, on every
    /// worker; running tasks finish either way. `false` when there is no
    /// such queue (no task was ever in it and nothing was set on it).
    fn set_paused(
        &self,
        queue: &str,
        paused: bool,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Change a queue's limit, key limit or rate, on every worker; the
    /// queue need not hold tasks yet. Its running tasks count against a
    /// limit from now on.
    fn set_flow(
        &self,
        queue: &str,
        change: &flow::FlowChange,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Every queue that holds tasks or has settings, by name.
    fn queues(&self) -> impl Future<Output = StoreResult<Vec<QueueInfo>>> + Send;

    /// Cancel a waiting task at once, or ask whichever worker runs it to
    /// interrupt it.
    fn cancel(&self, id: i64) -> impl Future<Output = StoreResult<CancelOutcome>> + Send;

    /// A stream of wake-ups from other processes.
    fn subscribe(
        &self,
    ) -> impl Future<Output = StoreResult<tokio::sync::mpsc::Receiver<Notification>>> + Send;

    /// Make sure this process may run a worker on this database. A store
    /// whose database admits one worker process at a time (SQLite) takes an
    /// exclusive lock here, held while any clone of the store lives, and
    /// fails with [`StoreError::WorkerLocked`] while another process holds
    /// it. Idempotent; the default admits any number of worker processes.
    fn lock_worker(&self) -> StoreResult<()> {
        Ok(())
    }
}

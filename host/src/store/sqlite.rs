//! The SQLite store: the embedded default, one file and no server. It owns
//! the SQLite connection set-up (WAL, busy timeout, one writer connection and
//! a few readers), every SQLite statement, the in-process wake-ups, and the
//! lock that admits one worker process per database file.
//!
//! Semantics match [`super::PgStore`] statement for statement; the shared
//! conformance suite (`tests/conformance.rs`) holds both to them. What
//! differs is the storage form: times are integer microseconds since the Unix
//! epoch (UTC), `errors` is a JSON array, and concurrency comes from SQLite's
//! single writer instead of row locks. Every write is one transaction begun
//! with `BEGIN IMMEDIATE`, so it takes the write lock before it reads and a
//! claim, a completion batch or an enqueue batch is atomic.
//!
//! Durability: `synchronous = NORMAL` in WAL mode. A crashed process loses
//! nothing; a power cut or OS crash may lose the last few committed
//! transactions. Production belongs on Postgres.
//!
//! One worker process per file: wake-ups and cancels travel inside the
//! process, and SQLite serialises writers anyway, so a second worker process
//! would add lock contention, not throughput. [`TaskStore::lock_worker`]
//! (called by `taskbox worker` and `taskbox demo`, and by the first `claim`)
//! takes an exclusive lock on `<database>.lock` for the life of the store.
//! Other processes may still enqueue, read and cancel; a cancel from another
//! process reaches the worker through a light poll of running rows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{broadcast, mpsc};

use super::flow::{self, FlowChange, QueuesSeen, QueuesSet};
use super::sqlite_changes::{ExternalWatch, FileChanges};
use super::sqlite_flow::{self, SqliteFlow};
use super::{
    ADOPTED_RUN_NOTE, CancelOutcome, ClaimRequest, ClaimedTask, Completion, DEFAULT_MAX_ARGS_BYTES,
    LIVE_WORKER_TTL, ListFilter, LostRun, MAX_TASK_TIMEOUT, NewTask, Notification, PluginSchemas,
    QUEUES, QueueInfo, QueueRow, RECORD_SCHEMAS, RescueRequest, SCHEMAS_OF, Scope, Stats, Status,
    StoreError, StoreResult, TaskRecord, TaskStore, new_claim_token, refused_timeout_reason,
};

/// The database a command uses when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:./taskbox.db";
/// Appended to the database's file name to name the worker lock file.
pub const WORKER_LOCK_SUFFIX: &str = ".lock";
/// How long a write waits for another process's write before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections serving reads (`get`, `list`, `stats`, polling); WAL lets
/// them read while the writer writes.
pub const DEFAULT_READERS: u32 = 4;
/// How long a caller waits for a pooled connection before giving up. The
/// single writer is shared by the producer, completer and rescuer.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Wake-ups buffered per subscriber before the slowest one lags (a lagging
/// subscriber is told to look for tasks, and cancels are polled anyway).
const WAKE_BUFFER: usize = 256;
/// Notifications a subscriber's channel holds.
const NOTIFY_BUFFER: usize = 64;
/// How often a subscriber looks for what other processes did (new tasks,
/// cancels of running tasks) when no file change told it: the fallback for
/// a folder that cannot be watched, or a change it missed.
pub const EXTERNAL_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between attempts to switch a new database to WAL while another
/// process holds it (that switch cannot use the busy timeout).
const WAL_RETRY: Duration = Duration::from_millis(20);

const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

pub use taskbox_client::sqlite::WAIT_POLL;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

const TASK_COLUMNS: &str = "id, queue, key, plugin, args, status, priority, attempt, max_attempts, \
     timeout_ms, run_at, enqueued_at, started_at, finished_at, plugin_digest, result, stdout, \
     stderr, error, errors, worker_id";

// ?1 now, ?2 queues as a JSON array or NULL for all, ?3 limit, ?4 worker id,
// ?5 default timeout in ms, ?6 the timeout bound in ms, ?7 the reason a row
// over it ends `error` (see the Postgres CLAIM: the refusal transition), ?8
// the worker's plugins as a JSON array or NULL for all, ?9 the claim's token.
// Paused queues and queues with a limit or a rate are left out: those are
// claimed by `flow::claim_limited` alone.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    claim_statement(concat!(
        "SELECT id FROM tasks
    WHERE status = 'waiting' AND run_at <= ?1
      AND (?2 IS NULL OR queue IN (SELECT value FROM json_each(?2)))
      AND (?8 IS NULL OR plugin IN (SELECT value FROM json_each(?8)))
      AND queue NOT IN (SELECT name FROM queues WHERE ",
        flow::left_out_queue!(),
        ")
    ORDER BY priority, run_at, id
    LIMIT ?3"
    ))
});

/// The queues a claim takes one by one: `?1` (a JSON array; NULL: every
/// queue with waiting tasks), less the paused and limited ones.
static SERVED_QUEUES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH RECURSIVE {served} SELECT queue FROM served",
        served = served_queues_named(1, flow::LEFT_OUT),
    )
});

/// [`flow::served_queues`] of the names `?n` (a JSON array; NULL: every
/// queue with waiting tasks).
fn served_queues_named(n: u8, skip: &str) -> String {
    flow::served_queues(
        "t.status = 'waiting'",
        &format!("SELECT value AS queue FROM json_each(?{n}) WHERE ?{n} IS NOT NULL"),
        &format!("?{n} IS NULL"),
        skip,
    )
}

/// Whether a drain has anything left: a running task, or a waiting one
/// that is due at `?1` or in backoff, of the queues `?2` (NULL: all) and
/// plugins `?3` (NULL: all), paused queues aside. Each queue is read on its
/// own, so a paused queue's backlog is not read at all.
static HAS_PENDING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH RECURSIVE {served}
SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'running')
    OR EXISTS (SELECT 1 FROM served s
               WHERE EXISTS (SELECT 1 FROM tasks t INDEXED BY tasks_queue_order
                             WHERE t.status = 'waiting' AND t.queue = s.queue
                               AND (t.run_at <= ?1 OR t.attempt > 0)
                               AND (?3 IS NULL OR t.plugin IN (SELECT value FROM json_each(?3)))))",
        served = served_queues_named(2, flow::PAUSED),
    )
});

/// Queue `?1`'s first `?4` waiting tasks in claim order, as of `?2`, of
/// the plugins `?3` (NULL: any): one walk of its own index range. The
/// index is named so that no statistics can turn the plan into the walk
/// over every queue: SQLite's know only the average queue's size, and with
/// a small queue beside a large one written as literals it chose that.
const QUEUE_NEXT: &str = "
SELECT id, priority, run_at FROM tasks INDEXED BY tasks_queue_order
WHERE status = 'waiting' AND queue = ?1 AND run_at <= ?2
  AND (?3 IS NULL OR plugin IN (SELECT value FROM json_each(?3)))
ORDER BY priority, run_at, id
LIMIT ?4";

/// The claim of the tasks `?10` (a JSON array of ids), picked by
/// [`pick_by_queue`].
static CLAIM_PICKED: LazyLock<String> =
    LazyLock::new(|| claim_statement("SELECT value FROM json_each(?10)"));

/// One limited queue `?10`, in claim order.
pub(super) static CLAIM_LIMITED: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        "SELECT id FROM tasks
    WHERE status = 'waiting' AND queue = ?10 AND run_at <= ?1
      AND (?2 IS NULL OR queue IN (SELECT value FROM json_each(?2)))
      AND (?8 IS NULL OR plugin IN (SELECT value FROM json_each(?8)))
    ORDER BY priority, run_at, id
    LIMIT ?3",
    )
});

/// One limited queue `?10` by keys in turn: `?11` is a JSON array of
/// `{"key": ..., "share": ...}` (a null key: the tasks without one); each
/// key gives at most its share in claim order, the first task of every key
/// first, then the second, and so on.
pub(super) static CLAIM_KEYED: LazyLock<String> = LazyLock::new(|| {
    claim_statement(
        "SELECT id FROM (
        SELECT t.id, k.turn,
               row_number() OVER (PARTITION BY k.turn ORDER BY t.priority, t.run_at, t.id) AS rank,
               k.share
        FROM (SELECT CAST(key AS INTEGER) AS turn, json_extract(value, '$.key') AS key,
                     json_extract(value, '$.share') AS share
              FROM json_each(?11)) k
        JOIN tasks t ON t.queue = ?10 AND t.key IS k.key
        WHERE t.status = 'waiting' AND t.run_at <= ?1
          AND (?2 IS NULL OR t.queue IN (SELECT value FROM json_each(?2)))
          AND (?8 IS NULL OR t.plugin IN (SELECT value FROM json_each(?8)))
    ) WHERE rank <= share
    ORDER BY rank, turn
    LIMIT ?3",
    )
});

/// A claim: the rows `picked` selects become `running`.
fn claim_statement(picked: &str) -> String {
    format!(
        "
UPDATE tasks
SET status = CASE WHEN timeout_ms > ?6 THEN 'error' ELSE 'running' END,
    attempt = attempt + 1,
    started_at = ?1,
    deadline_at = CASE WHEN timeout_ms > ?6 THEN NULL
                  ELSE ?1 + coalesce(timeout_ms, ?5) * 1000 END,
    worker_id = ?4,
    claim_token = ?9,
    finished_at = CASE WHEN timeout_ms > ?6 THEN ?1 END,
    timeout_ms = CASE WHEN timeout_ms > ?6 THEN NULL ELSE timeout_ms END,
    error = CASE WHEN timeout_ms > ?6 THEN ?7 || ' (it was ' || timeout_ms || ' ms)'
            ELSE error END,
    errors = CASE WHEN timeout_ms > ?6
             THEN json_insert(errors, '$[#]', ?7 || ' (it was ' || timeout_ms || ' ms)')
             ELSE errors END
WHERE id IN ({picked})
RETURNING id, key, plugin, args, attempt, max_attempts, coalesce(timeout_ms, ?5) AS timeout_ms,
          claim_token AS token, priority, run_at, status"
    )
}

// ?1 id, ?2 attempt, ?3 status, ?4 result, ?5 stdout, ?6 stderr, ?7 error,
// ?8 plugin digest, ?9 retry delay in microseconds, ?10 spend attempt, ?11 now,
// ?12 the claim's token (the fence), ?13 the history line of a run whose
// claim was lost and that is recorded as its attempt (as in the Postgres
// store; SQLite evaluates every SET expression on the row as it was).
const COMPLETE: &str = "
UPDATE tasks
SET status = CASE WHEN ?3 = 'waiting' AND cancel_requested_at IS NOT NULL
                  THEN 'cancelled' ELSE ?3 END,
    attempt = CASE WHEN ?10 THEN ?2 ELSE ?2 - 1 END,
    claim_token = ?12,
    result = ?4,
    stdout = ?5,
    stderr = ?6,
    error = ?7,
    errors = CASE WHEN status = 'running' THEN
                  CASE WHEN ?7 IS NULL THEN errors ELSE json_insert(errors, '$[#]', ?7) END
             WHEN ?7 IS NULL THEN json_insert(errors, '$[#]', replace(?13, '{attempt}', ?2))
             ELSE json_insert(errors, '$[#]', replace(?13, '{attempt}', ?2), '$[#]', ?7) END,
    finished_at = CASE WHEN ?3 = 'waiting' AND cancel_requested_at IS NULL
                       THEN NULL ELSE ?11 END,
    run_at = CASE WHEN ?9 IS NULL THEN run_at ELSE ?11 + ?9 END,
    plugin_digest = coalesce(?8, plugin_digest)
WHERE id = ?1
  AND ((status = 'running' AND claim_token = ?12)
       OR (status = 'waiting' AND ?10 AND attempt = ?2 - 1 AND claim_token IS NOT ?12))";

// ?1 id, ?2 the completion's token, ?3 the run's history line: a run whose
// claim was lost while its task went on under another claim, or ended.
const NOTE_LOST_RUN: &str = "
UPDATE tasks SET errors = json_insert(errors, '$[#]', ?3)
WHERE id = ?1 AND claim_token IS NOT ?2";

// ?1 a token for a row claimed before claims had tokens, ?2 deadline
// cut-off (now - grace), ?3 asking worker, ?4 its in-flight ids as a JSON
// array, ?5 heartbeat cut-off (now - ttl). The rescuer decides where each
// row goes and writes it as any completion.
const LOST: &str = "
UPDATE tasks SET claim_token = coalesce(claim_token, ?1)
WHERE status = 'running'
  AND deadline_at < ?2
  AND ((worker_id = ?3 AND id NOT IN (SELECT value FROM json_each(?4)))
       OR (worker_id <> ?3 AND NOT EXISTS (
           SELECT 1 FROM workers w
           WHERE w.id = tasks.worker_id AND w.heartbeat_at > ?5)))
RETURNING id, attempt, max_attempts, claim_token AS token, worker_id,
          cancel_requested_at IS NOT NULL AS cancel_requested";

/// Pause (`?2` not NULL: the time) or resume queue `?1`, if it holds
/// tasks or has a row.
const SET_PAUSED: &str = "
INSERT INTO queues (name, paused_at)
SELECT ?1, ?2
WHERE EXISTS (SELECT 1 FROM tasks WHERE queue = ?1) OR EXISTS (SELECT 1 FROM queues WHERE name = ?1)
ON CONFLICT (name) DO UPDATE SET paused_at = CASE WHEN ?2 IS NULL THEN NULL
                                                  ELSE coalesce(paused_at, ?2) END";

const CANCEL_WAITING: &str = "
UPDATE tasks
SET status = 'cancelled', finished_at = ?2, cancel_requested_at = ?2,
    error = 'cancelled before it ran',
    errors = json_insert(errors, '$[#]', 'cancelled before it ran')
WHERE id = ?1 AND status = 'waiting'";

const CANCEL_RUNNING: &str = "
UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, ?2)
WHERE id = ?1 AND status = 'running'";

/// SQLite-backed [`TaskStore`]. Clones share the connections, the wake-ups
/// and the worker lock.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write in the process queues here, so writers in
    /// one process never meet SQLite's busy error.
    writer: SqlitePool,
    reader: SqlitePool,
    shared: Arc<Shared>,
    /// Args over this many bytes are refused at enqueue.
    max_args_bytes: usize,
    /// How often subscribers poll for other processes' changes.
    external_poll: Duration,
}

#[derive(Debug)]
struct Shared {
    database: PathBuf,
    wake: broadcast::Sender<Notification>,
    /// The locked lock file while this process may run a worker.
    worker_lock: Mutex<Option<File>>,
    /// Whether any queue is limited, or paused, as last looked up.
    queues_seen: QueuesSeen,
}

/// True for SQLite's "database is locked" errors: another process held the
/// write lock past the busy timeout, so the write may be tried again.
pub(crate) fn is_busy(err: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>())
        .and_then(|db| sqlx::error::DatabaseError::code(db)?.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

impl SqliteStore {
    /// Open the database a `sqlite:` URL names, creating the file when it is
    /// missing. Connections open on first use.
    pub fn connect_lazy(url: &str) -> StoreResult<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Invalid(
                "an in-memory SQLite database would vanish with each command; name a file, like sqlite:./taskbox.db".to_owned(),
            ));
        }
        let path = url
            .strip_prefix("sqlite:")
            .unwrap_or(url)
            .trim_start_matches("//");
        if path.split('?').next().unwrap_or_default().is_empty() {
            return Err(StoreError::Invalid(
                "`sqlite:` without a file name gives each connection its own temporary database that vanishes with it; name a file, like sqlite:./taskbox.db".to_owned(),
            ));
        }
        let options: SqliteConnectOptions = url.parse()?;
        Ok(Self::with_options(options, true))
    }

    /// Like [`SqliteStore::connect_lazy`], for commands that only read: a
    /// missing file is [`StoreError::NotMigrated`] and nothing is created.
    pub fn connect_existing(url: &str) -> StoreResult<Self> {
        let store = Self::connect_lazy(url)?;
        if !store.database().exists() {
            return Err(StoreError::NotMigrated);
        }
        let options: SqliteConnectOptions = url.parse()?;
        Ok(Self::with_options(options, false))
    }

    /// Open (and create when missing) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Self {
        Self::with_options(SqliteConnectOptions::new().filename(path), true)
    }

    fn with_options(options: SqliteConnectOptions, create: bool) -> Self {
        let options = options
            .create_if_missing(create)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);
        let database = options.get_filename().to_path_buf();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| Box::pin(use_wal(conn)))
            .after_release(|conn, _| Box::pin(async move { Ok(usable_after_release(conn)) }))
            .connect_lazy_with(options.clone());
        let reader = SqlitePoolOptions::new()
            .max_connections(DEFAULT_READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let (wake, _) = broadcast::channel(WAKE_BUFFER);
        SqliteStore {
            writer,
            reader,
            shared: Arc::new(Shared {
                database,
                wake,
                worker_lock: Mutex::new(None),
                queues_seen: QueuesSeen::default(),
            }),
            max_args_bytes: DEFAULT_MAX_ARGS_BYTES,
            external_poll: EXTERNAL_POLL_INTERVAL,
        }
    }

    /// The same store, its subscribers polling for other processes'
    /// changes every `every` besides watching the files.
    pub fn with_external_poll(mut self, every: Duration) -> Self {
        self.external_poll = every;
        self
    }

    /// The database file, as it was named.
    pub fn database(&self) -> &Path {
        &self.shared.database
    }

    /// The file whose lock admits one worker process: `<database>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.shared.database.clone().into_os_string();
        name.push(WORKER_LOCK_SUFFIX);
        PathBuf::from(name)
    }

    /// Close every connection, for every clone. The last connection to go
    /// checkpoints the WAL into the database file and removes it.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    fn wake(&self, notification: Notification) {
        // No subscriber is not an error: nobody needs waking.
        let _ = self.shared.wake.send(notification);
    }
}

/// Whether the writer connection may go back to the pool. A transaction
/// whose `COMMIT` failed (a full disk: SQLite rolls it back by itself) or
/// whose rollback failed leaves sqlx counting it as open, and every later
/// `BEGIN` on that connection would fail for good ("attempted to call
/// begin_with at non-zero transaction depth"). Such a connection is closed
/// instead and the next write opens a fresh one. (A rollback still queued
/// from a dropped transaction also counts as open here: closing that
/// connection costs a reconnect, only after a failed write.)
fn usable_after_release(conn: &mut SqliteConnection) -> bool {
    use sqlx::Connection;
    let usable = !conn.is_in_transaction();
    if !usable {
        tracing::debug!("replacing the SQLite writer connection left inside a transaction");
    }
    usable
}

/// True for SQLite's "database or disk is full" and I/O errors: the write
/// may succeed once space returns, so the caller should keep what it holds
/// and try again.
pub(crate) fn is_disk_trouble(err: &sqlx::Error) -> bool {
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>())
        .and_then(|db| sqlx::error::DatabaseError::code(db)?.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_IOERR | SQLITE_FULL))
}

/// Switch the database to WAL (a lasting property of the file). Switching a
/// new database takes an exclusive lock the busy timeout does not cover, so
/// a concurrent first start retries here for as long as that timeout.
async fn use_wal(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    loop {
        match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(
                        "SQLite kept journal mode `{mode}` instead of WAL; readers will wait for writers"
                    );
                }
                return Ok(());
            }
            Err(err) if is_busy(&err) && started.elapsed() < BUSY_TIMEOUT => {
                tokio::time::sleep(WAL_RETRY).await;
            }
            Err(err) => return Err(err),
        }
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn decode_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(message.into()))
}

fn time(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| decode_error(format!("{micros} is not a time in microseconds")))
}

fn optional_time(micros: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    micros.map(time).transpose()
}

fn status(text: &str) -> StoreResult<Status> {
    text.parse().map_err(decode_error)
}

/// A JSON array of ids or names, for `json_each`.
fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("a slice of ids or names serialises")
}

/// A scope's queues and plugins as the JSON arrays the statements take,
/// NULL for "all".
fn scope_arrays(scope: &Scope<'_>) -> (Option<String>, Option<String>) {
    (
        (!scope.queues.is_empty()).then(|| json_array(scope.queues)),
        scope.plugins.map(json_array),
    )
}

/// A task row as SQLite stores it.
#[derive(sqlx::FromRow)]
struct TaskRow {
    id: i64,
    queue: String,
    key: Option<String>,
    plugin: String,
    args: Vec<u8>,
    status: String,
    priority: i32,
    attempt: i32,
    max_attempts: i32,
    timeout_ms: Option<i64>,
    run_at: i64,
    enqueued_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    plugin_digest: Option<String>,
    result: Option<Vec<u8>>,
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    error: Option<String>,
    errors: String,
    worker_id: Option<String>,
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;

    fn try_from(row: TaskRow) -> StoreResult<TaskRecord> {
        let errors = serde_json::from_str(&row.errors).map_err(|err| {
            decode_error(format!(
                "the errors of task {} are not a JSON array of strings: {err}",
                row.id
            ))
        })?;
        Ok(TaskRecord {
            id: row.id,
            queue: row.queue,
            key: row.key,
            plugin: row.plugin,
            args: row.args,
            // Args come as JSON from Postgres's SQL function only.
            args_json: None,
            status: status(&row.status)?,
            priority: row.priority,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            timeout_ms: row.timeout_ms,
            run_at: time(row.run_at)?,
            enqueued_at: time(row.enqueued_at)?,
            started_at: optional_time(row.started_at)?,
            finished_at: optional_time(row.finished_at)?,
            plugin_digest: row.plugin_digest,
            result: row.result,
            stdout: row.stdout,
            stderr: row.stderr,
            error: row.error,
            errors,
            worker_id: row.worker_id,
        })
    }
}

/// A claimed row with the columns that order the batch.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimRow {
    #[sqlx(flatten)]
    pub task: ClaimedTask,
    priority: i32,
    run_at: i64,
    status: String,
}

type SqliteQueryAs<'q> =
    sqlx::query::QueryAs<'q, Sqlite, ClaimRow, sqlx::sqlite::SqliteArguments<'q>>;

/// Run a claim `statement` (its parameters after the ninth bound by
/// `more`) for up to `limit` tasks: the rows it made `running`, in claim
/// order (`priority, run_at, id`). Rows it refused ended `error` there and
/// are not handed out.
pub(super) async fn claim_rows<'q>(
    conn: &mut SqliteConnection,
    statement: &'q str,
    request: &'q ClaimRequest<'_>,
    limit: usize,
    now: i64,
    more: impl FnOnce(SqliteQueryAs<'q>) -> SqliteQueryAs<'q>,
) -> StoreResult<Vec<ClaimRow>> {
    let (queues, plugins) = scope_arrays(&request.scope);
    let query = sqlx::query_as(statement)
        .bind(now)
        .bind(queues)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(request.worker_id)
        .bind(millis(request.default_timeout.min(MAX_TASK_TIMEOUT)))
        .bind(millis(MAX_TASK_TIMEOUT))
        .bind(refused_timeout_reason())
        .bind(plugins)
        .bind(new_claim_token());
    let mut rows: Vec<ClaimRow> = more(query).fetch_all(&mut *conn).await?;
    rows.retain(|row| row.status == Status::Running.as_str());
    // RETURNING has no order of its own; hand tasks out in claim order.
    rows.sort_by_key(|row| (row.priority, row.run_at, row.task.id));
    Ok(rows)
}

/// The first `limit` tasks in claim order of the queues a claim takes one
/// by one ([`SERVED_QUEUES`]): each queue's first `limit`, merged. The walk
/// of [`CLAIM`] over every queue would read through all the waiting tasks
/// of the queues it leaves.
async fn pick_by_queue(
    conn: &mut SqliteConnection,
    request: &ClaimRequest<'_>,
    limit: usize,
    now: i64,
) -> StoreResult<Vec<i64>> {
    let (queues, plugins) = scope_arrays(&request.scope);
    let served: Vec<String> = sqlx::query_scalar(&SERVED_QUEUES)
        .bind(queues)
        .fetch_all(&mut *conn)
        .await?;
    let mut next = Vec::new();
    for queue in &served {
        let rows: Vec<(i64, i32, i64)> = sqlx::query_as(QUEUE_NEXT)
            .bind(queue)
            .bind(now)
            .bind(plugins.as_deref())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
        next.extend(
            rows.into_iter()
                .map(|(id, priority, run_at)| (priority, run_at, id)),
        );
    }
    next.sort_unstable();
    next.truncate(limit);
    Ok(next.into_iter().map(|(_, _, id)| id).collect())
}

impl TaskStore for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        // One write transaction around the whole run, so two processes
        // starting on a new file cannot both apply the same migration.
        // (`run_direct` is `run` for a connection already in hand; `run`
        // itself trips the compiler's `Send` check on `&mut` connections.)
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        MIGRATOR.run_direct(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    fn with_max_args_bytes(mut self, limit: usize) -> Self {
        self.max_args_bytes = limit;
        self
    }

    async fn enqueue(&self, tasks: &[NewTask]) -> StoreResult<Vec<i64>> {
        taskbox_client::task::check(tasks, self.max_args_bytes, Utc::now())?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        let ids = taskbox_client::sqlite::insert(&mut tx, tasks, now_micros()).await?;
        tx.commit().await?;
        // A key new to its queue gets its turn at this process's next claim.
        self.shared.queues_seen.keys.forget_all();
        self.wake(Notification::TasksAvailable);
        Ok(ids)
    }

    async fn claim(&self, request: &ClaimRequest<'_>) -> StoreResult<Vec<ClaimedTask>> {
        self.lock_worker()?;
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        // One writer: the transaction alone makes the limits' counts exact.
        // Whether to look at limited queues at all is looked up at most once
        // per `FLOW_RECHECK`: the plain claim leaves them out by itself.
        let set = match self.shared.queues_seen.fresh() {
            Some(set) => set,
            None => {
                let set: QueuesSet = sqlx::query_as(flow::QUEUES_SET).fetch_one(&mut *tx).await?;
                self.shared.queues_seen.note(set);
                set
            }
        };
        let now = now_micros();
        let mut claimed = if set.limited {
            let mut flow = SqliteFlow { conn: &mut tx, now };
            flow::claim_limited(&mut flow, request, &self.shared.queues_seen.keys).await?
        } else {
            Vec::new()
        };
        let limit = request.limit.saturating_sub(claimed.len());
        if limit > 0 {
            let rows = if set.claims_by_queue(!request.scope.queues.is_empty()) {
                let picked = json_array(&pick_by_queue(&mut tx, request, limit, now).await?);
                claim_rows(&mut tx, &CLAIM_PICKED, request, limit, now, |query| {
                    query.bind(picked)
                })
                .await?
            } else {
                claim_rows(&mut tx, &CLAIM, request, limit, now, |query| query).await?
            };
            claimed.extend(rows.into_iter().map(|row| row.task));
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<u64> {
        if completions.is_empty() {
            return Ok(0);
        }
        let now = now_micros();
        let mut written = 0;
        // The runs this batch wrote: any a queue's limit counted are
        // forgotten, one statement for the batch.
        let mut ended = Vec::with_capacity(completions.len());
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        for completion in completions {
            let recorded = sqlx::query(COMPLETE)
                .bind(completion.id)
                .bind(completion.attempt)
                .bind(completion.transition.status().as_str())
                .bind(completion.transition.result())
                .bind(completion.stdout.as_slice())
                .bind(completion.stderr.as_slice())
                .bind(completion.transition.error())
                .bind(completion.plugin_digest.as_deref())
                .bind(completion.transition.retry_micros())
                .bind(completion.transition.spends_attempt())
                .bind(now)
                .bind(completion.token)
                .bind(ADOPTED_RUN_NOTE)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if recorded > 0 {
                ended.push(completion.id);
            } else {
                sqlx::query(NOTE_LOST_RUN)
                    .bind(completion.id)
                    .bind(completion.token)
                    .bind(completion.lost_run_note())
                    .execute(&mut *tx)
                    .await?;
            }
            written += recorded;
        }
        let freed = sqlx::query(
            "DELETE FROM counted_runs WHERE task_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(&ended))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if freed > 0 {
            self.wake(Notification::TasksAvailable);
        }
        Ok(written)
    }

    async fn get(&self, id: i64) -> StoreResult<Option<TaskRecord>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        let row: Option<TaskRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(TaskRecord::try_from).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<TaskRecord>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR plugin = ?2)
             ORDER BY id DESC LIMIT ?3"
        );
        let rows: Vec<TaskRow> = sqlx::query_as(&sql)
            .bind(filter.status.map(Status::as_str))
            .bind(filter.plugin.as_deref())
            .bind(filter.limit)
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(TaskRecord::try_from).collect()
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY status")
                .fetch_all(&self.reader)
                .await?;
        let mut stats = Stats::default();
        for (name, count) in rows {
            stats.set(status(&name)?, count);
        }
        stats.unserved = sqlx::query_scalar(
            "SELECT DISTINCT plugin FROM tasks t
             WHERE status = 'waiting' AND NOT EXISTS (
                 SELECT 1 FROM workers w, json_each(w.plugins) served
                 WHERE w.heartbeat_at > ?1 AND served.value = t.plugin)
             ORDER BY plugin",
        )
        .bind(now_micros().saturating_sub(micros(LIVE_WORKER_TTL)))
        .fetch_all(&self.reader)
        .await?;
        Ok(stats)
    }

    async fn has_pending(&self, scope: &Scope<'_>) -> StoreResult<bool> {
        let (queues, plugins) = scope_arrays(scope);
        Ok(sqlx::query_scalar(&HAS_PENDING)
            .bind(now_micros())
            .bind(queues)
            .bind(plugins)
            .fetch_one(&self.reader)
            .await?)
    }

    async fn wait_until_ended(&self, id: i64) -> StoreResult<Option<TaskRecord>> {
        match taskbox_client::sqlite::wait_until_ended(&self.reader, id).await? {
            Some(_) => self.get(id).await,
            None => Ok(None),
        }
    }

    async fn record_schemas(&self, schemas: &PluginSchemas) -> StoreResult<()> {
        sqlx::query(RECORD_SCHEMAS)
            .bind(&schemas.digest)
            .bind(&schemas.args)
            .bind(&schemas.result)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn schemas(&self, digest: &str) -> StoreResult<Option<PluginSchemas>> {
        let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(SCHEMAS_OF)
            .bind(digest)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|(args, result)| PluginSchemas {
            digest: digest.to_owned(),
            args,
            result,
        }))
    }

    async fn heartbeat(&self, worker_id: &str, plugins: &[String]) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO workers (id, started_at, heartbeat_at, plugins) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                            plugins = excluded.plugins",
        )
        .bind(worker_id)
        .bind(now_micros())
        .bind(json_array(plugins))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn deregister(&self, worker_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM workers WHERE id = ?1")
            .bind(worker_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn lost(&self, request: &RescueRequest<'_>) -> StoreResult<Vec<LostRun>> {
        let now = now_micros();
        Ok(sqlx::query_as(LOST)
            .bind(new_claim_token())
            .bind(now.saturating_sub(micros(request.grace)))
            .bind(request.worker_id)
            .bind(json_array(request.in_flight))
            .bind(now.saturating_sub(micros(request.worker_ttl)))
            .fetch_all(&self.writer)
            .await?)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<bool> {
        Ok(sqlx::query(SET_PAUSED)
            .bind(queue)
            .bind(paused.then(now_micros))
            .execute(&self.writer)
            .await?
            .rows_affected()
            > 0)
    }

    async fn set_flow(&self, queue: &str, change: &FlowChange) -> StoreResult<()> {
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        sqlite_flow::set_flow(&mut tx, queue, change).await?;
        tx.commit().await?;
        self.shared.queues_seen.forget();
        self.wake(Notification::TasksAvailable);
        Ok(())
    }

    async fn queues(&self) -> StoreResult<Vec<QueueInfo>> {
        let rows: Vec<QueueRow> = sqlx::query_as(&format!(
            "SELECT name, waiting, running, paused = 1 AS paused, max_running, key_limit,
                    rate_count, rate_window_ms, rate_per_key = 1 AS rate_per_key
             FROM ({QUEUES})"
        ))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(QueueInfo::from).collect())
    }

    async fn cancel(&self, id: i64) -> StoreResult<CancelOutcome> {
        // Inside one write transaction the row cannot change under us.
        let now = now_micros();
        let mut tx = self.writer.begin_with(BEGIN_IMMEDIATE).await?;
        let found: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let outcome = match found.as_deref().map(status).transpose()? {
            None => CancelOutcome::NotFound,
            Some(Status::Waiting) => {
                sqlx::query(CANCEL_WAITING)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Cancelled
            }
            Some(Status::Running) => {
                sqlx::query(CANCEL_RUNNING)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Interrupting
            }
            Some(finished) => CancelOutcome::AlreadyFinished(finished),
        };
        tx.commit().await?;
        if outcome == CancelOutcome::Interrupting {
            self.wake(Notification::Cancel(id));
        }
        Ok(outcome)
    }

    async fn subscribe(&self) -> StoreResult<mpsc::Receiver<Notification>> {
        let mut wakes = self.shared.wake.subscribe();
        let (sender, receiver) = mpsc::channel(NOTIFY_BUFFER);
        let reader = self.reader.clone();
        // Watch first, then look once: whatever another process writes
        // after this returns is either in that look or a change after it.
        let mut changes = FileChanges::watch(self.database());
        let mut outside = ExternalWatch::default();
        outside.look(&reader).await;
        let external_poll = self.external_poll;
        tokio::spawn(async move {
            let mut poll = tokio::time::interval_at(
                tokio::time::Instant::now() + external_poll,
                external_poll,
            );
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let events = tokio::select! {
                    woken = wakes.recv() => match woken {
                        Ok(notification) => {
                            if let Notification::Cancel(id) = notification {
                                // Passed on now; the poll need not repeat it.
                                outside.cancels_sent.insert(id);
                            }
                            vec![notification]
                        }
                        // Missed wake-ups: look for tasks; missed cancels
                        // are found by the next poll.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            vec![Notification::TasksAvailable]
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = FileChanges::next(&mut changes) => outside.look(&reader).await,
                    _ = poll.tick() => outside.look(&reader).await,
                    _ = sender.closed() => break,
                };
                for event in events {
                    if sender.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    fn lock_worker(&self) -> StoreResult<()> {
        let mut held = self
            .shared
            .worker_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let path = self.lock_path();
        let lock_error = |source| StoreError::LockFile {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {
                // Name the holder for whoever is refused next; the lock,
                // not this text, is what counts.
                let pid = format!("{}\n", std::process::id());
                file.set_len(0)
                    .and_then(|()| file.write_all(pid.as_bytes()))
                    .map_err(lock_error)?;
                *held = Some(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                let database = std::path::absolute(&self.shared.database)
                    .unwrap_or_else(|_| self.shared.database.clone());
                Err(StoreError::WorkerLocked { database, holder })
            }
            Err(std::fs::TryLockError::Error(source)) => Err(lock_error(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewTask;

    /// A claim beside a paused queue's backlog (or of named queues) reads
    /// each queue it serves from that queue's first task: no statement it
    /// runs walks the claim order over every queue or scans the table.
    #[tokio::test]
    async fn a_claim_queue_by_queue_reads_no_other_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("taskbox.db"));
        store.migrate().await.unwrap();
        let backlog: Vec<NewTask> = (0..20_000)
            .map(|_| NewTask::new("add", vec![0]).queue("bulk"))
            .collect();
        store.enqueue(&backlog).await.unwrap();
        store
            .enqueue(&[NewTask::new("add", vec![0])])
            .await
            .unwrap();
        assert!(store.set_paused("bulk", true).await.unwrap());
        let mut conn = store.writer.acquire().await.unwrap();
        sqlx::query("ANALYZE").execute(&mut *conn).await.unwrap();
        for statement in [
            SERVED_QUEUES.as_str(),
            QUEUE_NEXT,
            CLAIM_PICKED.as_str(),
            HAS_PENDING.as_str(),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {statement}"))
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            let plan: Vec<String> = plan.into_iter().map(|row| row.3).collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("tasks_claim"), "{statement}\n{plan}");
            assert!(!plan.contains("SCAN tasks"), "{statement}\n{plan}");
            assert!(!plan.contains("SCAN t\n"), "{statement}\n{plan}");
        }
    }
}

//! The client's statements on SQLite: insert tasks and wait for one to end.
//! SQLite tells no other process of a change, so a waiter looks every
//! [`WAIT_POLL`]. The worker's store inserts through this module too.

use std::time::Duration;

use crate::TaskState;
use crate::task::NewTask;

/// How often a waiter looks at its task.
pub const WAIT_POLL: Duration = Duration::from_millis(20);

const INSERT: &str = "
INSERT INTO tasks (queue, plugin, args, priority, max_attempts, timeout_ms, run_at, enqueued_at,
                   key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
RETURNING id";

/// Microseconds since the epoch, as the SQLite store keeps times.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Insert `tasks` on `conn` (inside the caller's transaction, if any), ids
/// in input order, enqueued at `now` (microseconds). Checks nothing: call
/// [`crate::task::check`] first.
pub async fn insert(
    conn: &mut sqlx::SqliteConnection,
    tasks: &[NewTask],
    now: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let id = sqlx::query_scalar(INSERT)
            .bind(task.queue.as_str())
            .bind(task.plugin.as_str())
            .bind(task.args.as_slice())
            .bind(task.priority)
            .bind(task.max_attempts)
            .bind(task.timeout.map(|d| d.as_millis() as i64))
            .bind(task.run_at.map_or(now, |at| at.timestamp_micros()))
            .bind(now)
            .bind(task.key.as_deref())
            .fetch_one(&mut *conn)
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// A task's state, or `None` when there is none with that id.
pub async fn task<'c>(
    executor: impl sqlx::SqliteExecutor<'c>,
    id: i64,
) -> Result<Option<TaskState>, sqlx::Error> {
    sqlx::query_as("SELECT id, plugin, status, attempt, result, error FROM tasks WHERE id = ?1")
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Wait until task `id` has a final status and return its state; `None`
/// when there is no such task.
pub async fn wait_until_ended(
    pool: &sqlx::SqlitePool,
    id: i64,
) -> Result<Option<TaskState>, sqlx::Error> {
    loop {
        match task(pool, id).await? {
            Some(state) if !state.status.is_final() => {}
            ended => return Ok(ended),
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

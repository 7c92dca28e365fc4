//! The client's statements on Postgres: insert tasks (in any transaction of
//! the caller's, on a connection whatever its search path) and wait for a
//! task to end. The worker's store inserts through this module too.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use crate::TaskState;
use crate::schema::SchemaName;
use crate::task::NewTask;

/// A waiter looks at its task this often even without a notification: a
/// safety net for a lost LISTEN connection, not the way it is woken.
pub const WAIT_RECHECK: Duration = Duration::from_secs(5);

/// Insert `tasks` in one statement (all or nothing, ids in input order) and
/// notify the workers of `schema`, which wake at commit. Names are
/// qualified with the schema, so the caller's search path does not matter.
/// Checks nothing: call [`crate::task::check`] first.
pub async fn insert<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    schema: &SchemaName,
    tasks: &[NewTask],
) -> Result<Vec<i64>, sqlx::Error> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "WITH inserted AS (
    INSERT INTO {schema}.tasks (queue, plugin, args, priority, max_attempts, timeout_ms, run_at,
                                key)
    SELECT queue, plugin, args, priority, max_attempts, timeout_ms, coalesce(run_at, now()), key
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::int[], $6::bigint[],
                $7::timestamptz[], $8::text[]) WITH ORDINALITY
         AS n(queue, plugin, args, priority, max_attempts, timeout_ms, run_at, key, ord)
    ORDER BY ord
    RETURNING id
), wake AS (
    SELECT pg_notify($9, '')
)
SELECT id FROM inserted, wake ORDER BY id",
        schema = schema.quoted()
    );
    sqlx::query_scalar(&sql)
        .bind(tasks.iter().map(|t| t.queue.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.plugin.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.args.as_slice()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.priority).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.max_attempts).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.timeout.map(|d| d.as_millis() as i64))
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| t.run_at).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.key.as_deref()).collect::<Vec<_>>())
        .bind(schema.tasks_channel())
        .fetch_all(executor)
        .await
}

/// A task's state, or `None` when there is none with that id.
pub async fn task<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    schema: &SchemaName,
    id: i64,
) -> Result<Option<TaskState>, sqlx::Error> {
    let sql = format!(
        "SELECT id, plugin, status, attempt, result, error FROM {}.tasks WHERE id = $1",
        schema.quoted()
    );
    sqlx::query_as(&sql).bind(id).fetch_optional(executor).await
}

/// Wait until task `id` has a final status and return its state; `None`
/// when there is no such task. The waiter marks the row and listens: the
/// schema's trigger tells it at the commit that ends the task, whichever
/// path ends it.
pub async fn wait_until_ended(
    pool: &PgPool,
    schema: &SchemaName,
    id: i64,
) -> Result<Option<TaskState>, sqlx::Error> {
    // Listen first, then mark: an end after the mark is told, and one
    // before it is seen by the first look.
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(&schema.ended_channel()).await?;
    let mark = format!(
        "UPDATE {}.tasks SET waited = true WHERE id = $1 RETURNING id",
        schema.quoted()
    );
    let marked: Option<i64> = sqlx::query_scalar(&mark)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    if marked.is_none() {
        return Ok(None);
    }
    let wanted = id.to_string();
    loop {
        match task(pool, schema, id).await? {
            Some(state) if !state.status.is_final() => {}
            ended => return Ok(ended),
        }
        // Until this task's notification, or WAIT_RECHECK without one.
        while let Ok(told) = tokio::time::timeout(WAIT_RECHECK, listener.recv()).await {
            if told?.payload() == wanted {
                break;
            }
        }
    }
}

//! The SQLite statements of a claim of limited queues
//! ([`super::flow::FlowTransaction`]), one method per statement, and of the
//! commands that change a queue's flow settings. SQLite has one writer, so
//! the claim's write transaction alone keeps the counts exact; what to
//! claim is decided in [`super::flow`].

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::SqliteConnection;

use super::flow::{self, Allowance, FlowChange, FlowRecord, FlowTransaction, QueueFlow, Running};
use super::sqlite::{CLAIM_KEYED, CLAIM_LIMITED, claim_rows};
use super::{ClaimRequest, ClaimedTask, StoreResult};

/// The limited queues among `?1` (a JSON array, NULL: all), by name;
/// paused ones are left alone.
const LIMITED: &str = concat!(
    "
SELECT name, max_running, key_limit, rate_count, rate_window_ms, rate_per_key = 1, starts,
       key_cursor
FROM queues
WHERE ",
    flow::limited_queue!(),
    "
  AND paused_at IS NULL
  AND (?1 IS NULL OR name IN (SELECT value FROM json_each(?1)))
ORDER BY name"
);

static WAITING_KEYS: LazyLock<String> =
    LazyLock::new(|| flow::WAITING_KEYS.replace("{waiting}", "t.status = 'waiting'"));

const KEY_STARTS: &str = "
SELECT key, starts FROM queue_keys
WHERE queue = ?1 AND key IN (SELECT value FROM json_each(?2))";

const HAS_KEYLESS: &str = "
SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'waiting' AND queue = ?1 AND key IS NULL
               AND run_at <= ?2)";

/// A row per counted run, written by the claim and deleted by the
/// completion that ends it.
const RUN_BOOK: flow::RunBook = flow::RunBook {
    running: "SELECT key, count(*) FROM counted_runs WHERE queue = $1 GROUP BY key",
    recount: "
INSERT INTO counted_runs (task_id, queue, key)
SELECT id, queue, key FROM tasks WHERE status = 'running' AND queue = $1
ON CONFLICT (task_id) DO NOTHING",
    forget: "DELETE FROM counted_runs WHERE queue = $1",
};

const COUNT_RUNS: &str = "
INSERT INTO counted_runs (task_id, queue, key)
SELECT id, queue, key FROM tasks WHERE id IN (SELECT value FROM json_each(?1))";

const RECORD_QUEUE: &str = "
UPDATE queues SET starts = coalesce(?2, starts),
                  key_cursor = CASE WHEN ?3 THEN ?4 ELSE key_cursor END
WHERE name = ?1";

const RECORD_KEY: &str = "
INSERT INTO queue_keys (queue, key, starts) VALUES (?1, ?2, ?3)
ON CONFLICT (queue, key) DO UPDATE SET starts = excluded.starts";

/// One claim of limited queues, in the claim's write transaction.
pub(super) struct SqliteFlow<'c> {
    pub conn: &'c mut SqliteConnection,
    /// The claim's clock (microseconds): its tasks' `started_at` and the
    /// starts a rate counts.
    pub now: i64,
}

fn starts_of(json: &str) -> Vec<i64> {
    serde_json::from_str(json).unwrap_or_default()
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain values serialise")
}

impl FlowTransaction for SqliteFlow<'_> {
    async fn lock_limited(&mut self, queues: &[String]) -> StoreResult<(Vec<QueueFlow>, i64)> {
        type Row = (
            String,
            Option<i32>,
            Option<i32>,
            Option<i32>,
            Option<i64>,
            bool,
            String,
            Option<String>,
        );
        let scope = (!queues.is_empty()).then(|| json(queues));
        let rows: Vec<Row> = sqlx::query_as(LIMITED)
            .bind(scope)
            .fetch_all(&mut *self.conn)
            .await?;
        let flows = rows
            .into_iter()
            .map(
                |(name, max_running, key_limit, count, window, per_key, starts, cursor)| {
                    QueueFlow::stored(
                        name,
                        max_running,
                        key_limit,
                        count,
                        window,
                        per_key,
                        starts_of(&starts),
                        cursor,
                    )
                },
            )
            .collect();
        Ok((flows, self.now))
    }

    async fn running(&mut self, queue: &str) -> StoreResult<Running> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(RUN_BOOK.running)
            .bind(queue)
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(Running::of(rows))
    }

    async fn waiting_keys(
        &mut self,
        queue: &str,
        after: Option<&str>,
        until: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<String>> {
        let keys: Vec<String> = sqlx::query_scalar(&WAITING_KEYS)
            .bind(queue)
            .bind(after)
            .bind(until)
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(keys)
    }

    async fn key_starts(
        &mut self,
        queue: &str,
        keys: &[String],
    ) -> StoreResult<HashMap<String, Vec<i64>>> {
        let rows: Vec<(String, String)> = sqlx::query_as(KEY_STARTS)
            .bind(queue)
            .bind(json(keys))
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, starts)| (key, starts_of(&starts)))
            .collect())
    }

    async fn has_keyless(&mut self, queue: &str) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(HAS_KEYLESS)
            .bind(queue)
            .bind(self.now)
            .fetch_one(&mut *self.conn)
            .await?)
    }

    async fn claim_queue(
        &mut self,
        queue: &str,
        allowance: &Allowance,
        count_runs: bool,
        request: &ClaimRequest<'_>,
    ) -> StoreResult<Vec<ClaimedTask>> {
        let shares = allowance.shares.as_ref().map(|shares| {
            let turns: Vec<serde_json::Value> = shares
                .keys
                .iter()
                .zip(&shares.shares)
                .map(|(key, share)| serde_json::json!({"key": key, "share": share}))
                .collect();
            json(&turns)
        });
        let statement: &str = match shares {
            Some(_) => &CLAIM_KEYED,
            None => &CLAIM_LIMITED,
        };
        let rows = claim_rows(
            self.conn,
            statement,
            request,
            allowance.room,
            self.now,
            |query| {
                let query = query.bind(queue.to_owned());
                match shares {
                    Some(shares) => query.bind(shares),
                    None => query,
                }
            },
        )
        .await?;
        let tasks: Vec<ClaimedTask> = rows.into_iter().map(|row| row.task).collect();
        if count_runs && !tasks.is_empty() {
            let ids: Vec<i64> = tasks.iter().map(|task| task.id).collect();
            sqlx::query(COUNT_RUNS)
                .bind(json(&ids))
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(tasks)
    }

    async fn record(&mut self, queue: &str, record: &FlowRecord) -> StoreResult<()> {
        if record.starts.is_some() || record.key_cursor.is_some() {
            sqlx::query(RECORD_QUEUE)
                .bind(queue)
                .bind(record.starts.as_ref().map(json))
                .bind(record.key_cursor.is_some())
                .bind(record.key_cursor.clone().flatten())
                .execute(&mut *self.conn)
                .await?;
        }
        for (key, starts) in &record.key_starts {
            sqlx::query(RECORD_KEY)
                .bind(queue)
                .bind(key)
                .bind(json(starts))
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Apply `change` to `queue`, in the caller's write transaction; the only
/// writer, so no claim can run between the count and the commit.
pub(super) async fn set_flow(
    conn: &mut SqliteConnection,
    queue: &str,
    change: &FlowChange,
) -> StoreResult<()> {
    sqlx::query(flow::MAKE_QUEUE)
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    let before = counts_runs(conn, queue).await?;
    let (number, window, per_key) = change.columns();
    let mut query = sqlx::query(change.statement()).bind(queue).bind(number);
    if matches!(change, FlowChange::Rate { .. }) {
        query = query.bind(window).bind(per_key).bind("[]");
    }
    query.execute(&mut *conn).await?;
    let after = counts_runs(conn, queue).await?;
    if let Some(statement) = flow::recount(before, after, &RUN_BOOK) {
        sqlx::query(statement)
            .bind(queue)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn counts_runs(conn: &mut SqliteConnection, queue: &str) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(flow::COUNTS_RUNS)
        .bind(queue)
        .fetch_one(conn)
        .await?)
}

//! The Postgres statements of a claim of limited queues
//! ([`super::flow::FlowTransaction`]), one method per statement, and of the
//! commands that change a queue's flow settings. What to claim is decided
//! in [`super::flow`].

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::PgConnection;

use super::flow::{self, Allowance, FlowChange, FlowRecord, FlowTransaction, QueueFlow, Running};
use super::postgres::{CLAIM_KEYED, CLAIM_LIMITED, ClaimedRow, millis};
use super::{ClaimRequest, ClaimedTask, MAX_TASK_TIMEOUT, StoreResult, refused_timeout_reason};

/// The settings of the limited queues among `$1` (NULL: all), locked in
/// name order so that two claims never wait on each other in a circle, and
/// the transaction's clock in microseconds since the epoch: the time the
/// claim gives its tasks as `started_at`, so that the starts a rate counts
/// are the ones the rows show. Paused queues are left alone.
const LOCK_LIMITED: &str = concat!(
    "
SELECT name, max_running, key_limit, rate_count, rate_window_ms, rate_per_key, starts, key_cursor,
       (extract(epoch FROM now()) * 1000000)::bigint AS now
FROM queues
WHERE ",
    flow::limited_queue!(),
    "
  AND paused_at IS NULL
  AND ($1::text[] IS NULL OR name = ANY($1))
ORDER BY name
FOR UPDATE"
);

pub(super) static WAITING_KEYS: LazyLock<String> =
    LazyLock::new(|| flow::WAITING_KEYS.replace("{waiting}", "t.is_waiting"));

/// The recent starts of the keys `$2` of queue `$1`.
const KEY_STARTS: &str = "SELECT key, starts FROM queue_keys WHERE queue = $1 AND key = ANY($2)";

const HAS_KEYLESS: &str = "
SELECT EXISTS (SELECT 1 FROM tasks WHERE is_waiting AND queue = $1 AND key IS NULL
               AND run_at <= now())";

/// A row per claim: the claim's tasks, their keys and its token (the
/// claim writes it, and its completions empty it: see
/// [`super::postgres`]).
const RUN_BOOK: flow::RunBook = flow::RunBook {
    running: "
SELECT k.key, count(*) FROM counted_claims c CROSS JOIN LATERAL unnest(c.keys) AS k(key)
WHERE c.queue = $1
GROUP BY k.key",
    recount: "
INSERT INTO counted_claims (queue, task_ids, keys, token)
SELECT $1, array_agg(id), array_agg(key), claim_token FROM tasks
WHERE status = 'running' AND queue = $1
GROUP BY claim_token",
    forget: "DELETE FROM counted_claims WHERE queue = $1",
};

const RECORD_QUEUE: &str = "
UPDATE queues SET starts = coalesce($2, starts),
                  key_cursor = CASE WHEN $3 THEN $4 ELSE key_cursor END
WHERE name = $1";

const RECORD_KEYS: &str = "
INSERT INTO queue_keys (queue, key, starts)
SELECT $1, k.key, string_to_array(k.starts, ',')::bigint[]
FROM unnest($2::text[], $3::text[]) AS k(key, starts)
ON CONFLICT (queue, key) DO UPDATE SET starts = excluded.starts";

/// One claim of limited queues, in its transaction.
pub(super) struct PgFlow<'c> {
    pub conn: &'c mut PgConnection,
    pub token: i64,
    /// The lease each queue's claim recorded, with its tasks: noted in the
    /// store's lease book once the transaction commits.
    pub leases: Vec<(i64, Vec<i64>)>,
}

impl FlowTransaction for PgFlow<'_> {
    async fn lock_limited(&mut self, queues: &[String]) -> StoreResult<(Vec<QueueFlow>, i64)> {
        type Row = (
            String,
            Option<i32>,
            Option<i32>,
            Option<i32>,
            Option<i64>,
            bool,
            Vec<i64>,
            Option<String>,
            i64,
        );
        let scope = (!queues.is_empty()).then_some(queues);
        let rows: Vec<Row> = sqlx::query_as(LOCK_LIMITED)
            .bind(scope)
            .fetch_all(&mut *self.conn)
            .await?;
        // With no limited queue in scope nothing is claimed, at no time.
        let now = rows.first().map_or(0, |row| row.8);
        let flows = rows
            .into_iter()
            .map(
                |(name, max_running, key_limit, count, window, per_key, starts, cursor, _)| {
                    QueueFlow::stored(
                        name,
                        max_running,
                        key_limit,
                        count,
                        window,
                        per_key,
                        starts,
                        cursor,
                    )
                },
            )
            .collect();
        Ok((flows, now))
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
        Ok(sqlx::query_as(KEY_STARTS)
            .bind(queue)
            .bind(keys)
            .fetch_all(&mut *self.conn)
            .await?
            .into_iter()
            .collect())
    }

    async fn has_keyless(&mut self, queue: &str) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(HAS_KEYLESS)
            .bind(queue)
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
        let statement: &str = match allowance.shares {
            Some(_) => &CLAIM_KEYED,
            None => &CLAIM_LIMITED,
        };
        let scope = &request.scope;
        let mut query = sqlx::query_as::<_, ClaimedRow>(statement)
            .bind(i64::try_from(allowance.room).unwrap_or(i64::MAX))
            .bind(request.worker_id)
            .bind(millis(request.default_timeout.min(MAX_TASK_TIMEOUT)))
            .bind((!scope.queues.is_empty()).then_some(scope.queues))
            .bind(millis(MAX_TASK_TIMEOUT))
            .bind(refused_timeout_reason())
            .bind(scope.plugins)
            .bind(self.token)
            .bind(queue)
            .bind(count_runs);
        if let Some(shares) = &allowance.shares {
            query = query.bind(&shares.keys).bind(&shares.shares);
        }
        let mut rows = query.fetch_all(&mut *self.conn).await?;
        rows.sort_unstable_by_key(ClaimedRow::claim_order);
        if let Some(first) = rows.first() {
            let ids = rows.iter().map(|row| row.task.id).collect();
            self.leases.push((first.lease, ids));
        }
        Ok(rows.into_iter().map(|row| row.task).collect())
    }

    async fn record(&mut self, queue: &str, record: &FlowRecord) -> StoreResult<()> {
        if record.starts.is_some() || record.key_cursor.is_some() {
            sqlx::query(RECORD_QUEUE)
                .bind(queue)
                .bind(record.starts.as_deref())
                .bind(record.key_cursor.is_some())
                .bind(record.key_cursor.clone().flatten())
                .execute(&mut *self.conn)
                .await?;
        }
        if !record.key_starts.is_empty() {
            let (keys, starts): (Vec<&str>, Vec<String>) = record
                .key_starts
                .iter()
                .map(|(key, starts)| (key.as_str(), joined(starts)))
                .unzip();
            sqlx::query(RECORD_KEYS)
                .bind(queue)
                .bind(keys)
                .bind(starts)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Starts as one text value: Postgres has no array of arrays of uneven
/// length to unnest.
fn joined(starts: &[i64]) -> String {
    starts
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether queue `$1` had a limit or a rate, its row locked (made first
/// by [`flow::MAKE_QUEUE`]).
const QUEUE_LIMITED: &str = concat!(
    "SELECT ",
    flow::limited_queue!(),
    " FROM queues WHERE name = $1 FOR UPDATE"
);

/// Apply `change` to `queue`, in the caller's transaction.
///
/// A queue that had no limit or rate was claimed by the plain claim, which
/// neither counts its runs nor takes its row's lock: before it becomes
/// limited, the table lock waits out every claim under way and holds off
/// new ones until the commit, so the count of its running tasks is exact
/// and no claim after it can miss the settings.
pub(super) async fn set_flow(
    conn: &mut PgConnection,
    queue: &str,
    change: &FlowChange,
) -> StoreResult<()> {
    sqlx::query(flow::MAKE_QUEUE)
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    let was_limited: bool = sqlx::query_scalar(QUEUE_LIMITED)
        .bind(queue)
        .fetch_one(&mut *conn)
        .await?;
    if !was_limited && change.limits() {
        sqlx::query("LOCK TABLE tasks IN SHARE MODE")
            .execute(&mut *conn)
            .await?;
    }
    let before = counts_runs(conn, queue).await?;
    let (number, window, per_key) = change.columns();
    let mut query = sqlx::query(change.statement()).bind(queue).bind(number);
    if matches!(change, FlowChange::Rate { .. }) {
        query = query.bind(window).bind(per_key).bind(Vec::<i64>::new());
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

async fn counts_runs(conn: &mut PgConnection, queue: &str) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(flow::COUNTS_RUNS)
        .bind(queue)
        .fetch_one(conn)
        .await?)
}

//! Taskbox keeps its own tables healthy (issue 14, item 4): this server runs
//! with autovacuum off, and a worker vacuums the tasks table once its dead
//! row versions pass the threshold, while it serves.

use crate::common;

use std::time::Duration;

use common::process::PROCESS_WAIT;
use common::*;
use sqlx::PgPool;
use taskbox::store::{
    ANALYZE_EVERY, NewTask, PgStore, TaskStore, VACUUM_BUSY_FACTOR, VACUUM_DEAD_FRACTION,
    VACUUM_DEAD_ROWS, VACUUM_MIN_DEAD_ROWS,
};
use taskbox::worker::{Shutdown, Worker};

const ROWS: i64 = 2 * VACUUM_DEAD_ROWS;

/// Rewrite every task row twice, as claims and completions do, and wait for
/// the dead rows to show in the statistics.
async fn rewrite_twice(pool: &PgPool) {
    let rewrite = "UPDATE taskbox.tasks SET priority = priority + 1";
    leave_dead_rows(pool, "tasks", &[rewrite, rewrite], ROWS).await;
}

/// Run `statements` on one connection, and wait for the `added` dead rows
/// they leave in taskbox's `table` to show in the statistics.
async fn leave_dead_rows(pool: &PgPool, table: &str, statements: &[&str], added: i64) {
    let before = dead_rows_and_vacuums_of(pool, table).await.0;
    let mut conn = pool.acquire().await.unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    wait::until(
        "the dead rows to show in the statistics",
        PROCESS_WAIT,
        || async { dead_rows_and_vacuums_of(pool, table).await.0 >= before + added },
    )
    .await;
}

/// A store of [`ROWS`] tasks no worker here runs, each rewritten twice.
async fn with_dead_rows(pool: &PgPool) -> PgStore {
    let store = store(pool.clone()).await;
    let tasks: Vec<NewTask> = (0..ROWS).map(|_| NewTask::new("absent", vec![0])).collect();
    for chunk in tasks.chunks(5_000) {
        store.enqueue(chunk).await.unwrap();
    }
    // The thresholds scale with the live rows: until the enqueues' counts
    // reach the statistics (each backend reports within about a second), a
    // tidy reads a table of none and its threshold at the floor.
    wait::until(
        "the live rows to show in the statistics",
        PROCESS_WAIT,
        || async { live_rows(pool).await >= ROWS },
    )
    .await;
    rewrite_twice(pool).await;
    store
}

async fn live_rows(pool: &PgPool) -> i64 {
    tasks_statistic(pool, "n_live_tup").await
}

async fn analyzes(pool: &PgPool) -> i64 {
    tasks_statistic(pool, "analyze_count").await
}

/// One of the server's statistics of taskbox's tasks table (`column` of
/// `pg_stat_user_tables`).
async fn tasks_statistic(pool: &PgPool, column: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT {column} FROM pg_stat_user_tables
         WHERE schemaname = 'taskbox' AND relname = 'tasks'"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The dead rows and the vacuums so far of taskbox's `table`.
async fn dead_rows_and_vacuums_of(pool: &PgPool, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables
         WHERE schemaname = 'taskbox' AND relname = $1",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn dead_rows_and_vacuums(pool: &PgPool) -> (i64, i64) {
    dead_rows_and_vacuums_of(pool, "tasks").await
}

#[sqlx::test(migrations = false)]
async fn a_worker_vacuums_the_tasks_table_once_dead_rows_pile_up(pool: PgPool) {
    init_logging();
    let store = with_dead_rows(&pool).await;
    assert_eq!(dead_rows_and_vacuums(&pool).await.1, 0, "vacuumed already");

    let config = taskbox::worker::WorkerConfig {
        tidy_interval: Duration::from_millis(100),
        drain: false,
        ..worker_config(2)
    };
    let shutdown = Shutdown::default();
    let worker = tokio::spawn({
        let (store, shutdown) = (store.clone(), shutdown.clone());
        async move { Worker::new(store, plugins(), config).run(shutdown).await }
    });
    // A vacuum that ran while some other snapshot still saw the old rows
    // leaves them counted; the worker's next look vacuums again.
    wait::until(
        "the worker to vacuum the dead rows away",
        PROCESS_WAIT,
        || async {
            let (dead, vacuums) = dead_rows_and_vacuums(&pool).await;
            vacuums >= 1 && dead < VACUUM_DEAD_ROWS
        },
    )
    .await;
    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Statistics are refreshed at most every [`ANALYZE_EVERY`], not at every
/// vacuum: on a table that has lived, each analyze read a sample of a
/// million rows every few seconds of a drain.
#[sqlx::test(migrations = false)]
async fn a_vacuum_soon_after_an_analyze_does_not_analyze_again(pool: PgPool) {
    let store = with_dead_rows(&pool).await;
    let first = store.tidy(false).await.unwrap();
    assert_eq!(first.analyzed, ["tasks"], "never analyzed: {first:?}");
    assert_eq!(analyzes(&pool).await, 1);

    rewrite_twice(&pool).await;
    let second = store.tidy(false).await.unwrap();
    assert!(
        second.vacuumed.iter().any(|(table, _)| table == "tasks"),
        "the dead rows are vacuumed: {second:?}"
    );
    assert_eq!(
        analyzes(&pool).await,
        1,
        "analyzed again {ANALYZE_EVERY:?} before it was due"
    );
}

/// A worker in the middle of work leaves dead rows past the threshold, but
/// short of [`VACUUM_BUSY_FACTOR`] times it, for a quiet moment: a vacuum
/// beside a short burst took one of its two cores (a drain right after a
/// 1,000,000-task one ran at about half a fresh table's rate).
#[sqlx::test(migrations = false)]
async fn a_busy_worker_leaves_a_vacuum_for_a_quiet_moment(pool: PgPool) {
    let store = with_dead_rows(&pool).await;
    let (dead, _) = dead_rows_and_vacuums(&pool).await;
    let threshold = VACUUM_DEAD_ROWS + (VACUUM_DEAD_FRACTION * ROWS as f64) as i64;
    assert!(
        dead >= threshold && dead < VACUUM_BUSY_FACTOR * threshold,
        "{dead} dead rows: not between the quiet and the busy thresholds"
    );

    let busy = store.tidy(true).await.unwrap();
    assert!(busy.vacuumed.is_empty(), "vacuumed while busy: {busy:?}");
    assert_eq!(dead_rows_and_vacuums(&pool).await.1, 0);
    let quiet = store.tidy(false).await.unwrap();
    assert!(
        quiet.vacuumed.iter().any(|(table, _)| table == "tasks"),
        "the dead rows are vacuumed once quiet: {quiet:?}"
    );
}

/// A small table of wide rows that every claim writes (a claim's counted
/// runs, its lease) is vacuumed once it is more dead than alive, far short
/// of the tasks table's 20,000 dead rows: it grew by a page every claim or
/// two and every completion read it whole.
#[sqlx::test(migrations = false)]
async fn a_small_table_more_dead_than_alive_is_vacuumed(pool: PgPool) {
    let store = store(pool.clone()).await;
    // Ten claims' rows for each the rule asks for, and far fewer than 20,000.
    let dead: i64 = 500;
    assert!((10 * VACUUM_MIN_DEAD_ROWS..VACUUM_DEAD_ROWS).contains(&dead));
    let fill = format!(
        "INSERT INTO taskbox.counted_claims (queue, task_ids, keys)
         SELECT 'mail', array_agg(n), array_agg('tenant-' || n) FROM generate_series(1, 300) n,
                generate_series(1, {dead}) claim
         GROUP BY claim"
    );
    let empty = "DELETE FROM taskbox.counted_claims";
    leave_dead_rows(&pool, "counted_claims", &[&fill, empty], dead).await;
    let bytes = || async {
        sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('taskbox.counted_claims')")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let bytes_before = bytes().await;

    let tidied = store.tidy(false).await.unwrap();
    assert!(
        tidied
            .vacuumed
            .iter()
            .any(|(table, _)| table == "counted_claims"),
        "{dead} dead rows of none alive are left: {tidied:?}"
    );
    let bytes_after = bytes().await;
    assert!(
        bytes_after < bytes_before,
        "the table kept its {bytes_before} bytes"
    );
}

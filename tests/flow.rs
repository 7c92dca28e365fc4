//! Queue limits and rates with real worker processes and real plugins:
//! the database's rows, sampled while they run, never show more running or
//! more starts than the queue allows, and every task still succeeds.

use crate::common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{NewTask, Status, TaskStore};

/// Longest a whole run may take before the test gives up.
const WITHIN: Duration = Duration::from_secs(120);
/// How often the running rows are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// `count` draining worker processes, their logs in `logs`.
fn workers(pool: &PgPool, count: usize, logs: &tempfile::TempDir) -> Vec<Child> {
    (0..count)
        .map(|n| {
            let log = std::fs::File::create(logs.path().join(format!("worker-{n}.log"))).unwrap();
            taskbox(pool)
                .args([
                    "worker",
                    "--drain",
                    "--concurrency",
                    "8",
                    "--timeout",
                    "10s",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("the worker starts")
        })
        .collect()
}

fn logs_of(logs: &tempfile::TempDir) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(logs.path()).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    text
}

/// Sample the running tasks of `queue` until every worker has exited: the
/// most seen at once.
async fn most_running(
    store: &taskbox::store::PgStore,
    queue: &str,
    workers: &mut [Child],
    logs: &tempfile::TempDir,
) -> i64 {
    let started = Instant::now();
    let mut most = 0;
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE status = 'running' AND queue = $1",
        )
        .bind(queue)
        .fetch_one(store.pool())
        .await
        .unwrap();
        most = most.max(running);
        if workers.iter_mut().all(|w| w.try_wait().unwrap().is_some()) {
            return most;
        }
        assert!(
            started.elapsed() < WITHIN,
            "the workers did not drain within {WITHIN:?}: {}",
            logs_of(logs)
        );
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// `taskbox queue ARGS`, which must succeed.
fn set_on_queue(pool: &PgPool, args: &[&str]) {
    let set = run(taskbox(pool).arg("queue").args(args));
    assert!(set.status.success(), "{}", stderr_of(&set));
}

async fn assert_all_succeeded(store: &taskbox::store::PgStore, logs: &tempfile::TempDir) {
    let rows = all_tasks(store).await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|row| row.status != Status::Success)
        .map(|row| (row.id, row.status, row.error.clone()))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", logs_of(logs));
}

#[sqlx::test(migrations = false)]
async fn three_workers_never_run_more_than_the_queue_limit(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let sleep = NewTask {
        queue: "limited".to_owned(),
        ..task(&plugins, "sleep", json!(200)).await
    };
    store.enqueue(&vec![sleep; 40]).await.unwrap();
    set_on_queue(&pool, &["limit", "limited", "2"]);

    let logs = tempfile::tempdir().unwrap();
    let mut running = workers(&pool, 3, &logs);
    let most = most_running(&store, "limited", &mut running, &logs).await;
    assert_eq!(most, 2, "never more than the limit, and the limit reached");
    assert_all_succeeded(&store, &logs).await;
    for worker in &mut running {
        assert!(worker.wait().unwrap().success(), "{}", logs_of(&logs));
    }
}

#[sqlx::test(migrations = false)]
async fn a_rate_holds_over_every_window_across_workers(pool: PgPool) {
    const RATE: usize = 20;
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let add = NewTask {
        queue: "rated".to_owned(),
        ..task(&plugins, "add", json!({"a": 1, "b": 2})).await
    };
    store.enqueue(&vec![add; 3 * RATE]).await.unwrap();
    set_on_queue(&pool, &["rate", "rated", "20/1s"]);

    let logs = tempfile::tempdir().unwrap();
    let mut running = workers(&pool, 2, &logs);
    most_running(&store, "rated", &mut running, &logs).await;
    assert_all_succeeded(&store, &logs).await;

    let rows = all_tasks(&store).await;
    let mut starts: Vec<_> = rows.iter().map(|row| row.started_at.unwrap()).collect();
    starts.sort();
    let last_end = rows
        .iter()
        .map(|row| row.finished_at.unwrap())
        .max()
        .unwrap();
    let took = (last_end - starts[0]).to_std().unwrap();
    assert!(
        took >= Duration::from_millis(2500),
        "60 tasks at 20/1s took {took:?}"
    );
    for (at, start) in starts.iter().enumerate() {
        let window_end = *start + chrono::TimeDelta::seconds(1);
        let in_window = starts[at..].iter().take_while(|s| **s < window_end).count();
        assert!(
            in_window <= RATE,
            "{in_window} starts in the second from {start}: {starts:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_key_limit_lets_small_keys_finish_before_a_big_keys_median(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let add = task(&plugins, "add", json!({"a": 1, "b": 2})).await;
    let keyed = |key: String| NewTask {
        key: Some(key),
        ..add.clone()
    };
    let big: Vec<NewTask> = (0..2000).map(|_| keyed("big".to_owned())).collect();
    let big = store.enqueue(&big).await.unwrap();
    let small: Vec<NewTask> = (0..20)
        .flat_map(|_| (1..=9).map(|k| format!("small-{k}")))
        .map(keyed)
        .collect();
    let small = store.enqueue(&small).await.unwrap();
    set_on_queue(&pool, &["key-limit", "default", "4"]);

    let logs = tempfile::tempdir().unwrap();
    let mut running = workers(&pool, 1, &logs);
    most_running(&store, "default", &mut running, &logs).await;
    assert_all_succeeded(&store, &logs).await;

    let median_big = record(&store, big[big.len() / 2])
        .await
        .finished_at
        .unwrap();
    let mut last_small = None;
    for &id in &small {
        let finished = record(&store, id).await.finished_at.unwrap();
        last_small = last_small.max(Some(finished));
    }
    let last_small = last_small.unwrap();
    assert!(
        last_small < median_big,
        "the small keys' last task finished at {last_small}, the big key's median at {median_big}"
    );
}

//! Two worker processes draining one queue together run every task exactly
//! once: each task ends `success` on its first attempt, the claims the two
//! processes report add up to the number of tasks, and every claim's lease
//! ended with its last outcome.

use crate::common;

use common::process::PROCESS_WAIT;
use common::*;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{Status, TaskStore};
use taskbox::worker::{Shutdown, Worker, WorkerConfig};

const TASKS: usize = 5000;

fn claimed(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|line| line.contains("worker stopped"))
        .find_map(|line| {
            line.split("claimed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no claim count in: {stderr}"))
}

#[sqlx::test(migrations = false)]
async fn two_workers_run_each_task_once(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let template = task(&plugins, "add", json!({"a": 1, "b": 2})).await;
    let tasks = vec![template; TASKS];
    for chunk in tasks.chunks(1000) {
        store.enqueue(chunk).await.unwrap();
    }

    let spawn = || {
        taskbox(&pool)
            .args(["worker", "--drain", "--concurrency", "16"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the worker starts")
    };
    let (first, second) = (spawn(), spawn());
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr_of(&first));
    assert!(second.status.success(), "{}", stderr_of(&second));
    let total = claimed(&stderr_of(&first)) + claimed(&stderr_of(&second));
    assert_eq!(total, TASKS as u64, "claims across both workers");

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.success, TASKS as i64, "{stats:?}");
    let rows = all_tasks(&store).await;
    assert_eq!(rows.len(), TASKS);
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Success && r.attempt == 1)
    );
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM leases")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(leases, 0, "leases left after the drain");
}

/// Claiming ahead never starves a neighbour: a worker holds no more ahead
/// than it would start soon at its pace, so with tasks of a second each,
/// two workers of two slots split eight tasks evenly instead of the first
/// to claim holding six while the second idles.
#[sqlx::test(migrations = false)]
async fn neither_worker_idles_while_the_other_holds_tasks(pool: PgPool) {
    const SLOTS: usize = 2;
    const TASKS: usize = 4 * SLOTS;
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let mut template = task(&plugins, "sleep", json!(1000)).await;
    template.timeout = Some(std::time::Duration::from_secs(30));

    let shutdown = Shutdown::default();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let config = WorkerConfig {
                claim_ahead: TASKS,
                drain: false,
                ..worker_config(SLOTS)
            };
            let worker = Worker::new(store.clone(), plugins.clone(), config);
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();
    wait::until("both workers to start", PROCESS_WAIT, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM taskbox.workers")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 2)
    })
    .await;
    store.enqueue(&vec![template; TASKS]).await.unwrap();
    wait::until("every task to end", PROCESS_WAIT, || async {
        store.stats().await.is_ok_and(|s| s.success == TASKS as i64)
    })
    .await;
    shutdown.stop.cancel();
    let mut claims = Vec::new();
    for worker in workers {
        claims.push(worker.await.unwrap().unwrap().claimed);
    }
    assert_eq!(
        claims,
        [TASKS as u64 / 2, TASKS as u64 / 2],
        "claims of the two workers"
    );
}

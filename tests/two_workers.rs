//! Two worker processes draining one queue together run every task exactly
//! once: each task ends `success` on its first attempt, the claims the two
//! processes report add up to the number of tasks, and every claim's lease
//! ended with its last outcome.

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{Status, TaskStore};

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

//! Preemptive deadlines: a guest spinning in wasm and a guest blocked in a
//! host call both end as `timeout` within the deadline plus 100 ms, while
//! the same worker keeps running other tasks.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::store::{Status, TaskStore};

/// Long enough for the 200 quick tasks at concurrency 8 (about half a second
/// in a debug build) to finish well inside it.
const DEADLINE: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(100);

#[sqlx::test(migrations = false)]
async fn runaway_tasks_time_out_on_deadline_while_others_run(pool: PgPool) {
    let store = store(pool).await;
    // Only the plugins it runs: the worker's first scan of a full folder
    // compiles every plugin, which on a cold cache takes the same cores the
    // quick tasks need.
    let folder = plugins_folder_with(&["forever", "sleep", "add"]);
    let plugins = plugins_in(folder.path(), taskbox::sandbox::SandboxConfig::default());
    let mut forever = task(&plugins, "forever", Value::Null).await;
    let mut sleeper = task(&plugins, "sleep", json!(10_000)).await;
    for task in [&mut forever, &mut sleeper] {
        task.timeout = Some(DEADLINE);
        // Claimed first, so the quick tasks run while these are stuck.
        task.priority = -1;
    }
    let stuck = store.enqueue(&[forever, sleeper]).await.unwrap();
    let mut quick = Vec::new();
    for n in 0..200 {
        quick.push(task(&plugins, "add", json!({"a": n, "b": n})).await);
    }
    let quick_ids = store.enqueue(&quick).await.unwrap();
    drain(&store, &plugins, worker_config(8)).await;

    let mut first_stuck_end = None;
    for id in stuck {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Timeout, "{:?}", row.error);
        assert!(row.error.as_deref().unwrap().contains("timeout"));
        let ran = (row.finished_at.unwrap() - row.started_at.unwrap())
            .to_std()
            .unwrap();
        assert!(ran >= DEADLINE, "ended after {ran:?}, before its deadline");
        assert!(
            ran <= DEADLINE + SLACK,
            "ended after {ran:?}, past deadline + slack"
        );
        first_stuck_end = first_stuck_end.min(row.finished_at).or(row.finished_at);
    }
    let mut last_quick_end = None;
    for id in quick_ids {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Success, "{:?}", row.error);
        last_quick_end = last_quick_end.max(row.finished_at);
    }
    assert!(
        last_quick_end < first_stuck_end,
        "the quick tasks waited for the stuck ones: the last ended at {last_quick_end:?}, the first stuck one at {first_stuck_end:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_fuel_budget_stops_a_runaway_task_deterministically(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins_with(taskbox::sandbox::SandboxConfig {
        fuel: Some(50_000_000),
        ..taskbox::sandbox::SandboxConfig::default()
    });
    let mut forever = task(&plugins, "forever", Value::Null).await;
    forever.timeout = Some(Duration::from_secs(30));
    let fib = task(&plugins, "fib", json!(10)).await;
    let ids = store.enqueue(&[forever, fib]).await.unwrap();
    drain(&store, &plugins, worker_config(2)).await;

    let runaway = record(&store, ids[0]).await;
    assert_eq!(runaway.status, Status::Error, "{:?}", runaway.error);
    let message = runaway.error.unwrap();
    assert!(
        message.contains("fuel budget") && message.contains("50000000"),
        "{message}"
    );
    let ran = (runaway.finished_at.unwrap() - runaway.started_at.unwrap())
        .to_std()
        .unwrap();
    assert!(
        ran < Duration::from_secs(30),
        "fuel, not the deadline, ended it"
    );

    let fib = record(&store, ids[1]).await;
    assert_eq!(fib.status, Status::Success, "{:?}", fib.error);
}

//! Claimed tasks a worker holds but has not started (issue 14, item 1) are
//! treated as running ones are: a cancel ends one at once without running
//! it, and a shutdown gives them back without spending an attempt, while
//! the task that runs finishes.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::process::PROCESS_WAIT;
use common::*;
use serde_json::json;
use sqlx::PgPool;
use taskbox::sandbox::Plugins;
use taskbox::store::{CancelOutcome, PgStore, Status, StoreError, TaskStore};
use taskbox::worker::{Shutdown, Worker, WorkerConfig, WorkerReport};
use tokio::task::JoinHandle;

/// Tasks the worker runs first, so it has a pace to claim ahead by.
const QUICK: usize = 100;

/// A worker of one slot whose claim-ahead is full whatever its pace (the
/// horizon is an hour), after it has run [`QUICK`] tasks to have a pace.
async fn paced_worker(
    store: &PgStore,
    plugins: &Arc<Plugins>,
) -> (Shutdown, JoinHandle<Result<WorkerReport, StoreError>>) {
    let quick = task(plugins, "add", json!({"a": 1, "b": 2})).await;
    store.enqueue(&vec![quick; QUICK]).await.unwrap();
    let config = WorkerConfig {
        claim_ahead: 8,
        claim_ahead_horizon: Duration::from_secs(3600),
        drain: false,
        ..worker_config(1)
    };
    let shutdown = Shutdown::default();
    let worker =
        tokio::spawn(Worker::new(store.clone(), plugins.clone(), config).run(shutdown.clone()));
    wait::until(
        "the quick tasks to set the worker's pace",
        PROCESS_WAIT,
        || async { store.stats().await.is_ok_and(|s| s.success == QUICK as i64) },
    )
    .await;
    (shutdown, worker)
}

#[sqlx::test(migrations = false)]
async fn held_tasks_cancel_at_once_and_go_back_unspent_on_shutdown(pool: PgPool) {
    const SLOW: usize = 5;
    let store = store(pool).await;
    let plugins = plugins();
    let (shutdown, worker) = paced_worker(&store, &plugins).await;

    let mut slow = task(&plugins, "sleep", json!(3000)).await;
    slow.timeout = Some(Duration::from_secs(30));
    // The first takes the one slot; the rest come after, so they are held.
    let running = store.enqueue(std::slice::from_ref(&slow)).await.unwrap()[0];
    wait::until("the first slow task to run", PROCESS_WAIT, || async {
        store.stats().await.is_ok_and(|s| s.running == 1)
    })
    .await;
    let held = store.enqueue(&vec![slow; SLOW - 1]).await.unwrap();
    wait::until("the rest to be held", PROCESS_WAIT, || async {
        store.stats().await.is_ok_and(|s| s.running == SLOW as i64)
    })
    .await;

    let cancelled = held[0];
    assert_eq!(
        store.cancel(cancelled).await.unwrap(),
        CancelOutcome::Interrupting
    );
    wait::until("the held task to end cancelled", PROCESS_WAIT, || async {
        record(&store, cancelled).await.status == Status::Cancelled
    })
    .await;
    let row = record(&store, cancelled).await;
    assert_eq!(row.error.as_deref(), Some("cancelled before it ran"));
    assert_eq!(row.attempt, 0, "it never ran");
    assert_eq!(
        record(&store, running).await.status,
        Status::Running,
        "the cancel did not wait for the running task"
    );

    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();
    let ran = record(&store, running).await;
    assert_eq!((ran.status, ran.attempt), (Status::Success, 1));
    for &id in &held[1..] {
        let row = record(&store, id).await;
        assert_eq!(
            (row.status, row.attempt),
            (Status::Waiting, 0),
            "task {id} was given back unspent"
        );
    }
}

/// Held tasks start in claim order, which is priority order: with one slot
/// busy, four tasks claimed together run lowest priority number first.
#[sqlx::test(migrations = false)]
async fn held_tasks_start_in_priority_order(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let (shutdown, worker) = paced_worker(&store, &plugins).await;

    let mut blocker = task(&plugins, "sleep", json!(1000)).await;
    blocker.timeout = Some(Duration::from_secs(30));
    store.enqueue(&[blocker]).await.unwrap();
    wait::until("the slot to be taken", PROCESS_WAIT, || async {
        store.stats().await.is_ok_and(|s| s.running == 1)
    })
    .await;
    // Enqueued from the highest priority number down, so claim order
    // (priority first) is the reverse of id order.
    let mut ordered = Vec::new();
    for priority in (0..4).rev() {
        let mut next = task(&plugins, "sleep", json!(50)).await;
        next.priority = priority;
        ordered.push(next);
    }
    let ids = store.enqueue(&ordered).await.unwrap();
    wait::until("the four to end", PROCESS_WAIT, || async {
        store
            .stats()
            .await
            .is_ok_and(|s| s.success == QUICK as i64 + 5)
    })
    .await;
    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();

    let mut finished = Vec::new();
    for &id in &ids {
        let row = record(&store, id).await;
        finished.push((row.finished_at.expect("finished"), row.priority));
    }
    finished.sort();
    let priorities: Vec<i32> = finished.iter().map(|(_, priority)| *priority).collect();
    assert_eq!(priorities, [0, 1, 2, 3], "started in priority order");
}

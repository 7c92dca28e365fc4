//! Cancellation: a waiting task is cancelled at once; a running one is
//! interrupted by whichever worker runs it, through NOTIFY, within 50 ms
//! plus polling slack.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::store::{CancelOutcome, Status, TaskStore};
use taskbox::worker::{Shutdown, Worker};

#[sqlx::test(migrations = false)]
async fn cancelling_a_running_task_interrupts_it(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let mut forever = task(&plugins, "forever", Value::Null).await;
    forever.timeout = Some(Duration::from_secs(60));
    forever.max_attempts = 3;
    let id = store.enqueue(&[forever]).await.unwrap()[0];

    let mut config = worker_config(2);
    config.drain = false;
    let shutdown = Shutdown::default();
    let worker = tokio::spawn(Worker::new(store.clone(), plugins, config).run(shutdown.clone()));
    wait::until("the task to run", Duration::from_secs(10), || async {
        record(&store, id).await.status == Status::Running
    })
    .await;

    assert_eq!(store.cancel(id).await.unwrap(), CancelOutcome::Interrupting);
    let took = wait::until(
        "the task to be cancelled",
        Duration::from_secs(5),
        || async { record(&store, id).await.status == Status::Cancelled },
    )
    .await;
    assert!(
        took < Duration::from_millis(150),
        "cancelled after {took:?}"
    );
    let row = record(&store, id).await;
    assert_eq!(row.attempt, 1, "a cancelled task is not retried");
    assert!(row.finished_at.is_some());

    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();
}

#[sqlx::test(migrations = false)]
async fn cancel_from_the_command_line(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let waiting = task(&plugins, "puts", json!("never printed")).await;
    let id = store.enqueue(&[waiting]).await.unwrap()[0];

    let output = run(taskbox(&pool).args(["cancel", &id.to_string()]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Cancelled);
    assert_eq!(row.attempt, 0);

    let output = run(taskbox(&pool).args(["cancel", &id.to_string()]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("already ended as cancelled"));

    let output = run(taskbox(&pool).args(["cancel", "424242"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("no task with id 424242"));
}

//! Steering queues from the command line while real workers serve them:
//! a paused queue's tasks wait on every worker while other queues drain,
//! and run once it is resumed.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::sandbox::SandboxConfig;
use taskbox::store::{NewTask, Status, TaskStore};
use taskbox::worker::{Shutdown, Worker};

const SETTLE: Duration = Duration::from_secs(30);

#[sqlx::test(migrations = false)]
async fn a_paused_queue_waits_while_another_drains_and_runs_when_resumed(pool: PgPool) {
    let store = store(pool.clone()).await;
    let folder = plugins_folder_with(&["add"]);
    let plugins = plugins_in(folder.path(), SandboxConfig::default());
    let mut held = Vec::new();
    let mut serving = Vec::new();
    for n in 0..5 {
        let add = task(&plugins, "add", json!({"a": n, "b": 1})).await;
        held.push(NewTask {
            queue: "held".to_owned(),
            ..add.clone()
        });
        serving.push(add);
    }
    let held = store.enqueue(&held).await.unwrap();
    let serving = store.enqueue(&serving).await.unwrap();

    let paused = run(taskbox(&pool).args(["queue", "pause", "held"]));
    assert!(paused.status.success(), "{}", stderr_of(&paused));
    assert!(
        stdout_of(&paused).starts_with("queue held: paused"),
        "{}",
        stdout_of(&paused)
    );
    assert_refused(
        &run(taskbox(&pool).args(["queue", "pause", "nowhere"])),
        "there is no queue named `nowhere`",
    );

    let shutdown = Shutdown::default();
    let worker = tokio::spawn({
        let (store, plugins, shutdown) = (store.clone(), plugins.clone(), shutdown.clone());
        let config = taskbox::worker::WorkerConfig {
            drain: false,
            ..worker_config(4)
        };
        async move { Worker::new(store, plugins, config).run(shutdown).await }
    });
    let all_succeeded = |ids: Vec<i64>| {
        let store = store.clone();
        move || {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                for id in ids {
                    if record(&store, id).await.status != Status::Success {
                        return false;
                    }
                }
                true
            }
        }
    };
    wait::until(
        "the serving queue to drain",
        SETTLE,
        all_succeeded(serving.clone()),
    )
    .await;
    for &id in &held {
        assert_eq!(
            record(&store, id).await.status,
            Status::Waiting,
            "task {id} of the paused queue"
        );
    }
    let listed: Value =
        serde_json::from_slice(&run(taskbox(&pool).args(["queue", "list", "--json"])).stdout)
            .unwrap();
    assert_eq!(
        listed,
        json!([
            {"name": "default", "waiting": 0, "running": 0, "limit": null, "key_limit": null,
             "rate": null, "rate_per_key": false, "paused": false},
            {"name": "held", "waiting": 5, "running": 0, "limit": null, "key_limit": null,
             "rate": null, "rate_per_key": false, "paused": true},
        ])
    );

    let resumed = run(taskbox(&pool).args(["queue", "resume", "held"]));
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    wait::until("the resumed queue to drain", SETTLE, all_succeeded(held)).await;
    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();
}

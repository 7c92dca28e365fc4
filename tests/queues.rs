//! Steering queues from the command line while real workers serve them:
//! a paused queue's tasks wait on every worker while other queues drain,
//! and run once it is resumed; a worker's cap on a queue (`--queue
//! NAME=N`) bounds that queue alone.

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

/// `--queue email=2 --queue default`: the worker never holds more than two
/// `email` tasks at once (claimed and waiting count too, and the database
/// shows those as running), while `default` runs wider, bounded only by
/// `--concurrency`; every task still succeeds.
#[sqlx::test(migrations = false)]
async fn a_capped_queue_runs_no_more_than_its_cap_while_others_run_wider(pool: PgPool) {
    const PER_QUEUE: usize = 12;
    const EMAIL_CAP: i64 = 2;
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let mut sleep = task(&plugins, "sleep", json!(200)).await;
    sleep.timeout = Some(Duration::from_secs(30));
    let mut tasks = Vec::new();
    for queue in ["email", "default"] {
        for _ in 0..PER_QUEUE {
            tasks.push(NewTask {
                queue: queue.to_owned(),
                ..sleep.clone()
            });
        }
    }
    store.enqueue(&tasks).await.unwrap();

    let mut worker = taskbox(&pool)
        .args(["worker", "--drain", "--concurrency", "8"])
        .args(["--queue", "email=2", "--queue", "default"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the worker starts");
    let stderr = common::process::LogTail::follow(worker.stderr.take().unwrap());

    // Sample what runs, as `queue list` shows it, until every task ended.
    let started = std::time::Instant::now();
    let mut most_running = std::collections::HashMap::<String, i64>::new();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    loop {
        every.tick().await;
        for queue in store.queues().await.unwrap() {
            let most = most_running.entry(queue.name).or_default();
            *most = (*most).max(queue.running);
        }
        if store.stats().await.unwrap().finished() == 2 * PER_QUEUE as i64 {
            break;
        }
        assert!(
            started.elapsed() < SETTLE,
            "the tasks did not end within {SETTLE:?}; worker log:\n{}",
            stderr.text()
        );
    }
    let status = worker.wait().expect("the drained worker exits");
    assert!(status.success(), "{}", stderr.text());

    let most = |queue: &str| most_running.get(queue).copied().unwrap_or(0);
    assert!(
        (1..=EMAIL_CAP).contains(&most("email")),
        "email ran at most {} at once; its cap is {EMAIL_CAP}",
        most("email")
    );
    assert!(
        most("default") > EMAIL_CAP,
        "default, uncapped, ran at most {} at once",
        most("default")
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.success, 2 * PER_QUEUE as i64, "{stats:?}");
}

//! Every example and hostile plugin, run by a real worker on a real
//! database, ends in the status and with the output or message it should.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::sandbox::SandboxConfig;
use taskbox::store::{Status, TaskStore};

#[sqlx::test(migrations = false)]
async fn example_plugins_succeed_with_their_results(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let tasks = vec![
        task(&plugins, "puts", json!("hello, taskbox")).await,
        task(&plugins, "add", json!({"a": 2, "b": 40})).await,
        task(&plugins, "sleep", json!(20)).await,
        task(&plugins, "fib", json!(20)).await,
    ];
    let ids = store.enqueue(&tasks).await.unwrap();
    drain(&store, &plugins, worker_config(4)).await;

    let puts = record(&store, ids[0]).await;
    assert_eq!(puts.status, Status::Success, "{:?}", puts.error);
    assert_eq!(text(&puts.stdout), "hello, taskbox\n");
    assert!(
        puts.plugin_digest
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );

    let add = record(&store, ids[1]).await;
    assert_eq!(add.status, Status::Success, "{:?}", add.error);
    assert_eq!(
        result_json(&plugins, "add", add.result.as_deref().unwrap()).await,
        json!(42)
    );

    let sleep = record(&store, ids[2]).await;
    assert_eq!(sleep.status, Status::Success, "{:?}", sleep.error);
    let ran = sleep.finished_at.unwrap() - sleep.started_at.unwrap();
    assert!(
        ran >= chrono::Duration::milliseconds(20),
        "slept only {ran}"
    );

    let fib = record(&store, ids[3]).await;
    assert_eq!(fib.status, Status::Success, "{:?}", fib.error);
    assert_eq!(
        result_json(&plugins, "fib", fib.result.as_deref().unwrap()).await,
        json!(6765)
    );

    for id in ids {
        assert_eq!(record(&store, id).await.attempt, 1);
    }
}

#[sqlx::test(migrations = false)]
async fn hostile_plugins_fail_naming_the_limit_while_others_succeed(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins_with(SandboxConfig {
        memory_limit: 16 * 1024 * 1024,
        ..SandboxConfig::default()
    });
    let mut hostile = vec![
        task(&plugins, "panic", Value::Null).await,
        task(&plugins, "membomb", Value::Null).await,
        task(&plugins, "recurse", Value::Null).await,
        task(&plugins, "chatty", Value::Null).await,
    ];
    for task in &mut hostile {
        task.timeout = Some(Duration::from_secs(20));
        task.priority = -1;
    }
    let hostile_ids = store.enqueue(&hostile).await.unwrap();
    let mut healthy = Vec::new();
    for n in 0..50 {
        healthy.push(task(&plugins, "add", json!({"a": n, "b": 1})).await);
    }
    let healthy_ids = store.enqueue(&healthy).await.unwrap();
    drain(&store, &plugins, worker_config(4)).await;

    let panic = record(&store, hostile_ids[0]).await;
    assert_eq!(panic.status, Status::Error);
    let message = panic.error.unwrap();
    assert!(
        message.contains("panicked") && message.contains("deliberate panic"),
        "{message}"
    );

    let membomb = record(&store, hostile_ids[1]).await;
    assert_eq!(membomb.status, Status::Error);
    let message = membomb.error.unwrap();
    assert!(
        message.contains("memory limit") && message.contains("16 MiB"),
        "{message}"
    );

    let recurse = record(&store, hostile_ids[2]).await;
    assert_eq!(recurse.status, Status::Error);
    let message = recurse.error.unwrap();
    assert!(message.contains("stack"), "{message}");

    let chatty = record(&store, hostile_ids[3]).await;
    let stdout = chatty.stdout.clone().unwrap_or_default();
    assert_eq!(chatty.status, Status::Success, "{:?}", chatty.error);
    assert!(
        stdout.len() < taskbox::sandbox::DEFAULT_OUTPUT_CAP + 200,
        "kept {} bytes",
        stdout.len()
    );
    let tail = String::from_utf8_lossy(&stdout[stdout.len() - 120..]).into_owned();
    assert!(tail.contains("output cut"), "{tail}");

    for id in healthy_ids {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Success, "{:?}", row.error);
    }
}

/// A task for a plugin no worker has is not claimed and failed (it once
/// ended `error`, "no plugin named `ghost`"): it waits for a worker that
/// has it, and `stats` names the plugin; the drain does not wait for it.
#[sqlx::test(migrations = false)]
async fn a_missing_plugin_waits_and_stats_say_so(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let mut ghost = task(&plugins, "add", json!({"a": 1, "b": 2})).await;
    ghost.plugin = "ghost".into();
    let ids = store.enqueue(&[ghost]).await.unwrap();
    drain(&store, &plugins, worker_config(2)).await;
    let row = record(&store, ids[0]).await;
    assert_eq!(row.status, Status::Waiting, "{:?}", row.error);
    assert_eq!(row.attempt, 0);
    assert_eq!(store.stats().await.unwrap().unserved, ["ghost"]);
}

#[sqlx::test(migrations = false)]
async fn a_replaced_plugin_file_is_picked_up_by_a_running_worker(pool: PgPool) {
    let store = store(pool).await;
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("greet.wasm");
    std::fs::copy(plugins_dir().join("puts.wasm"), &path).unwrap();
    let sandbox = taskbox::sandbox::Sandbox::new(SandboxConfig::default()).unwrap();
    let plugins = std::sync::Arc::new(taskbox::sandbox::Plugins::new(sandbox, folder.path()));
    let first = plugins.get("greet").await.unwrap().digest.clone();

    let mut config = worker_config(2);
    config.drain = false;
    config.plugin_rescan = Duration::from_millis(20);
    let shutdown = taskbox::worker::Shutdown::default();
    let worker = tokio::spawn(
        taskbox::worker::Worker::new(store.clone(), plugins.clone(), config).run(shutdown.clone()),
    );

    // Replace the file the way a deploy would: write beside it, then rename.
    let staged = folder.path().join("greet.wasm.new");
    std::fs::copy(plugins_dir().join("add.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    wait::until(
        "the worker to load the new file",
        Duration::from_secs(10),
        || async { plugins.get("greet").await.unwrap().digest != first },
    )
    .await;

    let id = store
        .enqueue(&[task(&plugins, "greet", json!({"a": 40, "b": 2})).await])
        .await
        .unwrap()[0];
    wait::until("the task to finish", Duration::from_secs(10), || async {
        record(&store, id).await.status.is_final()
    })
    .await;
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Success, "{:?}", row.error);
    assert_eq!(
        result_json(&plugins, "greet", row.result.as_deref().unwrap()).await,
        json!(42)
    );
    assert_ne!(row.plugin_digest.as_deref(), Some(first.as_str()));

    shutdown.stop.cancel();
    worker.await.unwrap().unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_plugin_reaching_for_the_host_gets_nothing(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let snoop = task(&plugins, "snoop", Value::Null).await;
    let add = task(&plugins, "add", json!({"a": 1, "b": 1})).await;
    let ids = store.enqueue(&[snoop, add]).await.unwrap();
    drain(&store, &plugins, worker_config(2)).await;

    let row = record(&store, ids[0]).await;
    assert_eq!(row.status, Status::Success, "{:?}", row.error);
    let found = result_json(&plugins, "snoop", row.result.as_deref().unwrap()).await;
    assert_eq!(found["env"], json!([]), "the environment leaked: {found}");
    assert_eq!(found["args"], json!([]), "arguments leaked: {found}");
    // Postgres listens on the port it tries, so a granted socket would connect.
    // No grants file: wasi:http denies every request, wasi:config is empty.
    for attempt in ["read_file", "list_root", "connect", "http", "config"] {
        let said = found[attempt].as_str().unwrap();
        assert!(said.starts_with("denied"), "{attempt}: {said}");
    }
    assert_eq!(record(&store, ids[1]).await.status, Status::Success);
}

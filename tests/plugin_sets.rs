//! Workers with different plugin folders share one queue: each claims only
//! the tasks of plugins it has loaded, a task nobody can run waits (and
//! `stats` names its plugin), and a plugin file dropped into or removed from
//! a running worker's folder starts or stops its claims.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::process::PROCESS_WAIT;
use common::*;
use serde_json::json;
use taskbox::sandbox::{Plugins, SandboxConfig};
use taskbox::store::{PgStore, Status, TaskStore};
use taskbox::worker::{Shutdown, Worker, WorkerConfig};

/// Copy a built plugin into `folder` as a whole file (written beside, then
/// renamed), as the README says to.
fn drop_in(folder: &Path, name: &str) {
    let beside = folder.join(format!("{name}.wasm.new"));
    std::fs::copy(plugins_dir().join(format!("{name}.wasm")), &beside).unwrap();
    std::fs::rename(&beside, folder.join(format!("{name}.wasm"))).unwrap();
}

async fn until_status(store: &PgStore, id: i64, status: Status) {
    wait::until(
        &format!("task {id} to be {status}"),
        PROCESS_WAIT,
        || async { record(store, id).await.status == status },
    )
    .await;
}

/// A worker whose folder lacks `add` used to claim `add` tasks and fail
/// them ("plugin: no plugin named add"). Two draining workers with
/// different folders now split the queue by plugin, and each drain ends
/// though the other's tasks were there.
#[sqlx::test(migrations = false)]
async fn two_workers_with_different_plugins_each_run_their_own(pool: sqlx::PgPool) {
    let store = store(pool).await;
    let all = plugins();
    let mut tasks = Vec::new();
    for n in 0..20 {
        tasks.push(task(&all, "add", json!({"a": n, "b": 1})).await);
        tasks.push(task(&all, "puts", json!(format!("line {n}"))).await);
    }
    store.enqueue(&tasks).await.unwrap();

    let adds = plugins_folder_with(&["add"]);
    let puts = plugins_folder_with(&["puts"]);
    let worker = |folder: &Path, id: &str| {
        let config = WorkerConfig {
            worker_id: id.to_owned(),
            ..worker_config(4)
        };
        let plugins = plugins_in(folder, SandboxConfig::default());
        let store = store.clone();
        async move { drain(&store, &plugins, config).await }
    };
    tokio::join!(
        worker(adds.path(), "adds-only"),
        worker(puts.path(), "puts-only")
    );

    for row in all_tasks(&store).await {
        assert_eq!(row.status, Status::Success, "{row:?}");
        assert_eq!(row.attempt, 1);
        let expected = if row.plugin == "add" {
            "adds-only"
        } else {
            "puts-only"
        };
        assert_eq!(row.worker_id.as_deref(), Some(expected), "{row:?}");
    }
}

/// Item 5: a task for a plugin no live worker has waits, and `stats` names
/// the plugin; dropped into the running worker's folder, the plugin is
/// claimed; removed, it is no longer claimed.
#[sqlx::test(migrations = false)]
async fn a_plugin_dropped_in_or_removed_starts_or_stops_its_claims(pool: sqlx::PgPool) {
    init_logging();
    let store = store(pool).await;
    let all = plugins();
    let folder = plugins_folder_with(&["puts"]);
    let plugins: Arc<Plugins> = plugins_in(folder.path(), SandboxConfig::default());
    let shutdown = Shutdown::default();
    let config = WorkerConfig {
        plugin_rescan: std::time::Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let running =
        tokio::spawn(Worker::new(store.clone(), plugins.clone(), config).run(shutdown.clone()));

    let ids = store
        .enqueue(&[
            task(&all, "add", json!({"a": 1, "b": 2})).await,
            task(&all, "puts", json!("here")).await,
        ])
        .await
        .unwrap();
    until_status(&store, ids[1], Status::Success).await;
    wait::until("stats to name add", PROCESS_WAIT, || async {
        store.stats().await.unwrap().unserved == ["add"]
    })
    .await;
    assert_eq!(record(&store, ids[0]).await.status, Status::Waiting);

    drop_in(folder.path(), "add");
    until_status(&store, ids[0], Status::Success).await;
    wait::until("stats to name nothing", PROCESS_WAIT, || async {
        store.stats().await.unwrap().unserved.is_empty()
    })
    .await;

    std::fs::remove_file(folder.path().join("add.wasm")).unwrap();
    let mut names = plugins.names();
    names
        .wait_for(|names| names.iter().all(|name| name != "add"))
        .await
        .unwrap();
    let late = store
        .enqueue(&[
            task(&all, "add", json!({"a": 3, "b": 4})).await,
            task(&all, "puts", json!("after")).await,
        ])
        .await
        .unwrap();
    until_status(&store, late[1], Status::Success).await;
    wait::until("stats to name add again", PROCESS_WAIT, || async {
        store.stats().await.unwrap().unserved == ["add"]
    })
    .await;
    assert_eq!(record(&store, late[0]).await.status, Status::Waiting);

    shutdown.stop.cancel();
    running.await.unwrap().unwrap();
}

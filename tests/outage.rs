//! A database outage mid-run loses nothing: the worker holds finished
//! results, reconnects, writes them once Postgres is back, and finishes the
//! queue; every task ends `success` on its first attempt.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::pg_server::TempPostgres;
use common::process::LogTail;
use common::*;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use taskbox::store::{PgStore, Status, TaskStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing() {
    const TASKS: usize = 600;
    let server = TempPostgres::start();
    let pool = PgPoolOptions::new().connect_lazy(&server.url()).unwrap();
    let store = PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    let plugins = plugins();
    let template = task(&plugins, "sleep", json!(10)).await;
    store.enqueue(&vec![template; TASKS]).await.unwrap();

    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_taskbox"))
        .env("DATABASE_URL", server.url())
        .env("TASKBOX_PLUGINS", plugins_dir())
        .args(["worker", "--drain", "--concurrency", "8", "--timeout", "5s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = worker;
    let log = LogTail::follow(worker.stderr.take().expect("stderr is piped"));
    wait::until("some tasks to finish", Duration::from_secs(60), || async {
        store
            .stats()
            .await
            .map(|s| s.success >= 100)
            .unwrap_or(false)
    })
    .await;
    server.stop_server();
    // Keep the database away until the worker has noticed, so the outage
    // really overlaps the run.
    wait::until(
        "the worker to notice the outage",
        Duration::from_secs(30),
        || async { log.contains("cannot claim") || log.contains("unreachable") },
    )
    .await;
    server.start_server();

    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    let text = log.text();
    assert!(status.success(), "{text}");
    assert!(
        text.contains("claiming again") || text.contains("reachable again"),
        "the worker never recovered: {text}"
    );
    let rows = all_tasks(&store).await;
    assert_eq!(rows.len(), TASKS);
    for row in rows {
        assert_eq!(
            row.status,
            Status::Success,
            "task {} {:?}",
            row.id,
            row.errors
        );
        assert_eq!(row.attempt, 1, "task {} ran twice", row.id);
    }
}

/// Claims committed just before Postgres crashes are not lost: a claim is a
/// durable commit, so after the restart every claimed row is still
/// `running` under its attempt, its result is written once, and no task is
/// claimed and run a second time under the same attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_survive_a_database_crash() {
    const TASKS: usize = 20;
    // WAL nobody waits for stays in the server's memory for 10 s, where a
    // crash loses it: what an asynchronous commit risks.
    let server = TempPostgres::start_with(&[("wal_writer_delay", "10000")]);
    let store = PgStore::connect_lazy(&server.url()).unwrap();
    store.migrate().await.unwrap();
    let plugins = plugins();
    let mut template = task(&plugins, "sleep", json!(1500)).await;
    template.timeout = Some(Duration::from_secs(30));
    let ids = store.enqueue(&vec![template; TASKS]).await.unwrap();

    let worker = tokio::spawn({
        let store = store.clone();
        let plugins = plugins.clone();
        async move { drain(&store, &plugins, worker_config(TASKS)).await }
    });
    wait::until(
        "every task to be claimed",
        Duration::from_secs(30),
        || async {
            store
                .stats()
                .await
                .is_ok_and(|stats| stats.running == TASKS as i64)
        },
    )
    .await;
    server.crash_server();
    server.start_server();

    let report = worker.await.unwrap();
    assert_eq!(
        report.claimed, TASKS as u64,
        "tasks were claimed again after the crash"
    );
    for id in ids {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Success, "task {id} {:?}", row.errors);
        assert_eq!(row.attempt, 1, "task {id}");
    }
}

//! A database outage mid-run loses nothing: the worker holds finished
//! results, reconnects, writes them once Postgres is back, and finishes the
//! queue; every task ends `success` on its first attempt.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::pg_server::TempPostgres;
use common::process::LogTail;
use common::*;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use taskbox::store::{PgStore, Status, TaskStore};
use taskbox::worker::{Shutdown, Worker};

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

/// Claims commit asynchronously, so a crash makes Postgres forget claims
/// whose tasks are running. None of it goes unseen: the worker's spare slots
/// claim the forgotten tasks again, every run it made shows in its task's
/// history (a run whose claim was lost and whose task another claim holds
/// by a history line; one that ends while its task still waits is
/// recorded as its attempt, and says so), and no run's outcome is written
/// over another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_in_a_crash_is_never_invisible() {
    const TASKS: usize = 20;
    // WAL nobody waits for stays in the server's memory for 10 s, where a
    // crash loses it: what an asynchronous commit risks.
    let server = TempPostgres::start_with(&[("wal_writer_delay", "10000")]);
    let store = PgStore::connect_lazy(&server.url()).unwrap();
    store.migrate().await.unwrap();
    let plugins = plugins();
    let mut template = task(&plugins, "sleep", json!(4000)).await;
    template.timeout = Some(Duration::from_secs(60));

    let mut config = worker_config(2 * TASKS);
    config.drain = false;
    // Any durable commit writes the claims before it. The worker's own
    // (its first heartbeat, its plugins' schemas) come before the tasks
    // are enqueued, and the next heartbeat after the test.
    config.rescuer.interval = Duration::from_secs(600);
    // Every plugin file loads, and the worker's first look records each.
    let loaded = std::fs::read_dir(plugins_dir())
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        })
        .count();
    let shutdown = Shutdown::default();
    let worker = tokio::spawn({
        let store = store.clone();
        let plugins = plugins.clone();
        let shutdown = shutdown.clone();
        async move { Worker::new(store, plugins, config).run(shutdown).await }
    });
    wait::until(
        "the worker's first heartbeat and its plugins' schemas",
        Duration::from_secs(30),
        || async {
            let pool = store.pool();
            let beat: i64 = sqlx::query_scalar("SELECT count(*) FROM taskbox.workers")
                .fetch_one(pool)
                .await
                .unwrap_or(0);
            let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM taskbox.plugin_schemas")
                .fetch_one(pool)
                .await
                .unwrap_or(0);
            beat == 1 && schemas as usize == loaded
        },
    )
    .await;
    let ids = store.enqueue(&vec![template; TASKS]).await.unwrap();
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

    wait::until("every task to end", Duration::from_secs(60), || async {
        store
            .stats()
            .await
            .is_ok_and(|stats| stats.success == TASKS as i64)
    })
    .await;
    // Stopping lets every run still going end and write its outcome.
    shutdown.stop.cancel();
    let report = worker.await.unwrap().unwrap();
    let mut runs_shown = 0;
    let mut lost_claims = 0;
    for id in ids {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Success, "task {id} {:?}", row.errors);
        assert_eq!(row.attempt, 1, "task {id} {:?}", row.errors);
        let notes = |prefix: &str| row.errors.iter().filter(|e| e.starts_with(prefix)).count();
        let beside = notes("claim lost: a run of attempt 1 ended success under a claim");
        let adopted = notes("claim lost: the database forgot the claim of attempt 1;");
        assert_eq!(
            beside + adopted,
            row.errors.len(),
            "task {id}: {:?}",
            row.errors
        );
        runs_shown += 1 + beside;
        lost_claims += beside + adopted;
    }
    assert_eq!(
        runs_shown, report.claimed as usize,
        "every run the worker made shows in its task's history"
    );
    assert!(
        lost_claims > 0,
        "no lost claim shows in any history: the crash lost none, or they went unseen"
    );
}

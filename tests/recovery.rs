//! Crashes and stops lose nothing: a worker killed with SIGKILL mid-run has
//! its tasks rescued and finished by another; a worker sent SIGTERM finishes
//! what it can within the shutdown timeout, gives the rest back unspent, and
//! exits 0. (The rescuer rules themselves are in tests/conformance.rs.)

use crate::common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::process::LogTail;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{Status, TaskStore};

fn spawn_worker(pool: &PgPool, args: &[&str]) -> Child {
    taskbox(pool)
        .arg("worker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts")
}

#[sqlx::test(migrations = false)]
async fn a_killed_workers_tasks_are_rescued_and_finish_once(pool: PgPool) {
    const TASKS: usize = 2000;
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let mut template = task(&plugins, "sleep", json!(10)).await;
    template.max_attempts = 3;
    template.timeout = Some(Duration::from_millis(500));
    store.enqueue(&vec![template; TASKS]).await.unwrap();

    let mut doomed = spawn_worker(&pool, &["--concurrency", "24"]);
    wait::until(
        "a quarter of the tasks to finish",
        Duration::from_secs(60),
        || async { store.stats().await.unwrap().success >= (TASKS / 4) as i64 },
    )
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().unwrap();
    // A claim the killed worker had sent still commits on the server: count
    // the stranded rows once no statement of this database is running.
    wait::until(
        "the killed worker's last statements to end",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'active'
                   AND pid <> pg_backend_pid()",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|active| active == 0)
        },
    )
    .await;
    let stranded = store.stats().await.unwrap().running;
    assert!(stranded > 0, "the kill should strand running tasks");

    let rescuer = spawn_worker(
        &pool,
        &[
            "--drain",
            "--concurrency",
            "24",
            "--rescue-grace",
            "100ms",
            "--worker-ttl",
            "1s",
        ],
    );
    let output = rescuer.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));

    let rows = all_tasks(&store).await;
    assert_eq!(rows.len(), TASKS);
    let mut rescued = 0;
    for row in &rows {
        assert_eq!(
            row.status,
            Status::Success,
            "task {} {:?}",
            row.id,
            row.errors
        );
        match row.attempt {
            1 => assert!(row.errors.is_empty()),
            2 => {
                rescued += 1;
                assert_eq!(row.errors.len(), 1);
                assert!(row.errors[0].contains("worker lost"), "{:?}", row.errors);
            }
            n => panic!("task {} ran {n} times", row.id),
        }
    }
    assert_eq!(rescued, stranded, "exactly the stranded tasks ran again");
}

#[sqlx::test(migrations = false)]
async fn sigterm_finishes_what_it_can_and_gives_back_the_rest(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let grace = Duration::from_millis(800);
    let mut short = task(&plugins, "sleep", json!(100)).await;
    short.priority = -1;
    let mut long = task(&plugins, "sleep", json!(10_000)).await;
    long.timeout = Some(Duration::from_secs(30));
    let short_ids = store.enqueue(&[short.clone(), short]).await.unwrap();
    let long_ids = store.enqueue(&vec![long; 6]).await.unwrap();

    let mut worker = taskbox(&pool)
        .env("TASKBOX_LOG", "taskbox=debug")
        .args(["worker", "--concurrency", "4", "--shutdown-timeout"])
        .arg(format!("{}ms", grace.as_millis()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts");
    let log = LogTail::follow(worker.stderr.take().expect("stderr is piped"));
    // Started, not only claimed: a claimed task the worker has not started
    // yet goes back at a SIGTERM.
    wait::until("four started attempts", Duration::from_secs(30), || async {
        log.text().matches("attempt started").count() >= 4
    })
    .await;
    let signalled = Instant::now();
    kill(Pid::from_raw(worker.id() as i32), Signal::SIGTERM).unwrap();
    let status = worker.wait().unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", log.text());
    assert!(took < grace + Duration::from_secs(1), "exit took {took:?}");

    for id in short_ids {
        assert_eq!(record(&store, id).await.status, Status::Success);
    }
    for id in long_ids {
        let row = record(&store, id).await;
        assert_eq!(row.status, Status::Waiting, "task {id}");
        assert_eq!(row.attempt, 0, "an interrupted attempt is not spent");
    }
}

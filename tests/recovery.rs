//! Crashes and stops lose nothing: a worker killed with SIGKILL mid-run has
//! its tasks rescued and finished by another; a worker sent SIGTERM finishes
//! what it can within the shutdown timeout, gives the rest back unspent, and
//! exits 0; the rescuer never touches a live worker's task.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{ClaimRequest, RescueRequest, Status, TaskStore};

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

    let worker = spawn_worker(
        &pool,
        &[
            "--concurrency",
            "4",
            "--shutdown-timeout",
            &format!("{}ms", grace.as_millis()),
        ],
    );
    wait::until("four running tasks", Duration::from_secs(30), || async {
        store.stats().await.unwrap().running == 4
    })
    .await;
    let signalled = Instant::now();
    kill(Pid::from_raw(worker.id() as i32), Signal::SIGTERM).unwrap();
    let output = worker.wait_with_output().unwrap();
    let took = signalled.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
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

fn rescue_by<'a>(worker_id: &'a str, in_flight: &'a [i64]) -> RescueRequest<'a> {
    RescueRequest {
        grace: Duration::ZERO,
        worker_ttl: Duration::from_millis(200),
        worker_id,
        in_flight,
    }
}

#[sqlx::test(migrations = false)]
async fn a_claim_whose_reply_was_lost_is_rescued_by_its_own_worker(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let template = task(&plugins, "add", json!({"a": 1, "b": 1})).await;
    store.enqueue(&[template.clone(), template]).await.unwrap();
    let request = ClaimRequest {
        worker_id: "me",
        limit: 2,
        queues: &[],
        default_timeout: Duration::from_millis(1),
    };
    store.heartbeat("me").await.unwrap();
    let claimed = store.claim(&request).await.unwrap();
    // The worker knows the first; the reply for the second never reached it.
    let (known, lost) = (claimed[0].id, claimed[1].id);
    wait::until(
        "the orphan to pass its deadline",
        Duration::from_secs(5),
        || async {
            let rescued = store.rescue(&rescue_by("me", &[known])).await.unwrap();
            assert!(
                rescued.iter().all(|r| r.id != known),
                "rescued a task its worker holds"
            );
            rescued.iter().any(|r| r.id == lost)
        },
    )
    .await;
    assert_eq!(record(&store, known).await.status, Status::Running);
    let orphan = record(&store, lost).await;
    assert_eq!(
        orphan.status,
        Status::Error,
        "one attempt allowed: worker lost"
    );
    assert!(orphan.error.unwrap().contains("worker lost"));
}

#[sqlx::test(migrations = false)]
async fn the_rescuer_never_touches_a_live_workers_task(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let mut template = task(&plugins, "add", json!({"a": 1, "b": 1})).await;
    template.max_attempts = 2;
    store.enqueue(&[template.clone(), template]).await.unwrap();
    let claim = |worker_id: &'static str| ClaimRequest {
        worker_id,
        limit: 1,
        queues: &[],
        // Already past its deadline by the time the rescuer looks.
        default_timeout: Duration::from_millis(1),
    };
    store.heartbeat("alive").await.unwrap();
    store.heartbeat("dead").await.unwrap();
    let alive = store.claim(&claim("alive")).await.unwrap().remove(0);
    let dead = store.claim(&claim("dead")).await.unwrap().remove(0);
    wait::until(
        "the dead worker's heartbeat to go stale",
        Duration::from_secs(5),
        || async {
            store.heartbeat("alive").await.unwrap();
            let rescued = store.rescue(&rescue_by("observer", &[])).await.unwrap();
            assert!(
                rescued.iter().all(|r| r.id != alive.id),
                "rescued a live worker's task"
            );
            rescued
                .iter()
                .any(|r| r.id == dead.id && r.status == Status::Waiting)
        },
    )
    .await;
    let row = record(&store, alive.id).await;
    assert_eq!(row.status, Status::Running);
    assert_eq!(row.worker_id.as_deref(), Some("alive"));

    // A late completion from the rescued attempt is fenced off.
    let late = taskbox::store::Completion {
        result: Some(vec![1]),
        ..taskbox::store::Completion::new(dead.id, dead.attempt, Status::Success)
    };
    let again = store.claim(&claim("another")).await.unwrap().remove(0);
    assert_eq!((again.id, again.attempt), (dead.id, 2));
    assert_eq!(
        store.complete(&[late]).await.unwrap(),
        0,
        "the stale attempt wrote"
    );
    assert_eq!(record(&store, dead.id).await.status, Status::Running);
}

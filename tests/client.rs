//! The Rust client (issue 12, item 3) against a real worker: typed args in,
//! a typed result out, inside the application's own transaction (rolled
//! back: no task; committed: it runs), on Postgres and SQLite; and the
//! crate's example, run as a user would.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::process::{PROCESS_WAIT, WorkerProcess, run_within};
use common::*;
use serde::Serialize;
use sqlx::Connection;
use taskbox_client::{Client, Error, NewTask, SchemaName, Status};

#[derive(Serialize)]
struct Pair {
    a: i64,
    b: i64,
}

fn add(a: i64, b: i64) -> NewTask {
    NewTask::with_args("add", &Pair { a, b }).expect("encodes")
}

/// `url` once `taskbox migrate` made the tables there: an application
/// enqueues into a database its workers (or a deploy step) migrated.
fn migrated(url: &str) -> String {
    let output = run(taskbox_at(url).arg("migrate"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    url.to_owned()
}

/// Enqueue, wait, and read back through the client, with a worker serving.
async fn typed_round_trip(client: &Client) {
    let id = client.enqueue(add(40, 2)).await.unwrap();
    let sum: i64 = client.wait(id, Some(PROCESS_WAIT)).await.unwrap();
    assert_eq!(sum, 42);
    let state = client.task(id).await.unwrap().expect("the task exists");
    assert_eq!((state.status, state.attempt), (Status::Success, 1));

    let ids = client
        .enqueue_many(&[add(1, 1), add(2, 2).priority(-1)])
        .await
        .unwrap();
    for (id, expected) in ids.into_iter().zip([2i64, 4]) {
        assert_eq!(
            client.wait::<i64>(id, Some(PROCESS_WAIT)).await.unwrap(),
            expected
        );
    }

    let failing = NewTask::with_args("panic", &()).unwrap();
    let id = client.enqueue(failing).await.unwrap();
    match client.wait::<()>(id, Some(PROCESS_WAIT)).await {
        Err(Error::Failed {
            status: Status::Error,
            error,
            ..
        }) => {
            assert!(!error.is_empty())
        }
        other => panic!("expected a failed task, got {other:?}"),
    }
    match client.wait::<i64>(i64::MAX, None).await {
        Err(Error::NoSuchTask(id)) => assert_eq!(id, i64::MAX),
        other => panic!("expected no such task, got {other:?}"),
    }
    let refused = client
        .enqueue(add(1, 2).timeout(Duration::from_secs(8 * 24 * 3600)))
        .await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    let refused = client.enqueue(add(1, 2).max_attempts(0)).await;
    assert!(matches!(refused, Err(Error::Database(_))), "{refused:?}");
}

#[sqlx::test(migrations = false)]
async fn on_postgres_inside_the_applications_transaction(pool: sqlx::PgPool) {
    let url = migrated(&database_url(&pool));
    let _worker = WorkerProcess::start(taskbox_at(&url));
    let client = Client::connect(&url).await.unwrap();
    typed_round_trip(&client).await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    for commit in [false, true] {
        let mut tx = conn.begin().await.unwrap();
        let id = taskbox_client::enqueue_in(&mut tx, &SchemaName::default(), &[add(6, 6)])
            .await
            .unwrap()[0];
        if !commit {
            tx.rollback().await.unwrap();
            assert!(client.task(id).await.unwrap().is_none(), "rolled back");
            continue;
        }
        tx.commit().await.unwrap();
        assert_eq!(
            client.wait::<i64>(id, Some(PROCESS_WAIT)).await.unwrap(),
            12
        );
    }
}

#[tokio::test]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = migrated(&sqlite_url(dir.path()));
    let _worker = WorkerProcess::start(taskbox_at(&url));
    let client = Client::connect(&url).await.unwrap();
    typed_round_trip(&client).await;

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let rolled_back = taskbox_client::enqueue_in_sqlite(&mut tx, &[add(5, 5)])
        .await
        .unwrap()[0];
    tx.rollback().await.unwrap();
    assert!(
        client.task(rolled_back).await.unwrap().is_none(),
        "rolled back"
    );
}

/// The example `cargo xtask test` builds beside the binary
/// (`cargo test --all-targets`).
fn example() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_taskbox"));
    let path = bin
        .parent()
        .expect("the binary has a folder")
        .join("examples/enqueue_and_wait");
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo xtask test` (all targets)",
        path.display()
    );
    path
}

#[sqlx::test(migrations = false)]
async fn the_example_runs(pool: sqlx::PgPool) {
    let url = migrated(&database_url(&pool));
    let _worker = WorkerProcess::start(taskbox_at(&url));
    let output = run_within(
        Command::new(example())
            .env("DATABASE_URL", &url)
            .args(["40", "2"]),
        PROCESS_WAIT + Duration::from_secs(5),
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "42\n");
}

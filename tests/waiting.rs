//! Waiting for a result (issue 12, item 4): `enqueue --wait` and `taskbox
//! wait` print the result as JSON when the task ends (exit 0), its error
//! when it ended otherwise (exit 1), and the status when the wait runs out
//! (exit 1); on Postgres the waiter is woken by a notification.

use crate::common;

use std::process::{Child, Output, Stdio};
use std::time::Instant;

use common::process::{PROCESS_WAIT, WorkerProcess, run_within};
use common::*;
use taskbox::store::postgres::WAIT_RECHECK;

on_both_backends!(
    enqueue_wait_prints_the_result,
    a_task_that_failed_exits_1_with_its_error,
    a_wait_that_runs_out_names_the_status,
);

fn enqueued(url: &str, args: &[&str]) -> String {
    let output = run(taskbox_at(url).arg("enqueue").args(args));
    assert!(output.status.success(), "{}", stderr_of(&output));
    stdout_of(&output).trim().to_owned()
}

fn enqueue_wait_prints_the_result(url: &str) {
    let _worker = WorkerProcess::start(taskbox_at(url));
    let output = run_within(
        taskbox_at(url).args(["enqueue", "add", r#"{"a": 40, "b": 2}"#, "--wait"]),
        PROCESS_WAIT,
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "42\n");

    let id = enqueued(url, &["puts", "\"hello\""]);
    let output = run_within(taskbox_at(url).args(["wait", &id]), PROCESS_WAIT);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "null\n", "puts returns nothing");

    let output = run(taskbox_at(url).args(["wait", "999999"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(one_line_stderr(&output).contains("no task with id 999999"));
}

fn a_task_that_failed_exits_1_with_its_error(url: &str) {
    let _worker = WorkerProcess::start(taskbox_at(url));
    let output = run_within(
        taskbox_at(url).args(["enqueue", "panic", "--wait"]),
        PROCESS_WAIT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = one_line_stderr(&output);
    assert!(stderr.contains("ended error: "), "{stderr}");
    assert!(stdout_of(&output).is_empty());

    let id = enqueued(url, &["forever", "--timeout", "100ms"]);
    let output = run_within(taskbox_at(url).args(["wait", &id]), PROCESS_WAIT);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        one_line_stderr(&output).contains(&format!("task {id} ended timeout: ")),
        "{}",
        stderr_of(&output)
    );
}

fn a_wait_that_runs_out_names_the_status(url: &str) {
    let output = run_within(
        taskbox_at(url).args([
            "enqueue",
            "add",
            r#"{"a": 1, "b": 2}"#,
            "--wait",
            "--wait-timeout",
            "200ms",
        ]),
        PROCESS_WAIT,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains("is still waiting after 200ms (--wait-timeout)"),
        "{stderr}"
    );
    let output = run(taskbox_at(url).args(["wait", "1", "--timeout", "100ms"]));
    assert!(
        one_line_stderr(&output).contains("task 1 is still waiting after 100ms (--timeout)"),
        "{}",
        stderr_of(&output)
    );
}

/// A `taskbox wait` child, killed if the test ends before it does.
struct Waiter(Option<Child>);

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `taskbox wait ID` and return once it has marked the task as
/// waited for (so it listens).
async fn waiter(pool: &sqlx::PgPool, id: i64) -> Waiter {
    let child = taskbox(pool)
        .args(["wait", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let waiter = Waiter(Some(child));
    wait::until("the waiter to mark its task", PROCESS_WAIT, || async {
        sqlx::query_scalar::<_, bool>("SELECT waited FROM taskbox.tasks WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap_or(false)
    })
    .await;
    waiter
}

/// The waiter exits well before it would look again on its own: the end
/// of the task was told, by completion and by cancel alike.
async fn exits_on_notice(mut waiter: Waiter, ended: Instant) -> Output {
    let child = waiter.0.take().expect("still running");
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let output = outcome
        .recv_timeout(PROCESS_WAIT)
        .expect("the waiter exits")
        .expect("the waiter runs");
    assert!(
        ended.elapsed() < WAIT_RECHECK / 2,
        "woken after {:?}, as by its own look, not by a notification",
        ended.elapsed()
    );
    output
}

#[sqlx::test(migrations = false)]
async fn on_postgres_a_waiter_is_woken_when_its_task_ends(pool: sqlx::PgPool) {
    let id: i64 = enqueued(&database_url(&pool), &["add", r#"{"a": 2, "b": 3}"#])
        .parse()
        .unwrap();
    let child = waiter(&pool, id).await;
    let worker = WorkerProcess::start(taskbox(&pool));
    let store = store(pool.clone()).await;
    wait::until("the task to succeed", PROCESS_WAIT, || async {
        record(&store, id).await.status.is_final()
    })
    .await;
    let output = exits_on_notice(child, Instant::now()).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "5\n");

    drop(worker);
    let id: i64 = enqueued(&database_url(&pool), &["add", r#"{"a": 2, "b": 3}"#])
        .parse()
        .unwrap();
    let child = waiter(&pool, id).await;
    let cancelled = run(taskbox(&pool).args(["cancel", &id.to_string()]));
    assert!(cancelled.status.success(), "{}", stderr_of(&cancelled));
    let output = exits_on_notice(child, Instant::now()).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("ended cancelled: cancelled before it ran"),
        "{}",
        stderr_of(&output)
    );
}

//! Host failures are not the task's fault: a worker whose process cannot
//! reserve memory for an instance (here under a virtual-memory limit, as
//! with `ulimit -v`) gives its tasks back unspent and says so once; a worker
//! without the limit then runs them all on their first attempt.

use crate::common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::PgPool;
use taskbox::store::{Status, TaskStore};

/// Address space for the limited worker: room for the process and about one
/// instance's memory reservation (4 GiB and its guard region), so that the
/// plugin may describe itself but tasks running side by side cannot all
/// reserve theirs (whether one instance fits depends on the machine; either
/// way no task may end `error`).
const ADDRESS_SPACE: u64 = 7 * 1024 * 1024 * 1024;
/// Fewer than the limited worker's concurrency, so one claim takes them all.
const TASKS: usize = 20;

/// A child process killed if the test fails before it is stopped.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[sqlx::test(migrations = false)]
async fn instances_the_host_cannot_reserve_are_given_back_unspent(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    let template = task(&plugins, "sleep", json!(50)).await;
    let ids = store.enqueue(&vec![template; TASKS]).await.unwrap();
    let folder = plugins_folder_with(&["sleep"]);

    let mut limited = taskbox(&pool);
    limited
        .args(["worker", "--concurrency", "24"])
        .env("TASKBOX_PLUGINS", folder.path())
        .env("TASKBOX_LOG", "taskbox=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        limited.pre_exec(|| {
            setrlimit(Resource::RLIMIT_AS, ADDRESS_SPACE, ADDRESS_SPACE).map_err(Into::into)
        });
    }
    let limited = KillOnDrop(Some(limited.spawn().expect("the limited worker starts")));

    // Every task was claimed (it has a start) and given back or run; none
    // may end any other way.
    wait::until(
        "every task to be given back by the limited worker",
        Duration::from_secs(30),
        || async {
            let tasks = all_tasks(&store).await;
            for task in &tasks {
                assert!(
                    matches!(
                        task.status,
                        Status::Waiting | Status::Running | Status::Success
                    ),
                    "task {} ended {} under a host failure: {:?}",
                    task.id,
                    task.status,
                    task.error
                );
            }
            tasks.iter().all(|task| {
                task.status == Status::Success
                    || (task.status == Status::Waiting && task.started_at.is_some())
            })
        },
    )
    .await;
    let limited = limited.take();
    kill(Pid::from_raw(limited.id() as i32), Signal::SIGTERM).unwrap();
    let output = limited.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let log = stderr_of(&output);
    let told = log
        .lines()
        .filter(|line| line.contains("could not reserve memory"))
        .count();
    assert_eq!(told, 1, "the host problem is told once:\n{log}");
    let tasks = all_tasks(&store).await;
    let ran = tasks.iter().filter(|t| t.status == Status::Success).count();
    eprintln!("under the limit {ran} of {TASKS} tasks ran, the rest were given back");
    assert!(ran < TASKS, "the limit let every instance be reserved");
    for task in tasks {
        let spent = i32::from(task.status == Status::Success);
        assert_eq!(task.attempt, spent, "task {}: no attempt spent", task.id);
        assert!(
            task.errors.is_empty(),
            "task {}: {:?}",
            task.id,
            task.errors
        );
    }

    // Without the limit, a worker runs them all on their first attempt.
    let output = run(taskbox(&pool).args(["worker", "--drain", "--concurrency", "4"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    for id in ids {
        let task = record(&store, id).await;
        assert_eq!(task.status, Status::Success, "task {id}: {:?}", task.error);
        assert_eq!(task.attempt, 1, "task {id}");
    }
}

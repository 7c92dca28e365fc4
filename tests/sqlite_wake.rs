//! The embedded default wakes at once (issue 14, item 3): a SQLite worker
//! hears of another process's enqueue or cancel through the database's
//! files. The subscriber here polls once an hour, so only the file watch
//! can tell it in time.

use crate::common;

use std::time::Duration;

use common::*;
use taskbox::store::{ClaimRequest, Notification, SqliteStore, TaskStore};

/// Far longer than the test's wait: the poll cannot be what wakes it.
const NO_POLL: Duration = Duration::from_secs(3600);
const WAKE_WAIT: Duration = Duration::from_secs(30);

async fn next(notifications: &mut tokio::sync::mpsc::Receiver<Notification>) -> Notification {
    tokio::time::timeout(WAKE_WAIT, notifications.recv())
        .await
        .expect("woken by the database's files within the wait")
        .expect("the subscription lives")
}

#[tokio::test]
async fn another_process_enqueue_and_cancel_wake_a_sqlite_subscriber() {
    let db = SqliteDb::new().await;
    let worker_side =
        SqliteStore::open(db.dir.path().join(SQLITE_FILE)).with_external_poll(NO_POLL);
    let mut notifications = worker_side.subscribe().await.unwrap();

    let output = run(taskbox_at(&db.url()).args(["enqueue", "add", r#"{"a": 1, "b": 2}"#]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(next(&mut notifications).await, Notification::TasksAvailable);

    let claimed = worker_side
        .claim(&ClaimRequest {
            worker_id: "w",
            limit: 1,
            scope: Default::default(),
            default_timeout: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let id = claimed[0].id;
    let output = run(taskbox_at(&db.url()).args(["cancel", &id.to_string()]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    // The worker's own claim changed the files too: skip what that woke.
    loop {
        match next(&mut notifications).await {
            Notification::Cancel(cancelled) => break assert_eq!(cancelled, id),
            Notification::TasksAvailable => continue,
        }
    }
}

//! The store contract, written once and run against every implementation:
//! each case is a generic `async fn` over [`TaskStore`], and the
//! `conformance!` macro instantiates it for Postgres (a fresh database from
//! `sqlx::test`) and for SQLite (a fresh file in a temporary folder). The
//! store does not look inside args, so no plugin is needed here.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use taskbox::store::flow::{FlowChange, Rate};
use taskbox::store::{
    CancelOutcome, ClaimRequest, ClaimedTask, Completion, DEFAULT_MAX_ARGS_BYTES, ListFilter,
    NewTask, Notification, Refused, RescueRequest, Rescued, Scope, Stats, Status, StoreError,
    TaskStore, Transition,
};
use tokio::sync::mpsc;

/// Applies to tasks enqueued without a timeout in these tests.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a notification may take to arrive.
const NOTIFY_WITHIN: Duration = Duration::from_secs(10);
/// Slack for comparing the database's clock with this process's.
const CLOCK_SLACK: TimeDelta = TimeDelta::seconds(1);

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $case(pool: sqlx::PgPool) {
                    super::$case(super::common::store(pool).await).await;
                }
            )+
        }

        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::common::SqliteDb::new().await;
                    super::$case(db.store.clone()).await;
                }
            )+
        }
    };
}

conformance!(
    enqueue_keeps_order_and_every_field,
    enqueue_is_all_or_nothing,
    enqueue_refuses_args_over_the_limit,
    claim_order_is_priority_then_run_at_then_id,
    claim_respects_limit_and_queues,
    concurrent_claimers_never_share_a_task,
    completion_is_fenced_on_the_claim_token,
    a_run_whose_claim_was_lost_is_recorded_as_its_attempt,
    a_run_whose_claim_was_lost_shows_beside_the_newer_claim,
    a_failed_attempt_retries_and_keeps_its_history,
    a_released_task_keeps_its_attempt,
    rescue_takes_back_only_dead_workers_tasks,
    a_claim_whose_reply_was_lost_is_rescued,
    cancel_reports_what_it_found_and_did,
    enqueue_wakes_subscribers,
    stats_count_every_status,
    list_filters_newest_first,
    has_pending_counts_backoff_but_not_scheduled_tasks,
    claims_and_drains_see_only_the_plugins_a_worker_has,
    stats_name_plugins_no_live_worker_serves,
    enqueue_refuses_timeouts_and_run_at_past_the_bounds,
    enqueue_refuses_a_bad_key,
    a_row_the_claim_cannot_run_ends_error_and_the_queue_moves,
    a_retry_waits_its_delay_on_the_databases_clock,
    a_paused_queue_is_not_claimed_until_resumed,
    a_claim_queue_by_queue_keeps_claim_order_across_queues,
    two_rescuers_of_one_row_write_it_once,
    a_queue_limit_counts_every_way_a_run_ends,
    a_limit_set_while_tasks_run_counts_them,
    a_rate_holds_across_claims,
    a_key_limit_takes_keys_in_turn,
    a_keyed_claim_hands_its_tasks_out_in_turns,
    a_rate_per_key_holds_each_key_apart,
);

// ---------------------------------------------------------------- helpers

/// A task whose args are arbitrary bytes, including ones no text allows.
fn new_task(plugin: &str) -> NewTask {
    NewTask::new(plugin, vec![0, 159, 146, 150, 255, b'\n', 0])
}

/// Now, at the microsecond precision both databases keep.
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is a valid time")
}

fn claim_by(worker_id: &str, limit: usize) -> ClaimRequest<'_> {
    ClaimRequest {
        worker_id,
        limit,
        scope: Scope::default(),
        default_timeout: DEFAULT_TIMEOUT,
    }
}

/// A claim of the named `queues` only.
fn claim_of_queues<'a>(worker_id: &'a str, limit: usize, queues: &'a [String]) -> ClaimRequest<'a> {
    ClaimRequest {
        scope: Scope {
            queues,
            plugins: None,
        },
        ..claim_by(worker_id, limit)
    }
}

/// A claim whose deadline passes at once, for rescue cases.
fn claim_expiring(worker_id: &str, limit: usize) -> ClaimRequest<'_> {
    ClaimRequest {
        default_timeout: Duration::from_millis(1),
        ..claim_by(worker_id, limit)
    }
}

fn claimed_ids(claimed: &[ClaimedTask]) -> Vec<i64> {
    claimed.iter().map(|task| task.id).collect()
}

fn success(task: &ClaimedTask) -> Completion {
    Completion::new(
        task,
        Transition::Succeeded {
            result: b"done".to_vec(),
        },
    )
}

/// A last attempt failing: `error`, or `timeout` when `timed_out`.
fn failure(task: &ClaimedTask, timed_out: bool, error: &str) -> Completion {
    let error = error.to_owned();
    Completion::new(task, Transition::Failed { timed_out, error })
}

/// A failed attempt retried `after` the database's clock.
fn retry(task: &ClaimedTask, after: Duration, error: &str) -> Completion {
    let error = error.to_owned();
    Completion::new(task, Transition::Retry { after, error })
}

fn everything() -> ListFilter {
    ListFilter {
        limit: 10_000,
        ..ListFilter::default()
    }
}

fn assert_near(time: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    assert!(
        (time - expected).abs() <= CLOCK_SLACK,
        "{what} is {time}, expected about {expected}"
    );
}

/// Wait for `wanted` on `notifications`, skipping anything else.
async fn expect_notification(
    notifications: &mut mpsc::Receiver<Notification>,
    wanted: Notification,
) {
    tokio::time::timeout(NOTIFY_WITHIN, async {
        loop {
            match notifications.recv().await {
                Some(got) if got == wanted => return,
                Some(_) => continue,
                None => panic!("the notification stream ended before {wanted:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted:?} within {NOTIFY_WITHIN:?}"));
}

// ------------------------------------------------------------------ cases

async fn enqueue_keeps_order_and_every_field<S: TaskStore>(store: S) {
    assert!(store.enqueue(&[]).await.unwrap().is_empty());

    let run_at = now() - TimeDelta::hours(1) + TimeDelta::microseconds(123_457);
    let plain = new_task("first");
    let tuned = NewTask {
        queue: "mail".to_owned(),
        priority: -7,
        max_attempts: 5,
        timeout: Some(Duration::from_millis(2500)),
        run_at: Some(run_at),
        key: Some("tenant-1".to_owned()),
        ..new_task("second")
    };
    let before = now();
    let ids = store
        .enqueue(&[plain.clone(), tuned.clone(), new_task("third")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");

    let first = record(&store, ids[0]).await;
    assert_eq!(first.plugin, "first");
    assert_eq!(first.args, plain.args, "args come back byte for byte");
    assert_eq!(first.queue, taskbox::store::DEFAULT_QUEUE);
    assert_eq!(first.key, None);
    assert_eq!(first.status, Status::Waiting);
    assert_eq!(
        (first.priority, first.attempt, first.max_attempts),
        (0, 0, 1)
    );
    assert_eq!(first.timeout_ms, None);
    assert_near(first.enqueued_at, before, "enqueued_at");
    assert_eq!(first.run_at, first.enqueued_at, "runnable from enqueue");
    assert_eq!(first.started_at, None);
    assert_eq!(first.finished_at, None);
    assert!(first.errors.is_empty());
    assert_eq!(first.error, None);
    assert_eq!(first.result, None);
    assert_eq!(first.worker_id, None);

    let second = record(&store, ids[1]).await;
    assert_eq!(second.plugin, "second");
    assert_eq!(second.queue, "mail");
    assert_eq!(second.key.as_deref(), Some("tenant-1"));
    assert_eq!((second.priority, second.max_attempts), (-7, 5));
    assert_eq!(second.timeout_ms, Some(2500));
    assert_eq!(
        second.run_at, run_at,
        "run_at round-trips to the microsecond"
    );
    assert_eq!(record(&store, ids[2]).await.plugin, "third");
}

/// Issue 10, item 7: the limit lives in the store, so every client
/// inherits it; a batch with one task over it writes nothing.
async fn enqueue_refuses_args_over_the_limit<S: TaskStore>(store: S) {
    let over_default = NewTask::new("big", vec![0; DEFAULT_MAX_ARGS_BYTES + 1]);
    let result = store.enqueue(std::slice::from_ref(&over_default)).await;
    assert!(
        matches!(result, Err(StoreError::Refused(Refused::ArgsTooLarge { index: 0, batch: 1, size, limit }))
            if size == DEFAULT_MAX_ARGS_BYTES + 1 && limit == DEFAULT_MAX_ARGS_BYTES),
        "{result:?}"
    );

    let limit = 64;
    let small = store.clone().with_max_args_bytes(limit);
    let at_limit = NewTask::new("fits", vec![7; limit]);
    let over = NewTask::new("over", vec![7; limit + 1]);
    let result = small.enqueue(&[at_limit.clone(), over]).await;
    let err = result.expect_err("args over the limit are refused");
    assert!(
        matches!(
            err,
            StoreError::Refused(Refused::ArgsTooLarge {
                index: 1,
                batch: 2,
                size: 65,
                limit: 64
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the args of task 2 of 2 are 65 bytes, more than the limit of 64 bytes"
    );
    assert_eq!(store.stats().await.unwrap().total(), 0, "a row was kept");

    small
        .enqueue(&[at_limit])
        .await
        .expect("args at the limit fit");
    let large = store.with_max_args_bytes(DEFAULT_MAX_ARGS_BYTES + 1);
    large
        .enqueue(&[over_default])
        .await
        .expect("a raised limit admits more");
    assert_eq!(large.stats().await.unwrap().total(), 2);
}

async fn enqueue_is_all_or_nothing<S: TaskStore>(store: S) {
    let refused = NewTask {
        max_attempts: 0,
        ..new_task("bad")
    };
    let result = store.enqueue(&[new_task("good"), refused]).await;
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    assert_eq!(store.stats().await.unwrap().total(), 0, "a row was kept");
    assert!(store.list(&everything()).await.unwrap().is_empty());
}

async fn claim_order_is_priority_then_run_at_then_id<S: TaskStore>(store: S) {
    let base = now();
    let at = |seconds: i64, priority: i32| NewTask {
        priority,
        run_at: Some(base + TimeDelta::seconds(seconds)),
        ..new_task("ordered")
    };
    let ids = store
        .enqueue(&[
            at(-3, 1),    // 0: oldest, but the worst priority: last
            at(-1, 0),    // 1: an earlier id than 2 and 3, but a later run_at
            at(-2, 0),    // 2: ties with 3 on priority and run_at ...
            at(-2, 0),    // 3: ... so the id decides
            at(-1, -1),   // 4: the best priority among the due: first
            at(3600, -5), // 5: the best priority of all, but not due
        ])
        .await
        .unwrap();

    let mut order = Vec::new();
    loop {
        let claimed = store.claim(&claim_by("w", 1)).await.unwrap();
        assert!(claimed.len() <= 1, "claimed {} with limit 1", claimed.len());
        match claimed.first() {
            Some(task) => order.push(task.id),
            None => break,
        }
    }
    assert_eq!(order, vec![ids[4], ids[2], ids[3], ids[1], ids[0]]);
    assert_eq!(
        record(&store, ids[5]).await.status,
        Status::Waiting,
        "claimed before its run_at"
    );
}

async fn claim_respects_limit_and_queues<S: TaskStore>(store: S) {
    let mail = NewTask {
        queue: "mail".to_owned(),
        timeout: Some(Duration::from_millis(1500)),
        ..new_task("send")
    };
    let defaults = store.enqueue(&vec![new_task("work"); 5]).await.unwrap();
    let mails = store.enqueue(&[mail.clone(), mail]).await.unwrap();

    let before = now();
    let first = store.claim(&claim_by("w1", 3)).await.unwrap();
    let mut got = claimed_ids(&first);
    got.sort();
    assert_eq!(got, defaults[..3], "limit 3, the first in claim order");
    for task in &first {
        assert_eq!(task.attempt, 1);
        assert_eq!(task.max_attempts, 1);
        assert_eq!(task.plugin, "work");
        assert_eq!(task.args, new_task("work").args);
        assert_eq!(task.timeout(), DEFAULT_TIMEOUT, "the default applies");
        let row = record(&store, task.id).await;
        assert_eq!(row.status, Status::Running);
        assert_eq!(row.attempt, 1);
        assert_eq!(row.worker_id.as_deref(), Some("w1"));
        assert_near(
            row.started_at.expect("started_at is set"),
            before,
            "started_at",
        );
    }

    let queues = ["mail".to_owned()];
    let request = claim_of_queues("w2", 10, &queues);
    let mailed = store.claim(&request).await.unwrap();
    let mut got = claimed_ids(&mailed);
    got.sort();
    assert_eq!(got, mails);
    assert!(
        mailed
            .iter()
            .all(|t| t.timeout() == Duration::from_millis(1500)),
        "a task's own timeout wins"
    );
    assert!(store.claim(&request).await.unwrap().is_empty());

    let rest = store.claim(&claim_by("w3", 10)).await.unwrap();
    let mut got = claimed_ids(&rest);
    got.sort();
    assert_eq!(got, defaults[3..]);
}

async fn concurrent_claimers_never_share_a_task<S: TaskStore>(store: S) {
    const TASKS: usize = 300;
    const CLAIMERS: usize = 8;
    let enqueued = store
        .enqueue(&vec![new_task("shared"); TASKS])
        .await
        .unwrap();
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let worker = format!("claimer-{n}");
                let mut mine = Vec::new();
                loop {
                    let claimed = store.claim(&claim_by(&worker, 7)).await.unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    assert!(claimed.len() <= 7);
                    mine.extend(claimed_ids(&claimed));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a task was claimed twice");
    assert_eq!(unique, enqueued.into_iter().collect());
    let rows = store.list(&everything()).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Running && r.attempt == 1)
    );
}

async fn completion_is_fenced_on_the_claim_token<S: TaskStore>(store: S) {
    assert_eq!(store.complete(&[]).await.unwrap(), 0);
    store.enqueue(&vec![new_task("fenced"); 2]).await.unwrap();
    let claimed = store.claim(&claim_by("w", 2)).await.unwrap();
    let (done, other) = (&claimed[0], &claimed[1]);

    let finish = Completion {
        stdout: b"out".to_vec(),
        stderr: b"err".to_vec(),
        plugin_digest: Some("sha256:abc".to_owned()),
        ..success(done)
    };
    // Same task, same attempt, another claim: what a worker holds after
    // the database forgot its claim and handed the attempt out again.
    let stale = success(&ClaimedTask {
        token: other.token.wrapping_add(1),
        ..other.clone()
    });
    let before = now();
    assert_eq!(
        store.complete(&[finish.clone(), stale]).await.unwrap(),
        1,
        "only the current claim writes"
    );
    let row = record(&store, done.id).await;
    assert_eq!(row.status, Status::Success);
    assert_eq!(row.result.as_deref(), Some(&b"done"[..]));
    assert_eq!(row.stdout.as_deref(), Some(&b"out"[..]));
    assert_eq!(row.stderr.as_deref(), Some(&b"err"[..]));
    assert_eq!(row.plugin_digest.as_deref(), Some("sha256:abc"));
    assert_eq!(row.attempt, 1);
    assert_near(row.finished_at.expect("finished"), before, "finished_at");

    let untouched = record(&store, other.id).await;
    assert_eq!(untouched.status, Status::Running);
    assert_eq!(untouched.result, None);
    assert_eq!(untouched.attempt, 1);

    assert_eq!(
        store.complete(&[finish]).await.unwrap(),
        0,
        "a finished row is written once"
    );
}

async fn a_failed_attempt_retries_and_keeps_its_history<S: TaskStore>(store: S) {
    let task = NewTask {
        max_attempts: 3,
        ..new_task("flaky")
    };
    let id = store.enqueue(&[task]).await.unwrap()[0];
    // Texts that would break a naive encoding of the history.
    let errors = [
        "boom: a \"quoted\" ✓ failure",
        r#"["looks", "like", "json"]"#,
        "{\"also\": 1}",
    ];

    let first = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    let before = now();
    let retried = retry(&first, Duration::ZERO, errors[0]);
    assert_eq!(store.complete(&[retried]).await.unwrap(), 1);
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Waiting);
    assert_eq!(row.attempt, 1, "the attempt is spent");
    assert_near(row.run_at, before, "run_at of a retry without delay");
    assert_eq!(row.finished_at, None);
    assert_eq!(row.error.as_deref(), Some(errors[0]));
    assert_eq!(row.errors, [errors[0]]);

    let second = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));
    let later = now() + TimeDelta::hours(1);
    let retried = retry(&second, Duration::from_secs(3600), errors[1]);
    store.complete(&[retried]).await.unwrap();
    assert_near(record(&store, id).await.run_at, later, "run_at of a retry");
    assert!(
        store.claim(&claim_by("w", 1)).await.unwrap().is_empty(),
        "claimed during its backoff"
    );

    // A last attempt that fails ends the task with the whole history.
    let other = store
        .enqueue(&[NewTask {
            max_attempts: 2,
            ..new_task("flaky")
        }])
        .await
        .unwrap()[0];
    let attempt = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!(attempt.id, other);
    let retried = retry(&attempt, Duration::ZERO, errors[1]);
    store.complete(&[retried]).await.unwrap();
    let last = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!((last.id, last.attempt), (other, 2));
    store
        .complete(&[failure(&last, true, errors[2])])
        .await
        .unwrap();
    let row = record(&store, other).await;
    assert_eq!(row.status, Status::Timeout);
    assert_eq!(row.attempt, 2);
    assert_eq!(row.error.as_deref(), Some(errors[2]));
    assert_eq!(row.errors, [errors[1], errors[2]], "oldest first");
    assert!(row.finished_at.is_some());
}

/// The row waits exactly as it did before a claim the database lost (here:
/// given back by one claim, then completed under another token): the run
/// that held the lost claim is recorded as its attempt, and says so.
async fn a_run_whose_claim_was_lost_is_recorded_as_its_attempt<S: TaskStore>(store: S) {
    let id = store.enqueue(&[new_task("forgotten")]).await.unwrap()[0];
    let claimed = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    store
        .complete(&[Completion::release(&claimed)])
        .await
        .unwrap();
    let forgotten = ClaimedTask {
        token: claimed.token.wrapping_add(1),
        ..claimed.clone()
    };
    assert_eq!(store.complete(&[success(&forgotten)]).await.unwrap(), 1);
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Success);
    assert_eq!(row.attempt, 1);
    assert_eq!(row.result.as_deref(), Some(&b"done"[..]));
    assert_eq!(row.errors.len(), 1, "{:?}", row.errors);
    assert!(
        row.errors[0].starts_with("claim lost: the database forgot the claim of attempt 1;"),
        "{:?}",
        row.errors
    );
    assert!(store.claim(&claim_by("w", 1)).await.unwrap().is_empty());
    assert_eq!(
        store.complete(&[success(&forgotten)]).await.unwrap(),
        0,
        "recorded once"
    );
}

/// A run under a claim the row no longer holds (another claim of the same
/// attempt runs it) writes no outcome, but shows in the history, and the
/// newer claim's outcome is the task's.
async fn a_run_whose_claim_was_lost_shows_beside_the_newer_claim<S: TaskStore>(store: S) {
    let id = store.enqueue(&[new_task("twice")]).await.unwrap()[0];
    let newer = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    let lost = ClaimedTask {
        token: newer.token.wrapping_add(1),
        ..newer.clone()
    };
    let lost_failure = failure(&lost, false, "boom");
    assert_eq!(store.complete(&[lost_failure]).await.unwrap(), 0);
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Running, "the newer claim still runs");
    assert_eq!(row.error, None);
    assert_eq!(
        row.errors,
        [
            "claim lost: a run of attempt 1 ended error (boom) under a claim the database \
          no longer held, so it is not the task's outcome"
        ]
    );

    assert_eq!(store.complete(&[success(&newer)]).await.unwrap(), 1);
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Success);
    assert_eq!(row.attempt, 1);
    assert_eq!(row.errors.len(), 1, "the lost run stays in the history");
}

async fn a_released_task_keeps_its_attempt<S: TaskStore>(store: S) {
    let id = store.enqueue(&[new_task("released")]).await.unwrap()[0];
    let claimed = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!(
        store
            .complete(&[Completion::release(&claimed)])
            .await
            .unwrap(),
        1
    );
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Waiting);
    assert_eq!(row.attempt, 0, "a released attempt is not spent");
    assert_eq!(row.finished_at, None);
    assert!(row.errors.is_empty());

    let again = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!((again.id, again.attempt), (id, 1));
}

async fn rescue_takes_back_only_dead_workers_tasks<S: TaskStore>(store: S) {
    let retryable = NewTask {
        max_attempts: 2,
        ..new_task("lost")
    };
    let ids = store
        .enqueue(&[
            retryable.clone(),
            new_task("lost"),
            retryable.clone(),
            retryable,
        ])
        .await
        .unwrap();
    store.heartbeat("alive", &[]).await.unwrap();
    store.heartbeat("dead", &[]).await.unwrap();
    let mut dead = store.claim(&claim_expiring("dead", 3)).await.unwrap();
    dead.sort_by_key(|task| task.id);
    assert_eq!(claimed_ids(&dead), ids[..3]);
    let alive = store.claim(&claim_expiring("alive", 1)).await.unwrap();
    assert_eq!(claimed_ids(&alive), ids[3..]);
    assert_eq!(
        store.cancel(ids[2]).await.unwrap(),
        CancelOutcome::Interrupting
    );

    let rescue = RescueRequest {
        grace: Duration::ZERO,
        worker_ttl: Duration::from_millis(200),
        worker_id: "observer",
        in_flight: &[],
    };
    let rescued: std::sync::Mutex<Vec<Rescued>> = Default::default();
    wait::until(
        "the dead worker's tasks to be rescued",
        Duration::from_secs(10),
        || async {
            store.heartbeat("alive", &[]).await.unwrap();
            let round = taskbox::worker::rescuer::rescue_once(&store, &rescue)
                .await
                .unwrap();
            assert!(
                round.iter().all(|r| r.id != ids[3]),
                "rescued a live worker's task"
            );
            let mut rescued = rescued.lock().unwrap();
            rescued.extend(round);
            rescued.len() >= 3
        },
    )
    .await;
    let mut rescued = rescued.into_inner().unwrap();
    rescued.sort_by_key(|r| r.id);
    assert_eq!(
        rescued,
        [
            Rescued {
                id: ids[0],
                status: Status::Waiting
            },
            Rescued {
                id: ids[1],
                status: Status::Error
            },
            Rescued {
                id: ids[2],
                status: Status::Cancelled
            },
        ]
    );

    let lost = "worker lost: dead stopped during attempt 1";
    let again = record(&store, ids[0]).await;
    assert_eq!(again.status, Status::Waiting);
    assert_eq!(again.errors, [lost]);
    assert_eq!(again.finished_at, None);
    let failed = record(&store, ids[1]).await;
    assert_eq!(failed.error.as_deref(), Some(lost));
    assert!(failed.finished_at.is_some());
    assert!(record(&store, ids[2]).await.finished_at.is_some());
    assert_eq!(record(&store, ids[3]).await.status, Status::Running);

    let retried = store.claim(&claim_by("new", 1)).await.unwrap().remove(0);
    assert_eq!((retried.id, retried.attempt), (ids[0], 2));
    // The dead worker's late write is fenced off.
    assert_eq!(store.complete(&[success(&dead[0])]).await.unwrap(), 0);

    store.deregister("alive").await.unwrap();
}

async fn a_claim_whose_reply_was_lost_is_rescued<S: TaskStore>(store: S) {
    store.enqueue(&vec![new_task("mine"); 2]).await.unwrap();
    store.heartbeat("me", &[]).await.unwrap();
    let claimed = store.claim(&claim_expiring("me", 2)).await.unwrap();
    let (known, lost) = (claimed[0].id, claimed[1].id);
    let rescue = RescueRequest {
        grace: Duration::ZERO,
        worker_ttl: Duration::from_secs(60),
        worker_id: "me",
        in_flight: &[known],
    };
    wait::until(
        "the orphan to pass its deadline",
        Duration::from_secs(10),
        || async {
            let rescued = taskbox::worker::rescuer::rescue_once(&store, &rescue)
                .await
                .unwrap();
            assert!(
                rescued.iter().all(|r| r.id != known),
                "rescued a task its worker holds"
            );
            rescued.iter().any(|r| r.id == lost)
        },
    )
    .await;
    assert_eq!(record(&store, known).await.status, Status::Running);
    assert_eq!(record(&store, lost).await.status, Status::Error);
}

async fn cancel_reports_what_it_found_and_did<S: TaskStore>(store: S) {
    let retryable = NewTask {
        max_attempts: 3,
        ..new_task("cancelled")
    };
    let ids = store
        .enqueue(&[retryable, new_task("waiting")])
        .await
        .unwrap();
    let mut notifications = store.subscribe().await.unwrap();

    let running = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    assert_eq!(running.id, ids[0]);
    assert_eq!(
        store.cancel(ids[0]).await.unwrap(),
        CancelOutcome::Interrupting
    );
    expect_notification(&mut notifications, Notification::Cancel(ids[0])).await;
    assert_eq!(record(&store, ids[0]).await.status, Status::Running);
    // The interrupted attempt asks for a retry; the cancel turns it final.
    let retried = retry(&running, Duration::ZERO, "interrupted");
    assert_eq!(store.complete(&[retried]).await.unwrap(), 1);
    let row = record(&store, ids[0]).await;
    assert_eq!(row.status, Status::Cancelled);
    assert!(row.finished_at.is_some());

    let before = now();
    assert_eq!(
        store.cancel(ids[1]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let row = record(&store, ids[1]).await;
    assert_eq!(row.status, Status::Cancelled);
    assert_eq!(row.attempt, 0);
    assert_eq!(row.error.as_deref(), Some("cancelled before it ran"));
    assert_eq!(row.errors, ["cancelled before it ran"]);
    assert_near(row.finished_at.expect("finished"), before, "finished_at");
    assert!(store.claim(&claim_by("w", 1)).await.unwrap().is_empty());

    assert_eq!(
        store.cancel(ids[1]).await.unwrap(),
        CancelOutcome::AlreadyFinished(Status::Cancelled)
    );
    assert_eq!(
        store.cancel(ids[1] + 1000).await.unwrap(),
        CancelOutcome::NotFound
    );
}

async fn enqueue_wakes_subscribers<S: TaskStore>(store: S) {
    let mut notifications = store.subscribe().await.unwrap();
    store.enqueue(&[new_task("wake")]).await.unwrap();
    expect_notification(&mut notifications, Notification::TasksAvailable).await;
}

async fn stats_count_every_status<S: TaskStore>(store: S) {
    assert_eq!(store.stats().await.unwrap(), Stats::default());
    let ids = store.enqueue(&vec![new_task("counted"); 7]).await.unwrap();
    store.cancel(ids[6]).await.unwrap();
    let claimed = store.claim(&claim_by("w", 4)).await.unwrap();
    store
        .complete(&[
            success(&claimed[0]),
            failure(&claimed[1], false, "no"),
            failure(&claimed[2], true, "slow"),
        ])
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats,
        Stats {
            waiting: 2,
            running: 1,
            success: 1,
            error: 1,
            timeout: 1,
            cancelled: 1,
            unserved: vec!["counted".to_owned()],
        }
    );
    assert_eq!((stats.total(), stats.finished()), (7, 4));
}

async fn list_filters_newest_first<S: TaskStore>(store: S) {
    let ids = store
        .enqueue(&[
            new_task("a"),
            new_task("b"),
            new_task("a"),
            new_task("b"),
            new_task("a"),
        ])
        .await
        .unwrap();
    store.cancel(ids[2]).await.unwrap();
    store.cancel(ids[3]).await.unwrap();
    let listed = |filter: ListFilter| {
        let store = store.clone();
        async move {
            store
                .list(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };

    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed(everything()).await, newest_first);
    assert_eq!(
        listed(ListFilter {
            limit: 2,
            ..everything()
        })
        .await,
        [ids[4], ids[3]]
    );
    assert_eq!(
        listed(ListFilter {
            plugin: Some("b".to_owned()),
            ..everything()
        })
        .await,
        [ids[3], ids[1]]
    );
    assert_eq!(
        listed(ListFilter {
            status: Some(Status::Cancelled),
            ..everything()
        })
        .await,
        [ids[3], ids[2]]
    );
    assert_eq!(
        listed(ListFilter {
            status: Some(Status::Waiting),
            plugin: Some("a".to_owned()),
            ..everything()
        })
        .await,
        [ids[4], ids[0]]
    );
    assert!(
        listed(ListFilter {
            status: Some(Status::Success),
            ..everything()
        })
        .await
        .is_empty()
    );
    let rows = store.list(&everything()).await.unwrap();
    assert_eq!(rows[0].plugin, "a", "whole rows come back");
    assert_eq!(rows[1].errors, ["cancelled before it ran"]);
}

async fn has_pending_counts_backoff_but_not_scheduled_tasks<S: TaskStore>(store: S) {
    assert!(
        !store.has_pending(&Scope::default()).await.unwrap(),
        "an empty queue"
    );
    let later = NewTask {
        run_at: Some(now() + TimeDelta::hours(1)),
        ..new_task("later")
    };
    store.enqueue(&[later]).await.unwrap();
    assert!(
        !store.has_pending(&Scope::default()).await.unwrap(),
        "a task scheduled for later holds nothing"
    );

    let due = NewTask {
        max_attempts: 2,
        ..new_task("due")
    };
    let id = store.enqueue(&[due]).await.unwrap()[0];
    assert!(
        store.has_pending(&Scope::default()).await.unwrap(),
        "a due task"
    );
    let claimed = store.claim(&claim_by("w", 10)).await.unwrap().remove(0);
    assert_eq!(claimed.id, id);
    assert!(
        store.has_pending(&Scope::default()).await.unwrap(),
        "a running task"
    );

    let backoff = retry(&claimed, Duration::from_secs(3600), "again later");
    store.complete(&[backoff]).await.unwrap();
    assert!(
        store.has_pending(&Scope::default()).await.unwrap(),
        "a retry in backoff holds"
    );

    store.cancel(id).await.unwrap();
    assert!(!store.has_pending(&Scope::default()).await.unwrap());
}

/// Issue 12, item 5: a worker without `add` claimed `add` tasks and failed
/// them; now it claims only its own plugins' tasks, and its drain does not
/// wait for the others.
async fn claims_and_drains_see_only_the_plugins_a_worker_has<S: TaskStore>(store: S) {
    let ids = store
        .enqueue(&[new_task("theirs"), new_task("ours"), new_task("theirs")])
        .await
        .unwrap();
    let ours = ["ours".to_owned()];
    let scope = Scope {
        queues: &[],
        plugins: Some(&ours),
    };
    let claimed = store
        .claim(&ClaimRequest {
            scope,
            ..claim_by("w", 10)
        })
        .await
        .unwrap();
    assert_eq!(claimed_ids(&claimed), [ids[1]]);
    store.complete(&[success(&claimed[0])]).await.unwrap();
    assert!(
        !store.has_pending(&scope).await.unwrap(),
        "only other plugins' tasks wait"
    );
    assert!(store.has_pending(&Scope::default()).await.unwrap());
    let none: [String; 0] = [];
    let nothing = Scope {
        queues: &[],
        plugins: Some(&none),
    };
    assert!(
        store
            .claim(&ClaimRequest {
                scope: nothing,
                ..claim_by("w", 10)
            })
            .await
            .unwrap()
            .is_empty(),
        "no plugin loaded, nothing claimed"
    );
    assert_eq!(store.stats().await.unwrap().waiting, 2);
}

/// Issue 12, item 5: `stats` names the plugins with waiting tasks that no
/// live worker serves.
async fn stats_name_plugins_no_live_worker_serves<S: TaskStore>(store: S) {
    store
        .enqueue(&[new_task("b"), new_task("a"), new_task("c"), new_task("a")])
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().unserved, ["a", "b", "c"]);
    store
        .heartbeat("w1", &["a".to_owned(), "z".to_owned()])
        .await
        .unwrap();
    store.heartbeat("w2", &["c".to_owned()]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().unserved, ["b"]);
    store.deregister("w2").await.unwrap();
    assert_eq!(store.stats().await.unwrap().unserved, ["b", "c"]);
}

// ------------------------------------------- poison rows and clocks

/// What a few cases need to do to a database behind the store's back.
trait Backdoor: TaskStore {
    /// Set a row's `timeout_ms` through the schema (its bound applies).
    async fn set_timeout(&self, id: i64, timeout_ms: i64) -> Result<(), sqlx::Error>;

    /// Set a row's `timeout_ms` past the schema's bound, as a row written
    /// before the bound existed: the bound is lifted and put back.
    async fn set_timeout_unchecked(&self, id: i64, timeout_ms: i64);

    /// The same database through a store whose clock (`now()`) runs
    /// `ahead` of this process's, when the backend has a clock of its own.
    async fn skewed(&self, ahead: TimeDelta) -> Self;

    /// The database's `now()`, as the store's statements see it.
    async fn db_now(&self) -> DateTime<Utc>;
}

const PG_TIMEOUT_BOUND: &str = include_str!("../migrations/postgres/0004_timeout_bounded.sql");
const SQLITE_TIMEOUT_BOUND: &str = include_str!("../migrations/sqlite/0002_timeout_bounded.sql");

impl Backdoor for taskbox::store::PgStore {
    async fn set_timeout(&self, id: i64, timeout_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE tasks SET timeout_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(timeout_ms)
            .execute(self.pool())
            .await
            .map(drop)
    }

    async fn set_timeout_unchecked(&self, id: i64, timeout_ms: i64) {
        let mut tx = self.pool().begin().await.unwrap();
        sqlx::query("ALTER TABLE tasks DROP CONSTRAINT timeout_bounded")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE tasks SET timeout_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(timeout_ms)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(PG_TIMEOUT_BOUND)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn skewed(&self, ahead: TimeDelta) -> Self {
        // A `now()` of the test's own that shadows the built-in one for
        // every statement of the new pool (pg_catalog searched last, after
        // the store's schema), which the store takes as it is.
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS skewed_clock;
             CREATE OR REPLACE FUNCTION skewed_clock.now() RETURNS timestamptz
                 LANGUAGE sql STABLE AS $$ SELECT pg_catalog.now() + interval '{} seconds' $$;",
            ahead.num_seconds()
        );
        sqlx::raw_sql(&create).execute(self.pool()).await.unwrap();
        let options = (*self.pool().connect_options())
            .clone()
            .options([("search_path", "skewed_clock,taskbox,pg_catalog")]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        taskbox::store::PgStore::on_pool(pool, self.schema())
    }

    async fn db_now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(self.pool())
            .await
            .unwrap()
    }
}

impl Backdoor for taskbox::store::SqliteStore {
    async fn set_timeout(&self, id: i64, timeout_ms: i64) -> Result<(), sqlx::Error> {
        let mut conn = sqlite_connection(self).await;
        sqlx::query("UPDATE tasks SET timeout_ms = ?2 WHERE id = ?1")
            .bind(id)
            .bind(timeout_ms)
            .execute(&mut conn)
            .await
            .map(drop)
    }

    async fn set_timeout_unchecked(&self, id: i64, timeout_ms: i64) {
        let mut conn = sqlite_connection(self).await;
        sqlx::raw_sql("DROP TRIGGER timeout_bounded_insert; DROP TRIGGER timeout_bounded_update;")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE tasks SET timeout_ms = ?2 WHERE id = ?1")
            .bind(id)
            .bind(timeout_ms)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(SQLITE_TIMEOUT_BOUND)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// SQLite has no clock of its own: the store's `now()` is this
    /// process's, so there is nothing to skew.
    async fn skewed(&self, _ahead: TimeDelta) -> Self {
        self.clone()
    }

    async fn db_now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

async fn sqlite_connection(store: &taskbox::store::SqliteStore) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(store.database());
    sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap()
}

async fn enqueue_refuses_timeouts_and_run_at_past_the_bounds<S: TaskStore>(store: S) {
    use taskbox::store::{MAX_SCHEDULE_AHEAD, MAX_TASK_TIMEOUT};
    let longest = NewTask {
        timeout: Some(MAX_TASK_TIMEOUT),
        run_at: Some(
            now() + TimeDelta::from_std(MAX_SCHEDULE_AHEAD).unwrap() - TimeDelta::hours(1),
        ),
        ..new_task("bounded")
    };
    store
        .enqueue(&[longest])
        .await
        .expect("the bounds themselves are accepted");

    let too_long = NewTask {
        timeout: Some(Duration::from_secs(300_000_000 * 365 * 24 * 3600)),
        ..new_task("unbounded")
    };
    let refused = store
        .enqueue(&[new_task("fine"), too_long])
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Refused(Refused::OutOfBounds {
                index: 1,
                what: "timeout",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        format!(
            "the timeout of task 2 of 2 is {}, more than the maximum of 7days",
            humantime::format_duration(Duration::from_secs(300_000_000 * 365 * 24 * 3600))
        )
    );
    let too_late = NewTask {
        run_at: Some(now() + TimeDelta::from_std(MAX_SCHEDULE_AHEAD).unwrap() + TimeDelta::days(1)),
        ..new_task("much later")
    };
    let refused = store.enqueue(&[too_late]).await.unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Refused(Refused::OutOfBounds { what: "run_at", .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        store.stats().await.unwrap().total(),
        1,
        "nothing else written"
    );
}

/// A key the schema's CHECK would take (blank, or with a control
/// character) is refused by the store too, naming the task, and nothing
/// of the batch is written.
async fn enqueue_refuses_a_bad_key<S: TaskStore>(store: S) {
    for (key, why) in [
        (" ", "a key cannot be empty"),
        ("a\tb", "a key cannot hold control characters"),
    ] {
        let refused = store
            .enqueue(&[new_task("fine").key("tenant-1"), new_task("bad").key(key)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Refused(Refused::BadKey {
                    index: 1,
                    batch: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), format!("task 2 of 2: {why}"));
    }
    assert_eq!(
        store.stats().await.unwrap().total(),
        0,
        "something was written"
    );
}

/// A row the claim cannot give a deadline (a timeout past the bound,
/// written before the schema held the bound) ends `error` with a reason;
/// it does not fail the claim of every other task.
async fn a_row_the_claim_cannot_run_ends_error_and_the_queue_moves<S: Backdoor>(store: S) {
    let ids = store
        .enqueue(&[
            NewTask {
                priority: -1,
                ..new_task("poison")
            },
            new_task("healthy"),
        ])
        .await
        .unwrap();
    // The schema's bound is the library's, to the millisecond.
    let bound = i64::try_from(taskbox::store::MAX_TASK_TIMEOUT.as_millis()).unwrap();
    store
        .set_timeout(ids[0], bound)
        .await
        .expect("the bound itself is allowed");
    for over in [bound + 1, i64::MAX] {
        let refused = store.set_timeout(ids[0], over).await;
        assert!(
            refused.is_err(),
            "the schema let a timeout of {over} ms be written"
        );
    }
    store.set_timeout_unchecked(ids[0], i64::MAX).await;

    let claimed = store
        .claim(&claim_by("w", 10))
        .await
        .expect("the claim works");
    assert_eq!(
        claimed_ids(&claimed),
        [ids[1]],
        "the healthy task is handed out"
    );
    let poison = record(&store, ids[0]).await;
    assert_eq!(poison.status, Status::Error);
    assert_eq!(poison.attempt, 1);
    assert!(poison.finished_at.is_some());
    let reason = poison.error.expect("a reason");
    assert!(
        reason.contains("timeout") && reason.contains("7days"),
        "{reason}"
    );
    assert!(reason.contains(&i64::MAX.to_string()), "{reason}");
    assert_eq!(poison.errors, [reason]);
    assert_eq!(
        poison.timeout_ms, None,
        "cleared, so the row keeps the bound"
    );

    store.complete(&[success(&claimed[0])]).await.unwrap();
    assert!(store.claim(&claim_by("w", 10)).await.unwrap().is_empty());
    assert!(!store.has_pending(&Scope::default()).await.unwrap());

    // A keyed queue's claim refuses such a row the same way.
    let ids = store
        .enqueue(&[
            NewTask {
                priority: -1,
                ..keyed(Some("k"))
            },
            keyed(Some("k")),
        ])
        .await
        .unwrap();
    store
        .set_flow("default", &FlowChange::KeyLimit(Some(5)))
        .await
        .unwrap();
    store.set_timeout_unchecked(ids[0], i64::MAX).await;
    let claimed = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(claimed_ids(&claimed), [ids[1]], "keyed: the healthy task");
    let poison = record(&store, ids[0]).await;
    assert_eq!(poison.status, Status::Error, "keyed");
    assert_eq!(poison.timeout_ms, None, "keyed");
    store.complete(&[success(&claimed[0])]).await.unwrap();
    assert!(!store.has_pending(&Scope::default()).await.unwrap());
}

/// A retry's `run_at` is the database's `now()` plus the delay, whatever
/// the worker's clock says. On Postgres the database's clock runs an hour
/// ahead of this process's for the whole case, so a `run_at` computed from
/// the process's clock would be an hour early. (SQLite's clock is the
/// process's own.)
async fn a_retry_waits_its_delay_on_the_databases_clock<S: Backdoor>(store: S) {
    let store = store.skewed(TimeDelta::hours(1)).await;
    let id = store
        .enqueue(&[NewTask {
            max_attempts: 3,
            ..new_task("flaky")
        }])
        .await
        .unwrap()[0];
    let first = store.claim(&claim_by("w", 1)).await.unwrap().remove(0);
    let delay = Duration::from_secs(600);
    let retried = retry(&first, delay, "again");
    assert_eq!(store.complete(&[retried]).await.unwrap(), 1);
    let run_at = record(&store, id).await.run_at;
    let ahead = run_at - store.db_now().await;
    let expected = TimeDelta::from_std(delay).unwrap();
    assert!(
        (ahead - expected).abs() <= CLOCK_SLACK,
        "run_at is {ahead} after the database's now, expected {expected}"
    );
    assert!(
        store.claim(&claim_by("w", 1)).await.unwrap().is_empty(),
        "claimed during its backoff"
    );
}

// ---------------------------------------------------------- SQLite only

/// One worker process per SQLite file: a second store on the same file
/// (as a second process would open) can neither lock nor claim until the
/// first is gone.
#[tokio::test]
async fn sqlite_admits_one_worker_per_file() {
    let db = SqliteDb::new().await;
    let path = db.dir.path().join(SQLITE_FILE);
    db.store.enqueue(&[new_task("locked")]).await.unwrap();
    db.store.lock_worker().unwrap();
    db.store.lock_worker().expect("locking again is a no-op");

    let second = taskbox::store::SqliteStore::open(&path);
    match second.lock_worker() {
        Err(StoreError::WorkerLocked { database, holder }) => {
            assert!(database.ends_with(SQLITE_FILE), "{}", database.display());
            assert_eq!(holder, Some(std::process::id()));
        }
        other => panic!("a second worker was admitted: {other:?}"),
    }
    let refused = second.claim(&claim_by("second", 1)).await;
    assert!(
        matches!(refused, Err(StoreError::WorkerLocked { .. })),
        "{refused:?}"
    );
    assert_eq!(second.stats().await.unwrap().waiting, 1, "reads still work");

    drop(db.store);
    // Released with the first store's file, but a child process another
    // test forks meanwhile shares that open file until its exec closes it.
    wait::until(
        "the first store's lock to go",
        Duration::from_secs(10),
        || async {
            match second.lock_worker() {
                Ok(()) => true,
                Err(StoreError::WorkerLocked { .. }) => false,
                Err(other) => panic!("locking failed: {other}"),
            }
        },
    )
    .await;
    assert_eq!(second.claim(&claim_by("second", 1)).await.unwrap().len(), 1);
}

/// Beside a paused queue, or for named queues, a claim takes each queue
/// it serves on its own; its batch is still the first tasks of all of
/// them together in claim order, and a paused queue's tasks, however
/// early, are not among them.
async fn a_claim_queue_by_queue_keeps_claim_order_across_queues<S: TaskStore>(store: S) {
    let base = now();
    let task = |queue: &str, seconds: i64, priority: i32| NewTask {
        queue: queue.to_owned(),
        priority,
        run_at: Some(base + TimeDelta::seconds(seconds)),
        ..new_task("ordered")
    };
    let ids = store
        .enqueue(&[
            task("held", -9, -9), // 0: first of all, but paused
            task("a", -1, 1),     // 1: the worst priority: last
            task("b", -3, 0),     // 2: second
            task("a", -4, 0),     // 3: priority 0, the earliest: first
            task("b", -2, 0),     // 4: third
            task("c", -1, 0),     // 5: fourth, when c is served
            task("a", 3600, -5),  // 6: the best priority, but not due
        ])
        .await
        .unwrap();
    assert!(store.set_paused("held", true).await.unwrap());

    let named = ["a".to_owned(), "b".to_owned()];
    let of_a_and_b = claim_of_queues("w", 2, &named);
    let first = store.claim(&of_a_and_b).await.unwrap();
    assert_eq!(claimed_ids(&first), [ids[3], ids[2]], "named queues");

    let rest = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(
        claimed_ids(&rest),
        [ids[4], ids[5], ids[1]],
        "every queue but the paused one"
    );
    for waiting in [ids[0], ids[6]] {
        assert_eq!(record(&store, waiting).await.status, Status::Waiting);
    }
}

async fn a_paused_queue_is_not_claimed_until_resumed<S: TaskStore>(store: S) {
    let held = |plugin: &str| NewTask {
        queue: "held".to_owned(),
        ..new_task(plugin)
    };
    let ids = store
        .enqueue(&[held("a"), held("b"), new_task("c")])
        .await
        .unwrap();
    assert!(
        !store.set_paused("nowhere", true).await.unwrap(),
        "an unknown queue"
    );
    assert!(store.set_paused("held", true).await.unwrap());
    assert!(
        store.set_paused("held", true).await.unwrap(),
        "pausing twice"
    );

    let claimed = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(
        claimed_ids(&claimed),
        [ids[2]],
        "only the queue that serves"
    );
    let queues = store.queues().await.unwrap();
    let shown: Vec<_> = queues
        .iter()
        .map(|q| (q.name.as_str(), q.waiting, q.running, q.paused))
        .collect();
    assert_eq!(shown, [("default", 0, 1, false), ("held", 2, 0, true)]);
    store.complete(&[success(&claimed[0])]).await.unwrap();
    assert!(
        !store.has_pending(&Scope::default()).await.unwrap(),
        "a drain waits for no paused task"
    );

    assert!(store.set_paused("held", false).await.unwrap());
    let claimed = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(claimed_ids(&claimed), ids[..2]);
    assert!(!store.queues().await.unwrap()[1].paused);
}

async fn two_rescuers_of_one_row_write_it_once<S: TaskStore>(store: S) {
    use taskbox::worker::rescuer::rescue_of;
    let retryable = NewTask {
        max_attempts: 2,
        ..new_task("lost")
    };
    let id = store.enqueue(&[retryable]).await.unwrap()[0];
    store.heartbeat("dead", &[]).await.unwrap();
    store.claim(&claim_expiring("dead", 1)).await.unwrap();
    let rescue = RescueRequest {
        grace: Duration::ZERO,
        worker_ttl: Duration::from_millis(200),
        worker_id: "observer",
        in_flight: &[],
    };
    let first: std::sync::Mutex<Vec<_>> = Default::default();
    wait::until("the row to be lost", Duration::from_secs(10), || async {
        let found = store.lost(&rescue).await.unwrap();
        let seen = !found.is_empty();
        *first.lock().unwrap() = found;
        seen
    })
    .await;
    // A second rescuer finds the same row before the first writes it.
    let second = store.lost(&rescue).await.unwrap();
    let first = first.into_inner().unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_eq!(store.complete(&[rescue_of(&first[0])]).await.unwrap(), 1);
    assert_eq!(store.complete(&[rescue_of(&second[0])]).await.unwrap(), 0);
    let row = record(&store, id).await;
    assert_eq!(row.status, Status::Waiting);
    assert_eq!(row.errors, ["worker lost: dead stopped during attempt 1"]);
}

fn in_queue(queue: &str, plugin: &str) -> NewTask {
    NewTask {
        queue: queue.to_owned(),
        ..new_task(plugin)
    }
}

/// How many of `claimed` are in `queue` (by the plugin named after it).
fn of_queue(claimed: &[ClaimedTask], queue: &str) -> usize {
    claimed.iter().filter(|task| task.plugin == queue).count()
}

async fn a_queue_limit_counts_every_way_a_run_ends<S: TaskStore>(store: S) {
    let capped: Vec<NewTask> = (0..8)
        .map(|_| NewTask {
            max_attempts: 3,
            ..in_queue("capped", "capped")
        })
        .collect();
    store.enqueue(&capped).await.unwrap();
    store
        .enqueue(&[new_task("free"), new_task("free"), new_task("free")])
        .await
        .unwrap();
    store
        .set_flow("capped", &FlowChange::Limit(Some(2)))
        .await
        .unwrap();

    let first = store.claim(&claim_by("w1", 10)).await.unwrap();
    assert_eq!(of_queue(&first, "capped"), 2, "the limit");
    assert_eq!(of_queue(&first, "free"), 3, "other queues fill the rest");
    let second = store.claim(&claim_by("w2", 10)).await.unwrap();
    assert!(second.is_empty(), "another worker counts the same runs");
    let running: Vec<&ClaimedTask> = first.iter().filter(|t| t.plugin == "capped").collect();

    // Each way out of `running` gives its place back, and only its own.
    let ways = [
        ("success", success(running[0])),
        (
            "retry",
            Completion::new(
                running[1],
                Transition::Retry {
                    after: Duration::ZERO,
                    error: "again".into(),
                },
            ),
        ),
    ];
    let mut held = Vec::new();
    for (way, completion) in ways {
        assert_eq!(store.complete(&[completion]).await.unwrap(), 1);
        let next = store.claim(&claim_by("w2", 10)).await.unwrap();
        assert_eq!(next.len(), 1, "after a {way}, one place");
        held.extend(next);
    }
    assert_eq!(
        store
            .complete(&[Completion::release(&held[0])])
            .await
            .unwrap(),
        1
    );
    let after_release = store.claim(&claim_by("w3", 10)).await.unwrap();
    assert_eq!(after_release.len(), 1, "after a release, one place");

    // A stale completion (another claim's token) gives back nothing.
    let stale = success(&ClaimedTask {
        token: held[1].token.wrapping_add(1),
        ..held[1].clone()
    });
    store.complete(&[stale]).await.unwrap();
    assert!(store.claim(&claim_by("w3", 10)).await.unwrap().is_empty());

    // The rescue writes through the same completion.
    store
        .complete(&[taskbox::worker::rescuer::rescue_of(
            &taskbox::store::LostRun {
                id: after_release[0].id,
                attempt: after_release[0].attempt,
                max_attempts: after_release[0].max_attempts,
                token: after_release[0].token,
                worker_id: Some("w3".into()),
                cancel_requested: false,
            },
        )])
        .await
        .unwrap();
    assert_eq!(store.claim(&claim_by("w4", 10)).await.unwrap().len(), 1);

    let shown = store.queues().await.unwrap();
    let capped = shown.iter().find(|q| q.name == "capped").unwrap();
    assert_eq!((capped.running, capped.limit), (2, Some(2)));

    store
        .set_flow("capped", &FlowChange::Limit(None))
        .await
        .unwrap();
    let unlimited = store.claim(&claim_by("w5", 10)).await.unwrap();
    assert_eq!(unlimited.len(), 5, "cleared: every waiting task");
}

async fn a_limit_set_while_tasks_run_counts_them<S: TaskStore>(store: S) {
    let tasks: Vec<NewTask> = (0..6).map(|_| in_queue("late", "late")).collect();
    store.enqueue(&tasks).await.unwrap();
    let running = store.claim(&claim_by("w1", 3)).await.unwrap();
    assert_eq!(running.len(), 3);
    store
        .set_flow("late", &FlowChange::Limit(Some(2)))
        .await
        .unwrap();
    assert!(
        store.claim(&claim_by("w2", 10)).await.unwrap().is_empty(),
        "three already run"
    );
    store.complete(&[success(&running[0])]).await.unwrap();
    assert!(store.claim(&claim_by("w2", 10)).await.unwrap().is_empty());
    store.complete(&[success(&running[1])]).await.unwrap();
    assert_eq!(store.claim(&claim_by("w2", 10)).await.unwrap().len(), 1);
}

async fn a_rate_holds_across_claims<S: TaskStore>(store: S) {
    let tasks: Vec<NewTask> = (0..10).map(|_| in_queue("rated", "rated")).collect();
    store.enqueue(&tasks).await.unwrap();
    // An hour's window: a tenth of it is six minutes, longer than the test.
    let rate: Rate = "20/1h".parse().unwrap();
    store
        .set_flow(
            "rated",
            &FlowChange::Rate {
                rate: Some(rate),
                per_key: false,
            },
        )
        .await
        .unwrap();
    let first = store.claim(&claim_by("w1", 10)).await.unwrap();
    assert_eq!(first.len(), 2, "a tenth of the count at once");
    store.complete(&[success(&first[0])]).await.unwrap();
    assert!(
        store.claim(&claim_by("w2", 10)).await.unwrap().is_empty(),
        "starts count, not runs"
    );
    let shown = store.queues().await.unwrap();
    assert_eq!(shown[0].rate.as_deref(), Some("20/1h"));
}

fn keyed(key: Option<&str>) -> NewTask {
    NewTask {
        key: key.map(str::to_owned),
        ..new_task("keyed")
    }
}

/// The keys of `claimed`, sorted (`-`: none): a claim's order is the
/// store's to choose.
fn keys_claimed(claimed: &[ClaimedTask]) -> Vec<String> {
    let mut keys: Vec<String> = claimed
        .iter()
        .map(|task| task.key.clone().unwrap_or_else(|| "-".to_owned()))
        .collect();
    keys.sort();
    keys
}

async fn a_key_limit_takes_keys_in_turn<S: TaskStore>(store: S) {
    let mut tasks: Vec<NewTask> = (0..6).map(|_| keyed(Some("big"))).collect();
    tasks.extend([
        keyed(Some("a")),
        keyed(Some("a")),
        keyed(Some("c")),
        keyed(Some("c")),
    ]);
    tasks.push(keyed(None));
    store.enqueue(&tasks).await.unwrap();
    store
        .set_flow("default", &FlowChange::KeyLimit(Some(2)))
        .await
        .unwrap();

    let first = store.claim(&claim_by("w", 3)).await.unwrap();
    assert_eq!(
        keys_claimed(&first),
        ["a", "big", "c"],
        "one of each key first"
    );
    let second = store.claim(&claim_by("w", 3)).await.unwrap();
    assert_eq!(
        keys_claimed(&second),
        ["-", "a", "big"],
        "the keyless after the last key, then from the first"
    );
    let third = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(keys_claimed(&third), ["c"], "a and big are at their limit");
    let big = first
        .iter()
        .find(|t| t.key.as_deref() == Some("big"))
        .unwrap();
    store.complete(&[success(big)]).await.unwrap();
    let fourth = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(keys_claimed(&fourth), ["big"], "a place of big's own");
    let shown = store.queues().await.unwrap();
    assert_eq!(shown[0].key_limit, Some(2));
}

/// A keyed claim hands its tasks out in its turns, the order a worker
/// starts them in: every key's first task, then every key's second, each
/// key's own in claim order, whatever order the rows were written in.
async fn a_keyed_claim_hands_its_tasks_out_in_turns<S: TaskStore>(store: S) {
    let mut tasks: Vec<NewTask> = (0..3).map(|_| keyed(Some("big"))).collect();
    tasks.extend([keyed(Some("a")), keyed(Some("a"))]);
    // The last one enqueued runs first of its key.
    tasks.push(NewTask {
        priority: -1,
        ..keyed(Some("a"))
    });
    let ids = store.enqueue(&tasks).await.unwrap();
    store
        .set_flow("default", &FlowChange::KeyLimit(Some(10)))
        .await
        .unwrap();

    let claimed = store.claim(&claim_by("w", 6)).await.unwrap();
    let expected = [ids[5], ids[0], ids[3], ids[1], ids[4], ids[2]];
    assert_eq!(claimed_ids(&claimed), expected, "a, big, a, big, a, big");
}

async fn a_rate_per_key_holds_each_key_apart<S: TaskStore>(store: S) {
    let mut tasks: Vec<NewTask> = (0..4).map(|_| keyed(Some("a"))).collect();
    tasks.extend((0..4).map(|_| keyed(Some("b"))));
    store.enqueue(&tasks).await.unwrap();
    store
        .set_flow(
            "default",
            &FlowChange::Rate {
                rate: Some("1/1h".parse().unwrap()),
                per_key: true,
            },
        )
        .await
        .unwrap();
    let first = store.claim(&claim_by("w", 10)).await.unwrap();
    assert_eq!(keys_claimed(&first), ["a", "b"], "one start per key");
    assert!(store.claim(&claim_by("w", 10)).await.unwrap().is_empty());
    assert!(store.queues().await.unwrap()[0].rate_per_key);
}

//! Enqueue from SQL, through `psql` for real: `taskbox.enqueue(...)` inside
//! the caller's transaction (rolled back: no task; committed: a worker is
//! woken at commit and runs it), `taskbox.enqueue_many(...)` in input order,
//! bad input refused with one sentence and nothing written, and JSON args
//! that do not fit the plugin's schema ending the task `error` at once.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::cli::args::MAX_QUEUE_NAME;
use taskbox::sandbox::Plugins;
use taskbox::store::{
    DEFAULT_MAX_ARGS_BYTES, MAX_SCHEDULE_AHEAD, MAX_TASK_TIMEOUT, PgStore, Status, TaskStore,
};
use taskbox::worker::{Shutdown, Worker, WorkerConfig, WorkerReport};

/// The idle worker's poll interval: a task it starts sooner than a tenth
/// of this was woken by the notification.
const POLL: Duration = Duration::from_secs(60);
/// How long a task may take to finish once woken.
const FINISH_WITHIN: Duration = Duration::from_secs(30);

/// Run `script` in `psql` on the test's database, as an application
/// would (verbose errors, so each carries its SQLSTATE); stdout on
/// success, stderr on failure.
async fn psql(pool: &PgPool, script: &str) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("psql")
        .arg(database_url(pool))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg("VERBOSITY=verbose")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    if output.status.success() {
        Ok(stdout_of(&output))
    } else {
        Err(stderr_of(&output))
    }
}

/// A worker serving until told to stop, polling only every [`POLL`].
fn serve(
    store: &PgStore,
    plugins: &Arc<Plugins>,
) -> (Shutdown, tokio::task::JoinHandle<WorkerReport>) {
    let shutdown = Shutdown::default();
    let worker = Worker::new(
        store.clone(),
        plugins.clone(),
        WorkerConfig {
            concurrency: 2,
            poll_interval: POLL,
            ..WorkerConfig::default()
        },
    );
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move { worker.run(stop).await.expect("the worker runs") });
    (shutdown, handle)
}

/// Wait for task `id` to end, well within [`POLL`]: a worker that did
/// not hear of it would not even claim it in this time.
async fn until_final(store: &PgStore, id: i64) {
    let what = format!("task {id} to finish (the worker polls only every {POLL:?})");
    wait::until(&what, FINISH_WITHIN, || async {
        record(store, id).await.status.is_final()
    })
    .await;
}

fn shown(pool: &PgPool, id: i64) -> Value {
    let output = run(taskbox(pool).args(["show", &id.to_string(), "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_slice(&output.stdout).expect("show --json prints JSON")
}

/// Item 2: inside `BEGIN ... ROLLBACK` the call leaves no task; inside
/// `BEGIN ... COMMIT` an idle worker starts the task at once (woken by the
/// commit's notification, not its minute-long poll) and runs it to the
/// right result; `show` prints the args as the JSON given. The caller's
/// search path, and an application's own `tasks` table on it, do not
/// matter.
#[sqlx::test(migrations = false)]
async fn a_committed_call_wakes_a_worker_and_a_rolled_back_one_leaves_nothing(pool: PgPool) {
    let store = store(pool.clone()).await;
    let plugins = plugins();
    // An idle worker that is surely listening: it has run a task.
    let first = store
        .enqueue(&[task(&plugins, "add", json!({"a": 0, "b": 0})).await])
        .await
        .unwrap()[0];
    let (shutdown, worker) = serve(&store, &plugins);
    until_final(&store, first).await;
    sqlx::query("CREATE TABLE public.tasks (id int, plugin text)")
        .execute(&pool)
        .await
        .unwrap();

    // From an app's session, its own `tasks` first on the search path;
    // the transaction ends with `end`. The id the function returned.
    let enqueue_then = |end: &'static str| {
        let pool = pool.clone();
        async move {
            let said = psql(
                &pool,
                &format!(
                    "SET search_path TO public;
                     BEGIN;
                     SELECT taskbox.enqueue('add', '{{\"a\": 1, \"b\": 2}}'::jsonb, priority => 5);
                     {end};"
                ),
            )
            .await
            .unwrap();
            said.trim().parse::<i64>().expect("an id")
        }
    };
    let rolled_back = enqueue_then("ROLLBACK").await;
    assert!(store.get(rolled_back).await.unwrap().is_none());

    let id = enqueue_then("COMMIT").await;
    until_final(&store, id).await;
    shutdown.stop.cancel();
    worker.await.unwrap();

    let task = record(&store, id).await;
    assert_eq!(
        (task.status, task.attempt, task.priority),
        (Status::Success, 1, 5)
    );
    let waited = task.started_at.unwrap() - task.enqueued_at;
    assert!(
        waited.to_std().unwrap() < POLL / 10,
        "started {waited} after the enqueue: not woken by the commit"
    );
    let view = shown(&pool, id);
    assert_eq!(
        (&view["args"], &view["result"]),
        (&json!({"a": 1, "b": 2}), &json!(3))
    );
    assert_eq!(
        stats_total(&store).await,
        2,
        "the rolled-back task was written"
    );
    let app_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(app_rows, 0, "the application's table was written to");
}

async fn stats_total(store: &PgStore) -> i64 {
    store.stats().await.unwrap().total()
}

/// Item 2: the batch form takes an array of task objects, writes them all
/// in one call and returns their ids in input order; every field arrives.
#[sqlx::test(migrations = false)]
async fn the_batch_form_returns_ids_in_input_order(pool: PgPool) {
    let store = store(pool.clone()).await;
    let batch = (1..=5)
        .map(|n| json!({"plugin": "add", "args": {"a": n, "b": n}, "priority": -n}))
        .chain([json!({
            "plugin": "snoop", "queue": "slow", "max_attempts": 3, "timeout": "30s 250ms",
            "run_at": "2020-01-01T00:00:00Z", "key": "tenant-1"
        })])
        .collect::<Vec<_>>();
    let out = psql(
        &pool,
        &format!(
            "SELECT array_to_json(taskbox.enqueue_many('{}'));",
            Value::Array(batch).to_string().replace('\'', "''")
        ),
    )
    .await
    .unwrap();
    let ids: Vec<i64> = serde_json::from_str(out.trim()).expect("a JSON array of ids");
    assert_eq!(ids.len(), 6);
    let last = record(&store, ids[5]).await;
    assert_eq!(last.key.as_deref(), Some("tenant-1"));
    assert_eq!(record(&store, ids[0]).await.key, None, "no key given");
    let keyed = psql(
        &pool,
        "SELECT taskbox.enqueue('snoop', NULL, key => 'tenant-2');",
    )
    .await
    .unwrap();
    let keyed = record(&store, keyed.trim().parse().unwrap()).await;
    assert_eq!(keyed.key.as_deref(), Some("tenant-2"));
    assert_eq!(
        (
            last.plugin.as_str(),
            last.queue.as_str(),
            last.max_attempts,
            last.timeout_ms,
            last.args_json.as_deref(),
            last.run_at.to_rfc3339()
        ),
        (
            "snoop",
            "slow",
            3,
            Some(30_250),
            Some("null"),
            "2020-01-01T00:00:00+00:00".to_owned()
        )
    );
    drain(&store, &plugins(), worker_config(4)).await;
    for (n, id) in (1..=5).zip(&ids) {
        let view = shown(&pool, *id);
        assert_eq!(
            (&view["args"], &view["result"], &view["priority"]),
            (&json!({"a": n, "b": n}), &json!(2 * n), &json!(-n)),
            "task {id}"
        );
    }
    assert_eq!(
        shown(&pool, ids[5])["status"],
        json!("success"),
        "no args: null"
    );
}

/// Item 2: each bad input raises SQLSTATE 22023 with one sentence and
/// writes nothing; a bad task in a batch refuses the whole batch, naming
/// the task.
#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_with_one_sentence_and_nothing_written(pool: PgPool) {
    let store = store(pool.clone()).await;
    // The bounds are the Rust constants', written into the migration: a
    // change to one without the other fails here.
    let days = |bound: Duration| bound.as_secs() / 86_400;
    let week = days(MAX_TASK_TIMEOUT);
    let ahead = days(MAX_SCHEDULE_AHEAD);
    let limit = DEFAULT_MAX_ARGS_BYTES;
    let big = "x".repeat(limit);
    let long_queue = "q".repeat(MAX_QUEUE_NAME + 1);
    let cases: Vec<(String, String)> =
        vec![
        (
            "SELECT taskbox.enqueue(NULL, '{}')".into(),
            "the plugin name is NULL or empty".into(),
        ),
        (
            "SELECT taskbox.enqueue('', '{}')".into(),
            "the plugin name is NULL or empty".into(),
        ),
        (
            "SELECT taskbox.enqueue('add', '{}', timeout => '0 seconds')".into(),
            "the timeout must be at least 1 millisecond".into(),
        ),
        (
            "SELECT taskbox.enqueue('add', '{}', timeout => '-5 seconds')".into(),
            "the timeout must be at least 1 millisecond".into(),
        ),
        (
            format!("SELECT taskbox.enqueue('add', '{{}}', timeout => '{week} days 1 ms')"),
            format!("more than the maximum of {week} days"),
        ),
        (
            "SELECT taskbox.enqueue('add', '{}', max_attempts => 0)".into(),
            "max_attempts must be at least 1 (it was 0)".into(),
        ),
        (
            format!(
                "SELECT taskbox.enqueue('add', '{{}}', run_at => now() + interval '{} days')",
                ahead + 1
            ),
            format!("more than the maximum of {ahead} days from now"),
        ),
        (
            "SELECT taskbox.enqueue('add', '{}', queue => ' ')".into(),
            "a queue name cannot be empty".into(),
        ),
        (
            format!("SELECT taskbox.enqueue('add', '{{}}', queue => '{long_queue}')"),
            format!("a queue name is at most {MAX_QUEUE_NAME} characters"),
        ),
        (
            format!("SELECT taskbox.enqueue('add', jsonb_build_object('s', '{big}'))"),
            format!("more than the limit of {limit} bytes"),
        ),
        (
            "SELECT taskbox.enqueue_many('{\"plugin\": \"add\"}')".into(),
            "enqueue_many takes a JSON array of task objects".into(),
        ),
        (
            "SELECT taskbox.enqueue_many('[{\"plugin\": \"add\", \"args\": {\"a\": 1, \"b\": 2}},
                                           {\"plugin\": \"add\", \"max_attempts\": 0}]')"
                .into(),
            "task 2 of 2: max_attempts must be at least 1".into(),
        ),
        (
            "SELECT taskbox.enqueue_many('[{\"plugin\": \"add\", \"atgs\": {}}]')".into(),
            "task 1 of 1: it has the field \"atgs\"".into(),
        ),
        (
            "SELECT taskbox.enqueue('add', '{}', key => ' ')".into(),
            "a key cannot be empty".into(),
        ),
        (
            format!("SELECT taskbox.enqueue('add', '{{}}', key => '{}')", "k".repeat(129)),
            "a key is at most 128 characters (it was 129)".into(),
        ),
        (
            "SELECT taskbox.enqueue_many('[{\"plugin\": \"add\", \"key\": \"\"}]')".into(),
            "task 1 of 1: a key cannot be empty".into(),
        ),
    ];
    for (sql, message) in &cases {
        let shown_sql = &sql[..sql.len().min(120)];
        let stderr = psql(&pool, sql)
            .await
            .expect_err(&format!("{shown_sql} was taken"));
        let error = stderr
            .lines()
            .find_map(|line| line.split_once("ERROR:  22023: "))
            .map(|(_, sentence)| sentence)
            .unwrap_or_else(|| panic!("{shown_sql}: no SQLSTATE 22023 in: {stderr}"));
        assert!(error.contains(message.as_str()), "{shown_sql}: {stderr}");
        assert!(
            !error.contains(". "),
            "{shown_sql}: more than one sentence: {error}"
        );
    }
    assert_eq!(stats_total(&store).await, 0, "a refused call wrote a task");
    // At the bounds, and NULL args (JSON null, as for a plugin that takes
    // none), are taken.
    let taken = psql(
        &pool,
        &format!(
            "SELECT taskbox.enqueue('snoop', NULL, timeout => '{week} days',
                                    run_at => now() + interval '{ahead} days',
                                    queue => '{}')",
            "q".repeat(MAX_QUEUE_NAME)
        ),
    )
    .await;
    assert!(taken.is_ok(), "{taken:?}");
}

/// Item 2: JSON args that do not fit the plugin's args schema end the task
/// `error` on its first attempt, whatever attempts remain, with a message
/// naming the field; args that fit run.
#[sqlx::test(migrations = false)]
async fn args_that_do_not_fit_end_the_task_at_once_naming_the_field(pool: PgPool) {
    let store = store(pool.clone()).await;
    let out = psql(
        &pool,
        "SELECT taskbox.enqueue('add', '{\"a\": 1}', max_attempts => 3);
         SELECT taskbox.enqueue('add', '{\"a\": 1, \"b\": \"two\"}', max_attempts => 3);
         SELECT taskbox.enqueue('add', '{\"a\": 1, \"b\": 2, \"c\": 3}', max_attempts => 3);
         SELECT taskbox.enqueue('add', '{\"a\": 1, \"b\": 2}', max_attempts => 3);",
    )
    .await
    .unwrap();
    let ids: Vec<i64> = out.lines().map(|line| line.parse().unwrap()).collect();
    let report = drain(&store, &plugins(), worker_config(4)).await;
    assert_eq!(report.claimed, 4, "one attempt each");
    for (id, field) in ids.iter().zip([
        "field `b` is missing",
        "field `b` is not of type i64: \"two\"",
        "field `c` is not one it takes",
    ]) {
        let task = record(&store, *id).await;
        assert_eq!(
            (task.status, task.attempt, task.max_attempts),
            (Status::Error, 1, 3),
            "task {id}: {:?}",
            task.error
        );
        let error = task.error.unwrap_or_default();
        assert!(
            error.starts_with("the args do not fit plugin `add`: ") && error.contains(field),
            "task {id}: {error}"
        );
        assert_eq!(task.errors, [error], "task {id}");
        assert!(task.plugin_digest.is_some(), "task {id}");
    }
    let fits = record(&store, ids[3]).await;
    assert_eq!((fits.status, fits.attempt), (Status::Success, 1));
}

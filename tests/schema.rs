//! taskbox keeps everything it creates on Postgres in one schema of its own
//! (`taskbox`, or `--schema NAME`), migration history included: it migrates
//! into an application's database beside the application's own `tasks`
//! table and sqlx history without touching either, a database made by the
//! release before schemas (all in `public`) moves into the schema with every
//! row kept, and schemas in one database do not hear each other's cancels.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use taskbox::store::{CancelOutcome, NewTask, Notification, PgStore, SchemaName, TaskStore};

/// The migrations the release before schemas shipped (`0001` to `0005`),
/// which it applied into `public`.
const PREVIOUS_RELEASE_MIGRATIONS: i64 = 5;

/// How long a notification may take to arrive.
const NOTIFY_WITHIN: Duration = Duration::from_secs(10);

fn migrations_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres")
}

/// The versions of every Postgres migration this build carries.
fn all_versions() -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(migrations_dir())
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.split('_').next().unwrap().parse().unwrap()
        })
        .collect();
    versions.sort();
    versions
}

/// Apply `files` (name, SQL) to `pool`'s default search path (`public`)
/// with a sqlx migrator, as an application or an older taskbox does.
async fn migrate_like_sqlx(pool: &PgPool, files: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let migrator = Migrator::new(dir.path()).await.unwrap();
    migrator.run(pool).await.unwrap();
}

/// The previous release's database: its migrations applied into `public`
/// by a sqlx migrator, as that release did (its history in
/// `public._sqlx_migrations`).
async fn previous_release(pool: &PgPool) {
    let files = migrations_up_to(PREVIOUS_RELEASE_MIGRATIONS);
    migrate_like_sqlx(pool, &files).await;
}

/// The migrations (name, SQL) up to version `last`.
fn migrations_up_to(last: i64) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(migrations_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version <= last {
            files.push((name, std::fs::read_to_string(entry.path()).unwrap()));
        }
    }
    assert_eq!(files.len(), last as usize);
    files
}

/// The database a release with migrations up to `last` made in the
/// `taskbox` schema (its history in `taskbox._sqlx_migrations`).
async fn release_in_schema_up_to(pool: &PgPool, last: i64) {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in migrations_up_to(last) {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("CREATE SCHEMA taskbox; SET search_path TO taskbox")
        .execute(&mut *conn)
        .await
        .unwrap();
    let migrator = Migrator::new(dir.path()).await.unwrap();
    migrator.run(&mut *conn).await.unwrap();
    conn.close().await.unwrap();
}

async fn text(pool: &PgPool, sql: &str) -> String {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .unwrap_or_default()
}

/// Every relation (tables, indexes, sequences) and function in `schema`.
async fn objects_in(pool: &PgPool, schema: &str) -> String {
    let sql = format!(
        "SELECT string_agg(name, ', ' ORDER BY name) FROM (
             SELECT c.relname || ' (' || c.relkind::text || ')' AS name
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = '{schema}'
             UNION ALL
             SELECT p.proname::text || '()' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = '{schema}') o"
    );
    text(pool, &sql).await
}

/// Columns later migrations add to the previous release's tables
/// (`plugins`: 0006, `args_json`: 0007, `waited`: 0008, `claim_token`:
/// 0009, `key`: 0011).
const ADDED_COLUMNS: &str = "ARRAY['args_json', 'plugins', 'waited', 'claim_token', 'key']";

/// A table's rows as JSON text, in `order`, without [`ADDED_COLUMNS`].
async fn rows_of(pool: &PgPool, table: &str, order: &str) -> String {
    text(
        pool,
        &format!(
            "SELECT jsonb_agg(to_jsonb(t) - {ADDED_COLUMNS} ORDER BY {order})::text FROM {table} t"
        ),
    )
    .await
}

async fn history_of(pool: &PgPool, schema: &str, up_to: i64) -> String {
    text(
        pool,
        &format!(
            "SELECT jsonb_agg(to_jsonb(h) ORDER BY version)::text
             FROM {schema}._sqlx_migrations h WHERE version <= {up_to}"
        ),
    )
    .await
}

fn taskbox_ok(pool: &PgPool, args: &[&str]) -> String {
    let output = run(taskbox(pool).args(args));
    assert!(
        output.status.success(),
        "taskbox {args:?}: {}",
        stderr_of(&output)
    );
    stdout_of(&output)
}

fn shown(pool: &PgPool, id: i64) -> Value {
    let out = taskbox_ok(pool, &["show", &id.to_string(), "--json"]);
    serde_json::from_str(&out).expect("show --json prints JSON")
}

/// The runs a release with a row per counted run (migrations up to 14)
/// counted stay counted, each under its queue and key, when the database
/// upgrades to a row per claim: a limit holds across the upgrade.
#[sqlx::test(migrations = false)]
async fn counted_runs_stay_counted_through_the_upgrade_to_a_row_per_claim(pool: PgPool) {
    release_in_schema_up_to(&pool, 14).await;
    sqlx::raw_sql(
        "INSERT INTO taskbox.counted_runs (task_id, queue, key)
         VALUES (7, 'mail', 'tenant-1'), (3, 'mail', NULL), (9, 'mail', 'tenant-1'),
                (4, 'bulk', 'tenant-2')",
    )
    .execute(&pool)
    .await
    .unwrap();

    taskbox_ok(&pool, &["migrate"]);

    let counted = text(
        &pool,
        "SELECT string_agg(format('%s %s %s', c.queue, coalesce(u.key, '-'), u.id), ', '
                           ORDER BY c.queue, u.id)
         FROM taskbox.counted_claims c, unnest(c.task_ids, c.keys) AS u(id, key)",
    )
    .await;
    assert_eq!(
        counted,
        "bulk tenant-2 4, mail - 3, mail tenant-1 7, mail tenant-1 9"
    );
    assert_eq!(
        text(&pool, "SELECT to_regclass('taskbox.counted_runs')::text").await,
        "",
        "the table of a row per run is gone"
    );
}

/// Item 1: a database the previous release made, its tables in `public`
/// and tasks in every status, upgrades in place on `migrate`: every row and
/// the history move into the `taskbox` schema unchanged, `public` is left
/// empty, ids carry on, and a worker serves the moved tasks (a dead
/// worker's running task included, through its moved lease).
#[sqlx::test(migrations = false)]
async fn a_database_made_before_schemas_moves_into_the_schema_with_every_row(pool: PgPool) {
    previous_release(&pool).await;
    let plugins = plugins();
    let digest = plugins.get("add").await.unwrap().digest.clone();
    // args {"a": 1, "b": 2} and the result 3, in postcard.
    let fill = format!(
        "INSERT INTO public.workers (id, heartbeat_at) VALUES ('old-worker', now() - interval '1 hour');
         INSERT INTO public.tasks (plugin, args, status, is_waiting, priority, attempt, max_attempts,
                                   timeout_ms, run_at, started_at, deadline_at, finished_at, worker_id,
                                   cancel_requested_at, plugin_digest, result, stdout, stderr, error, errors)
         VALUES
         ('add', '\\x0204', 'waiting', true, 0, 0, 1, NULL, now(), NULL, NULL, NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, '{{}}'),
         ('add', '\\x0204', 'waiting', true, 3, 0, 2, 5000, now() + interval '1 hour', NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{{}}'),
         ('add', '\\x0204', 'running', false, 0, 1, 2, NULL, now() - interval '2 hours',
          now() - interval '2 hours', now() - interval '2 hours', NULL, 'old-worker', NULL,
          NULL, NULL, NULL, NULL, NULL, '{{}}'),
         ('add', '\\x0204', 'success', false, 0, 1, 1, NULL, now(), now(), now(), now(),
          'old-worker', NULL, '{digest}', '\\x06', 'out', '', NULL, '{{}}'),
         ('add', '\\x0204', 'error', false, 0, 2, 2, NULL, now(), now(), now(), now(),
          'old-worker', NULL, '{digest}', NULL, '', '', 'boom', '{{boom,boom}}'),
         ('add', '\\x0204', 'timeout', false, 0, 1, 1, 100, now(), now(), now(), now(),
          'old-worker', NULL, '{digest}', NULL, '', '', 'deadline', '{{deadline}}'),
         ('add', '\\x0204', 'cancelled', false, 0, 0, 1, NULL, now(), NULL, NULL, now(), NULL,
          now(), NULL, NULL, NULL, NULL, 'cancelled before it ran', '{{cancelled before it ran}}');
         INSERT INTO public.leases (worker_id, task_ids, expires_at)
         VALUES ('old-worker', '{{3}}', now() - interval '2 hours');
         INSERT INTO public.plugin_schemas VALUES ('sha256:old', '\\x00', '\\x00');"
    );
    sqlx::raw_sql(&fill).execute(&pool).await.unwrap();
    let tasks = rows_of(&pool, "public.tasks", "id").await;
    let workers = rows_of(&pool, "public.workers", "id").await;
    let leases = rows_of(&pool, "public.leases", "id").await;
    let schemas = rows_of(&pool, "public.plugin_schemas", "digest").await;
    let history = history_of(&pool, "public", PREVIOUS_RELEASE_MIGRATIONS).await;
    assert!(tasks.contains("cancelled before it ran"), "{tasks}");

    taskbox_ok(&pool, &["migrate"]);

    assert_eq!(objects_in(&pool, "public").await, "", "left in public");
    assert_eq!(rows_of(&pool, "taskbox.tasks", "id").await, tasks);
    assert_eq!(rows_of(&pool, "taskbox.workers", "id").await, workers);
    assert_eq!(rows_of(&pool, "taskbox.leases", "id").await, leases);
    assert_eq!(
        rows_of(&pool, "taskbox.plugin_schemas", "digest").await,
        schemas
    );
    assert_eq!(
        history_of(&pool, "taskbox", PREVIOUS_RELEASE_MIGRATIONS).await,
        history,
        "the history moved as it was"
    );
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM taskbox._sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, all_versions(), "the rest applied in the schema");
    // Idempotent.
    taskbox_ok(&pool, &["migrate"]);

    let stats: Value = serde_json::from_str(&taskbox_ok(&pool, &["stats", "--json"])).unwrap();
    for (status, count) in [
        ("waiting", 2),
        ("running", 1),
        ("success", 1),
        ("error", 1),
        ("timeout", 1),
        ("cancelled", 1),
    ] {
        assert_eq!(stats[status], json!(count), "{stats}");
    }
    let old = shown(&pool, 4);
    assert_eq!(
        (&old["args"], &old["result"], &old["stdout"]),
        (&json!({"a": 1, "b": 2}), &json!(3), &json!("out"))
    );
    // The identity sequence moved with its table: ids carry on.
    let id = taskbox_ok(&pool, &["enqueue", "add", r#"{"a": 5, "b": 6}"#]);
    assert_eq!(id.trim(), "8");
    // The dead worker's task comes back through its moved lease and runs.
    taskbox_ok(&pool, &["worker", "--drain", "--concurrency", "2"]);
    for (id, result) in [(1, 3), (3, 3), (8, 11)] {
        let task = shown(&pool, id);
        assert_eq!(
            (&task["status"], &task["result"]),
            (&json!("success"), &json!(result)),
            "task {id}: {task}"
        );
    }
    assert_eq!(shown(&pool, 3)["attempts"], json!(2));
    assert_eq!(
        shown(&pool, 2)["status"],
        json!("waiting"),
        "scheduled later"
    );
}

/// Item 1: an application's database with its own `public.tasks` and its
/// own sqlx migration history: `migrate` succeeds (it used to fail with
/// "relation tasks already exists" or "migration ... was previously applied
/// but is missing"), taskbox works beside it, and nothing of the
/// application's changes.
#[sqlx::test(migrations = false)]
async fn an_application_keeps_its_own_tables_and_history(pool: PgPool) {
    let app = "CREATE TABLE tasks (id bigserial PRIMARY KEY, title text NOT NULL);
               CREATE TABLE workers (name text PRIMARY KEY);
               CREATE FUNCTION enqueue(title text) RETURNS bigint LANGUAGE sql
                   AS $$ INSERT INTO tasks (title) VALUES (title) RETURNING id $$;
               SELECT enqueue('write the report');";
    migrate_like_sqlx(
        &pool,
        &[("20240101000000_app.sql".to_owned(), app.to_owned())],
    )
    .await;
    let objects = objects_in(&pool, "public").await;
    let rows = rows_of(&pool, "public.tasks", "id").await;
    let history = history_of(&pool, "public", i64::MAX).await;
    assert!(rows.contains("write the report"), "{rows}");

    taskbox_ok(&pool, &["migrate"]);
    let id = taskbox_ok(&pool, &["enqueue", "add", r#"{"a": 1, "b": 2}"#]);
    assert_eq!(id.trim(), "1");
    taskbox_ok(&pool, &["worker", "--drain", "--concurrency", "2"]);
    let task = shown(&pool, 1);
    assert_eq!(
        (&task["status"], &task["result"]),
        (&json!("success"), &json!(3))
    );

    assert_eq!(objects_in(&pool, "public").await, objects);
    assert_eq!(rows_of(&pool, "public.tasks", "id").await, rows);
    assert_eq!(history_of(&pool, "public", i64::MAX).await, history);
    let ours = objects_in(&pool, "taskbox").await;
    for name in [
        "_sqlx_migrations (r)",
        "tasks (r)",
        "workers (r)",
        "leases (r)",
        "plugin_schemas (r)",
        "enqueue()",
        "enqueue_many()",
    ] {
        assert!(ours.contains(name), "{name} is not in taskbox: {ours}");
    }
}

/// Item 1: `--schema other` (or `TASKBOX_SCHEMA`) puts everything in
/// `other` and nothing anywhere else; a bad name is refused with exit 2 and
/// one sentence, creating nothing.
#[sqlx::test(migrations = false)]
async fn another_schema_holds_everything(pool: PgPool) {
    let before = objects_in(&pool, "public").await;
    taskbox_ok(&pool, &["--schema", "other", "migrate"]);
    let ours = objects_in(&pool, "other").await;
    for name in [
        "_sqlx_migrations (r)",
        "tasks (r)",
        "tasks_claim (i)",
        "tasks_id_seq (S)",
        "leases (r)",
        "enqueue()",
        "enqueue_many()",
    ] {
        assert!(ours.contains(name), "{name} is not in other: {ours}");
    }
    assert_eq!(objects_in(&pool, "public").await, before);
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, ["other", "public"]);

    let output = run(taskbox(&pool).env("TASKBOX_SCHEMA", "other").args([
        "enqueue",
        "add",
        r#"{"a": 1, "b": 2}"#,
    ]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stats: Value = serde_json::from_str(&taskbox_ok(
        &pool,
        &["--schema", "other", "stats", "--json"],
    ))
    .unwrap();
    assert_eq!(stats["waiting"], json!(1));
    // The default schema was never made.
    let output = run(taskbox(&pool).args(["stats"]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("taskbox migrate"));

    let namespaces = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_namespace")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before_bad = namespaces().await;
    for bad in [
        "Other",
        "pg_other",
        "",
        "other; DROP TABLE x",
        "o".repeat(57).as_str(),
    ] {
        let output = run(taskbox(&pool).args(["--schema", bad, "migrate"]));
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.contains("schema"), "{bad:?}: {stderr}");
    }
    assert_eq!(objects_in(&pool, "public").await, before);
    assert_eq!(namespaces().await, before_bad, "a bad name made a schema");
}

/// Item 1: ids are per schema, so a cancel must stay in its schema: a
/// worker of `alpha` does not hear `beta`'s cancel of the task with the
/// same id (notifications arrive in commit order, so the enqueue that
/// follows it in `alpha` is the first thing `alpha` hears).
#[sqlx::test(migrations = false)]
async fn a_cancel_in_one_schema_is_not_heard_in_another(pool: PgPool) {
    init_logging();
    let alpha = PgStore::from_pool_in(pool.clone(), &SchemaName::new("alpha").unwrap());
    let beta = PgStore::from_pool_in(pool, &SchemaName::new("beta").unwrap());
    for store in [&alpha, &beta] {
        store.migrate().await.unwrap();
        let id = store
            .enqueue(&[NewTask::new("add", vec![2, 4])])
            .await
            .unwrap()[0];
        assert_eq!(id, 1);
        // Running, as a claim leaves it.
        sqlx::query(
            "UPDATE tasks SET status = 'running', is_waiting = false, attempt = 1,
                 started_at = now(), deadline_at = now() + interval '1 hour', worker_id = 'w'
             WHERE id = 1",
        )
        .execute(store.pool())
        .await
        .unwrap();
    }
    let mut heard = alpha.subscribe().await.unwrap();
    assert_eq!(beta.cancel(1).await.unwrap(), CancelOutcome::Interrupting);
    alpha
        .enqueue(&[NewTask::new("add", vec![2, 4])])
        .await
        .unwrap();
    let first = tokio::time::timeout(NOTIFY_WITHIN, heard.recv())
        .await
        .expect("alpha hears its enqueue")
        .expect("the stream is open");
    assert_eq!(first, Notification::TasksAvailable);
    assert_eq!(alpha.cancel(1).await.unwrap(), CancelOutcome::Interrupting);
    let next = tokio::time::timeout(NOTIFY_WITHIN, heard.recv())
        .await
        .expect("alpha hears its own cancel")
        .expect("the stream is open");
    assert_eq!(next, Notification::Cancel(1));
}

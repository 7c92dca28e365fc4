//! Connections: the per-worker budget, a full server, a database that is
//! not up yet, a drain whose questions go unanswered, and the first-hour
//! edges of the database URL and of a database without taskbox tables.
//! Real Postgres servers of the test's own (`common::pg_server`), the real
//! `taskbox` binary.

use crate::common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::pg_server::TempPostgres;
use common::process::LogTail;
use common::*;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;
use taskbox::store::postgres::WORKER_CONNECTION_BUDGET;
use taskbox::store::{PgStore, Status, TaskStore};

/// How long a test waits for a child process to exit.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// Settings for a server with exactly `max` client connections, none held
/// back for superusers (the tests connect as `postgres`).
fn limited(max: &str) -> [(&'static str, &str); 3] {
    [
        ("max_connections", max),
        ("superuser_reserved_connections", "0"),
        ("max_wal_senders", "0"),
    ]
}

/// A `taskbox` child with its stderr followed.
struct Proc {
    child: Child,
    log: LogTail,
}

fn spawn(url: &str, args: &[&str]) -> Proc {
    let mut child = taskbox_at(url)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskbox starts");
    let log = LogTail::follow(child.stderr.take().expect("stderr is piped"));
    Proc { child, log }
}

impl Proc {
    /// The exit code, failing the test if it takes longer than `limit`.
    async fn exit_within(&mut self, limit: Duration) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                return status.code().expect("exited, not killed");
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}: {}", self.log.text());
            }
            tokio::time::sleep(wait::POLL).await;
        }
    }
}

/// Client connections to the server other than `own`'s.
async fn clients(own: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(own)
    .await
    .expect("counts connections")
}

/// Items 1 and 6: a server that refuses more clients is named, with its
/// reason and what to do, not "pool timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_reported_as_too_many_clients() {
    let server = TempPostgres::start_with(&limited("3"));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(sqlx::PgConnection::connect(&server.url()).await.unwrap());
    }
    let output = run(taskbox_at(&server.url()).arg("stats"));
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", server.port))
            && stderr.contains("too many clients: raise max_connections or run fewer workers")
            && !stderr.contains("pool timed out"),
        "{stderr}"
    );
    drop(held);
}

/// Item 1: a worker holds at most its documented budget, and a second
/// worker on a server with room for one is told "too many clients" (never
/// "pool timed out") and still ends: both exit, every task succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_to_their_connection_budget_and_a_full_server_is_named() {
    const TASKS: usize = 200;
    // Room for one worker's budget and the test's own connection.
    let max = (WORKER_CONNECTION_BUDGET + 1).to_string();
    let server = TempPostgres::start_with(&limited(&max));
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&server.url())
        .unwrap();
    let store = PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    let plugins = plugins();
    let template = task(&plugins, "sleep", json!(50)).await;
    store.enqueue(&vec![template; TASKS]).await.unwrap();

    let url = server.url();
    let args = [
        "worker",
        "--drain",
        "--concurrency",
        "4",
        "--drain-patience",
        "20s",
    ];
    let mut first = spawn(&url, &args);
    wait::until("the first worker to run tasks", EXIT_WAIT, || async {
        store.stats().await.map(|s| s.success >= 8).unwrap_or(false)
    })
    .await;
    // The store's pool, the test's one connection.
    let mut own = store.pool().acquire().await.unwrap();
    let used = clients(&mut own).await;
    drop(own);
    assert!(
        used <= i64::from(WORKER_CONNECTION_BUDGET),
        "one worker holds {used} connections, over its budget of {WORKER_CONNECTION_BUDGET}"
    );
    // Whatever room the first worker leaves, the test takes: the server is
    // full when the second worker starts.
    let mut held = Vec::new();
    for _ in used..i64::from(WORKER_CONNECTION_BUDGET) {
        match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => held.push(conn),
            Err(_) => break,
        }
    }
    let mut second = spawn(&url, &args);
    wait::until("the second worker to be refused", EXIT_WAIT, || async {
        second.log.contains("too many clients") || first.log.contains("too many clients")
    })
    .await;
    let first_code = first.exit_within(EXIT_WAIT).await;
    drop(held);
    let second_code = second.exit_within(EXIT_WAIT).await;
    for (code, log) in [
        (first_code, first.log.text()),
        (second_code, second.log.text()),
    ] {
        assert!(!log.contains("pool timed out"), "{log}");
        assert!(
            code == 0 || (code == 1 && log.contains("too many clients")),
            "exit {code}: {log}"
        );
    }
    let refused = format!("127.0.0.1:{}: too many clients", server.port);
    assert!(
        second.log.contains(&refused) || first.log.contains(&refused),
        "{}",
        second.log.text()
    );
    let rows = all_tasks(&store).await;
    assert_eq!(rows.len(), TASKS);
    assert!(rows.iter().all(|row| row.status == Status::Success));
}

/// Item 1: a draining worker with nothing running stops within
/// `--drain-patience` once the database stops answering, instead of asking
/// for ever; it exits 1 and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_within_its_patience_when_the_database_stops_answering() {
    let server = TempPostgres::start();
    let store = PgStore::from_pool(PgPoolOptions::new().connect_lazy(&server.url()).unwrap());
    store.migrate().await.unwrap();
    let plugins = plugins();
    // A retry in backoff holds a drain; an hour's backoff holds it here.
    let mut failing = task(&plugins, "panic", json!(null)).await;
    failing.max_attempts = 2;
    let id = store.enqueue(&[failing]).await.unwrap()[0];
    let mut worker = spawn(
        &server.url(),
        &[
            "worker",
            "--drain",
            "--backoff",
            "1h",
            "--drain-patience",
            "2s",
        ],
    );
    wait::until("the first attempt to fail", EXIT_WAIT, || async {
        store
            .get(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|row| row.status == Status::Waiting && row.attempt == 1)
    })
    .await;
    server.stop_server();
    let stopped = Instant::now();
    let code = worker.exit_within(Duration::from_secs(30)).await;
    let log = worker.log.text();
    assert_eq!(code, 1, "{log}");
    // Bounded: patience plus a connection timeout or two, not for ever.
    assert!(stopped.elapsed() < Duration::from_secs(25), "{log}");
    let last = log.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("stopped draining")
            && last.contains(&format!("127.0.0.1:{}", server.port))
            && last.contains("connection refused"),
        "{log}"
    );
}

/// Item 6: a worker started before its database waits for it (logging
/// where it waits and why), then serves; with a short --connect-timeout it
/// gives up naming host:port and the cause. An unknown database is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_postgres_waits_for_it() {
    let server = TempPostgres::start();
    server.stop_server();
    let url = server.url();
    let target = format!("127.0.0.1:{}", server.port);

    let started = Instant::now();
    let output = run(taskbox_at(&url).args(["worker", "--drain", "--connect-timeout", "1s"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(started.elapsed() < Duration::from_secs(8));
    let stderr = stderr_of(&output);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("gave up after 1s")
            && last.contains(&target)
            && last.contains("connection refused")
            && !stderr.contains("pool timed out"),
        "{stderr}"
    );

    let mut worker = spawn(&url, &["worker", "--drain", "--connect-timeout", "60s"]);
    wait::until("the worker to wait for the database", EXIT_WAIT, || async {
        worker.log.contains("waiting for the database")
    })
    .await;
    let waiting = worker.log.text();
    assert!(
        waiting.contains(&target) && waiting.contains("connection refused"),
        "{waiting}"
    );
    server.start_server();
    let store = PgStore::from_pool(PgPoolOptions::new().connect_lazy(&url).unwrap());
    wait::until("the worker to migrate", EXIT_WAIT, || async {
        store.stats().await.is_ok()
    })
    .await;
    let code = worker.exit_within(EXIT_WAIT).await;
    assert_eq!(code, 0, "{}", worker.log.text());
    assert!(worker.log.contains("database reachable"));

    let unknown = format!("postgres://postgres@{target}/no_such_database");
    let output = run(taskbox_at(&unknown).args(["worker", "--drain"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains(&target) && last.contains("unknown database"),
        "{stderr}"
    );
}

/// Item 7: `sqlite:` without a file, and an in-memory database, are
/// refused: exit 2, one sentence, nothing written anywhere.
#[test]
fn an_sqlite_url_without_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["sqlite:", "sqlite://", "sqlite::memory:"] {
        let output = run(taskbox_at(url)
            .current_dir(dir.path())
            .args(["enqueue", "puts", "\"hi\""]));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{url}: {}",
            stderr_of(&output)
        );
        assert!(stdout_of(&output).is_empty(), "{url}: printed an id");
        let stderr = one_line_stderr(&output);
        assert!(stderr.contains("name a file"), "{url}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Item 9: a database error names its cause once, not three times.
#[tokio::test]
async fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE tasks (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let output = run(taskbox_at(&url).arg("stats"));
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = one_line_stderr(&output);
    assert_eq!(
        stderr.matches("no such column: status").count(),
        1,
        "{stderr}"
    );
}

fn assert_not_migrated(output: &Output, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: {}",
        stderr_of(output)
    );
    let stderr = one_line_stderr(output);
    assert!(
        stderr.contains("no taskbox tables yet") && stderr.contains("taskbox migrate"),
        "{what}: {stderr}"
    );
}

const READS: [&[&str]; 3] = [&["stats"], &["list"], &["show", "1"]];

/// Item 10 on SQLite: reads of a missing database say how to create it and
/// create no file.
#[test]
fn reads_of_a_missing_sqlite_database_say_migrate_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    for args in READS {
        assert_not_migrated(&run(taskbox_at(&url).args(args)), args[0]);
    }
    // Without DATABASE_URL: the default ./taskbox.db is not created either.
    for args in READS {
        let output = run(taskbox_at("")
            .env_remove("DATABASE_URL")
            .current_dir(dir.path())
            .args(args));
        assert_not_migrated(&output, args[0]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Item 10 on Postgres: an empty database, the same sentence, nothing
/// created.
#[sqlx::test(migrations = false)]
async fn reads_of_an_empty_postgres_database_say_migrate(pool: sqlx::PgPool) {
    let url = database_url(&pool);
    for args in READS {
        assert_not_migrated(&run(taskbox_at(&url).args(args)), args[0]);
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
}

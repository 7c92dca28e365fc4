//! Limits hold per task, not per piece: hostile components written against
//! the WIT (many core instances with a memory each, tables without a
//! maximum) and hostile SDK plugins (a log flood, a shadow-stack overflow,
//! an exit with a code) each fail alone, naming the limit, while ordinary
//! tasks beside them succeed.

use crate::common;

use std::sync::Arc;

use common::hostile::Hostile;
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::sandbox::{Plugins, SandboxConfig};
use taskbox::store::{NewTask, PgStore, Status, TaskRecord, TaskStore};

const MIB: u32 = 1024 * 1024;
/// Wasm pages in `n` MiB.
const fn pages(mib: u32) -> u32 {
    mib * MIB / 65536
}

/// Enqueue `count` hostile tasks first, then `ordinary` `add` tasks; drain
/// and return the hostile rows after checking every ordinary one succeeded.
async fn run_beside_ordinary_tasks(
    store: &PgStore,
    plugins: &Arc<Plugins>,
    hostile: &str,
    count: usize,
    ordinary: usize,
    concurrency: usize,
) -> Vec<TaskRecord> {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let mut task = NewTask::new(hostile, Vec::new());
        task.priority = -1;
        tasks.push(task);
    }
    let hostile_ids = store.enqueue(&tasks).await.unwrap();
    let mut adds = Vec::new();
    for n in 0..ordinary {
        adds.push(task(plugins, "add", json!({"a": n, "b": 1})).await);
    }
    let add_ids = store.enqueue(&adds).await.unwrap();
    drain(store, plugins, worker_config(concurrency)).await;
    for id in add_ids {
        let row = record(store, id).await;
        assert_eq!(
            row.status,
            Status::Success,
            "an ordinary task: {:?}",
            row.error
        );
    }
    let mut rows = Vec::new();
    for id in hostile_ids {
        rows.push(record(store, id).await);
    }
    rows
}

/// Every hostile row ended `error` with a message naming the limit.
fn assert_each_failed(rows: &[TaskRecord], needles: &[&str]) {
    for row in rows {
        let message = row.error.as_deref().unwrap_or_default();
        assert_eq!(row.status, Status::Error, "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{message}");
        }
    }
}

/// The hostile plugin was refused when it loaded, naming the limit, so no
/// worker here serves it: its rows were never claimed and still wait
/// (`stats` names the plugin as unserved).
async fn assert_refused_at_load(
    plugins: &Plugins,
    name: &str,
    rows: &[TaskRecord],
    needles: &[&str],
) {
    let listing = plugins
        .load_all()
        .await
        .unwrap()
        .into_iter()
        .find(|listing| listing.name == name)
        .expect("the hostile plugin is listed");
    let reason = listing.loaded.expect_err("refused").to_string();
    for needle in needles {
        assert!(reason.contains(needle), "{reason}");
    }
    for row in rows {
        assert_eq!(row.status, Status::Waiting, "{:?}", row.error);
        assert_eq!(row.attempt, 0);
    }
}

#[sqlx::test(migrations = false)]
async fn a_tasks_memories_share_one_budget(pool: PgPool) {
    let store = store(pool).await;
    let dir = plugins_folder_with(&["add"]);
    // Two memories of 40 MiB each: either alone is under 64 MiB.
    let grow = pages(40);
    Hostile {
        hogs: 1,
        run: Hostile::grow_or_trap("$grow_main", grow) + &Hostile::grow_or_trap("$grow0", grow),
    }
    .write(dir.path(), "twomem");
    let plugins = plugins_in(dir.path(), SandboxConfig::default());
    let rows = run_beside_ordinary_tasks(&store, &plugins, "twomem", 4, 40, 4).await;
    assert_each_failed(&rows, &["memory limit", "past its limit of 64 MiB"]);
}

#[sqlx::test(migrations = false)]
async fn tables_count_against_the_budget_without_the_pool(pool: PgPool) {
    let store = store(pool).await;
    let dir = plugins_folder_with(&["add"]);
    // 16M elements of a table with no maximum: 128 MiB of pointers.
    Hostile {
        run: Hostile::grow_or_trap("$grow_table", 16 * MIB),
        ..Hostile::default()
    }
    .write(dir.path(), "tablebomb");
    let plugins = plugins_in(
        dir.path(),
        SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        },
    );
    let rows = run_beside_ordinary_tasks(&store, &plugins, "tablebomb", 2, 20, 2).await;
    assert_each_failed(&rows, &["memory limit"]);
}

#[sqlx::test(migrations = false)]
async fn a_task_cannot_take_its_neighbours_pool_slots(pool: PgPool) {
    let store = store(pool).await;
    let dir = plugins_folder_with(&["add"]);
    // Eight memories per instance, held until the deadline: six such tasks
    // would fill a pool sized for sixteen tasks of two memories each.
    Hostile {
        hogs: 7,
        run: "(loop $spin (br $spin))".to_owned(),
    }
    .write(dir.path(), "slothog");
    let plugins = plugins_in(
        dir.path(),
        SandboxConfig {
            max_instances: 16,
            ..SandboxConfig::default()
        },
    );
    let rows = run_beside_ordinary_tasks(&store, &plugins, "slothog", 10, 60, 16).await;
    assert_refused_at_load(
        &plugins,
        "slothog",
        &rows,
        &["8 Wasm linear memories", "maximum of 2"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn without_the_pool_too_many_memories_fail_alone(pool: PgPool) {
    let store = store(pool).await;
    let dir = plugins_folder_with(&["add"]);
    Hostile {
        hogs: 4,
        ..Hostile::default()
    }
    .write(dir.path(), "manymem");
    let plugins = plugins_in(
        dir.path(),
        SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        },
    );
    let rows = run_beside_ordinary_tasks(&store, &plugins, "manymem", 2, 20, 2).await;
    assert_refused_at_load(
        &plugins,
        "manymem",
        &rows,
        &["more linear memories than the 2 a task may have"],
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_shadow_stack_overflow_is_named(pool: PgPool) {
    let store = store(pool).await;
    let plugins = plugins();
    let rows = run_beside_ordinary_tasks(&store, &plugins, "deepstack", 1, 10, 2).await;
    assert_each_failed(&rows, &["stack limit", "shadow stack"]);
}

#[sqlx::test(migrations = false)]
async fn an_exit_code_is_reported_as_given(pool: PgPool) {
    let store = store(pool).await;
    let dir = plugins_folder_with(&["add"]);
    Hostile {
        run: "(call $exit (i32.const 3))".to_owned(),
        ..Hostile::default()
    }
    .write(dir.path(), "exit3");
    let plugins = plugins_in(dir.path(), SandboxConfig::default());
    let rows = run_beside_ordinary_tasks(&store, &plugins, "exit3", 1, 10, 2).await;
    assert_each_failed(&rows, &["exited with status 3"]);
}

/// The worker's log while a plugin floods its own: bounded, attributed, and
/// never a line that reads like the worker's.
#[test]
fn plugin_logs_are_capped_and_cannot_forge_worker_lines() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let forged = "2026-01-01T00:00:00.000000Z  INFO taskbox::worker: FORGED worker stopped";
    let flood = json!({"lines": 1_000_000, "text": format!("{}\n{forged}", "x".repeat(180))});
    let enqueue = |plugin: &str, args: &Value| {
        let output =
            run(taskbox_at(&url).args(["enqueue", plugin, &args.to_string(), "--timeout", "30s"]));
        assert!(output.status.success(), "{}", stderr_of(&output));
    };
    enqueue("logbomb", &flood);
    for n in 0..20 {
        enqueue("add", &json!({"a": n, "b": 1}));
    }
    let output = run(taskbox_at(&url)
        .args(["worker", "--drain", "--concurrency", "4"])
        .env("TASKBOX_LOG", "taskbox=info"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let log = stderr_of(&output);
    assert!(
        log.len() < 256 * 1024,
        "the worker's log took {} bytes",
        log.len()
    );
    let plugin_lines = log
        .lines()
        .filter(|line| line.contains("taskbox::plugin"))
        .count();
    assert!(
        plugin_lines <= taskbox::sandbox::log::DEFAULT_LOG_LINES + 1,
        "{plugin_lines} plugin lines"
    );
    assert!(log.contains("plugin log cut"), "no marker in the log");
    for line in log.lines().filter(|line| line.contains("FORGED")) {
        assert!(line.contains("taskbox::plugin"), "a forged line: {line}");
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line}");
    }
    let stats: Value =
        serde_json::from_slice(&run(taskbox_at(&url).args(["stats", "--json"])).stdout).unwrap();
    assert_eq!(stats["success"], json!(21), "{stats}");
}

/// Short lines hit the cap on lines before the cap on bytes: exactly that
/// many reach the worker's log, then the marker.
#[test]
fn a_flood_of_short_log_lines_stops_at_the_line_cap() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let flood = json!({"lines": 100_000, "text": "tick"});
    let output =
        run(taskbox_at(&url).args(["enqueue", "logbomb", &flood.to_string(), "--timeout", "60s"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run(taskbox_at(&url)
        .args(["worker", "--drain"])
        .env("TASKBOX_LOG", "taskbox=info"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let log = stderr_of(&output);
    let ticks = log
        .lines()
        .filter(|line| line.contains("taskbox::plugin") && line.contains("tick"))
        .count();
    assert_eq!(
        ticks,
        taskbox::sandbox::log::DEFAULT_LOG_LINES,
        "{ticks} lines"
    );
    assert!(
        log.contains("plugin log cut at 1000 lines") && log.contains("; 99000 more lines"),
        "no marker counting the rest: {:?}",
        log.lines()
            .filter(|line| line.contains("log cut"))
            .collect::<Vec<_>>()
    );
}

//! What a new user meets in the first hour, against the binary: usage and
//! clap's tips are printed whole, empty queue names are refused, task lines
//! come on standard input, an empty plugins folder is said to be empty, a
//! worker with nothing to run stops with the reason, and `show` reads a
//! result with the schemas of the plugin version that wrote it.

use crate::common;

use std::io::Write;
use std::process::Stdio;

use common::process::{PROCESS_WAIT, WorkerProcess, run_within};
use common::*;
use serde_json::Value;
use taskbox::store::Status;

on_both_backends!(
    an_empty_queue_name_is_refused,
    task_lines_come_on_standard_input,
    a_worker_whose_every_plugin_is_refused_exits_2_and_claims_nothing,
    show_reads_a_result_with_the_schemas_of_the_version_that_ran,
);

fn waiting(url: &str) -> Value {
    let output = run(taskbox_at(url).args(["stats", "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stats: Value = serde_json::from_slice(&output.stdout).expect("stats --json prints JSON");
    stats["waiting"].clone()
}

fn show(url: &str, plugins: &std::path::Path, id: &str) -> Value {
    let output = run(taskbox_at(url)
        .arg("--plugins")
        .arg(plugins)
        .args(["show", id, "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_slice(&output.stdout).expect("show --json prints JSON")
}

/// Item 11: `--queue ''` reached the database's CHECK and exited 1.
fn an_empty_queue_name_is_refused(url: &str) {
    let output = run(taskbox_at(url).arg("migrate"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run(taskbox_at(url).args(["enqueue", "puts", "\"x\"", "--queue", ""]));
    assert_refused(&output, "a queue name cannot be empty");
    let output = run(taskbox_at(url).args(["enqueue", "puts", "\"x\"", "--queue", "  "]));
    assert_refused(&output, "a queue name cannot be empty");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "puts", "args": "x", "queue": ""}}"#).unwrap();
    let output = run(taskbox_at(url).args(["enqueue", "--file"]).arg(file.path()));
    assert_refused(&output, "line 1: a queue name cannot be empty");

    let output = run(taskbox_at(url).args(["worker", "--queue", ""]));
    assert_refused(&output, "a queue name cannot be empty");
    assert_eq!(waiting(url), 0, "something was written");
}

/// Item 11: `enqueue --file -` reads the task lines from standard input.
/// `enqueue --file -` with `lines` written to its standard input.
fn enqueue_from_stdin(url: &str, lines: &[&str]) -> std::process::Output {
    let mut child = taskbox_at(url)
        .args(["enqueue", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    child.wait_with_output().expect("the binary runs")
}

fn task_lines_come_on_standard_input(url: &str) {
    let output = enqueue_from_stdin(
        url,
        &[
            r#"{"plugin": "add", "args": {"a": 1, "b": 2}}"#,
            r#"{"plugin": "puts", "args": "hi"}"#,
        ],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output).lines().count(), 2, "two ids");
    assert_eq!(waiting(url), 2);

    // A bad line on standard input is named like a file's.
    let output = enqueue_from_stdin(url, &[r#"{"plugin": "add", "args": {"a": 1}}"#]);
    assert_refused(&output, "standard input line 1");
    assert_eq!(waiting(url), 2, "the refused line was written");
}

/// Item 12: with `--memory 1000` every plugin is refused; the worker used
/// to start and serve nothing (and claimed tasks only to fail them).
fn a_worker_whose_every_plugin_is_refused_exits_2_and_claims_nothing(url: &str) {
    let folder = plugins_folder_with(&["add", "puts"]);
    let output = run(taskbox_at(url).arg("--plugins").arg(folder.path()).args([
        "enqueue",
        "add",
        r#"{"a": 1, "b": 2}"#,
    ]));
    assert!(output.status.success(), "{}", stderr_of(&output));

    for drain in [false, true] {
        let mut worker = taskbox_at(url);
        worker
            .arg("--plugins")
            .arg(folder.path())
            .args(["worker", "--memory", "1000"]);
        if drain {
            worker.arg("--drain");
        }
        let output = run_within(&mut worker, PROCESS_WAIT);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with("taskbox: no plugin in") && last.contains("plugin add:"),
            "{stderr}"
        );
        assert_eq!(waiting(url), 1, "the task was claimed: {stderr}");
    }
}

/// Item 13: `show` of a result written by an older version of a plugin
/// printed `postcard:...`; the schemas of each version are kept by digest.
fn show_reads_a_result_with_the_schemas_of_the_version_that_ran(url: &str) {
    let folder = plugins_folder_with(&["add"]);
    let output = run(taskbox_at(url).arg("--plugins").arg(folder.path()).args([
        "enqueue",
        "add",
        r#"{"a": 40, "b": 2}"#,
    ]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let id = stdout_of(&output).trim().to_owned();
    let output = run_within(
        taskbox_at(url)
            .arg("--plugins")
            .arg(folder.path())
            .args(["worker", "--drain"]),
        PROCESS_WAIT,
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    let ran = show(url, folder.path(), &id);
    assert_eq!(ran["result"], 42);

    // The file is replaced by a plugin with other schemas.
    let replacement = folder.path().join("add.wasm.new");
    std::fs::copy(plugins_dir().join("puts.wasm"), &replacement).unwrap();
    std::fs::rename(&replacement, folder.path().join("add.wasm")).unwrap();
    let shown = show(url, folder.path(), &id);
    assert_eq!(shown["plugin_digest"], ran["plugin_digest"]);
    assert_eq!(shown["args"], serde_json::json!({"a": 40, "b": 2}));
    assert_eq!(shown["result"], 42);
}

/// Item 11: a bare `taskbox` printed only its one-line description.
#[test]
fn bare_taskbox_prints_the_usage() {
    let output = run(&mut std::process::Command::new(env!(
        "CARGO_BIN_EXE_taskbox"
    )));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for part in [
        "Usage: taskbox",
        "Commands:",
        "enqueue",
        "worker",
        "--database-url",
    ] {
        assert!(stderr.contains(part), "no {part:?} in: {stderr}");
    }
}

/// Item 11: clap's tips were cut with the usage block.
#[test]
fn clap_tips_are_kept_on_the_one_line() {
    let said = |args: &[&str]| {
        let output = run(taskbox_at("sqlite:/nonexistent/never.db").args(args));
        assert_eq!(output.status.code(), Some(2));
        let stderr = stderr_of(&output);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        stderr
    };
    let typo = said(&["wrker"]);
    assert!(
        typo.contains("tip: a similar subcommand exists: 'worker'"),
        "{typo}"
    );
    let negative = said(&["cancel", "-1"]);
    assert!(
        negative.contains("tip: to pass '-1' as a value, use '-- -1'"),
        "{negative}"
    );
}

/// Item 11: `--memory` showed no default in `--help`.
#[test]
fn help_shows_the_memory_default() {
    let output = run(taskbox_at("sqlite:/nonexistent/never.db").args(["worker", "--help"]));
    assert!(output.status.success());
    let help = stdout_of(&output);
    let memory = help
        .split("--memory")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .unwrap_or_default();
    assert!(memory.contains("[default: 64MiB]"), "{help}");
}

/// Item 11: `plugins` on an empty folder printed nothing at all.
#[test]
fn plugins_on_an_empty_folder_says_there_are_none() {
    let folder = tempfile::tempdir().unwrap();
    let output = run(taskbox_at("sqlite:/nonexistent/never.db")
        .arg("--plugins")
        .arg(folder.path())
        .arg("plugins"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let said = stdout_of(&output);
    assert!(said.starts_with("no plugins in "), "{said:?}");
    let output = run(taskbox_at("sqlite:/nonexistent/never.db")
        .arg("--plugins")
        .arg(folder.path())
        .args(["plugins", "--json"]));
    assert_eq!(stdout_of(&output).trim(), "[]");
}

/// Item 12: an empty folder is fine for a service: it warns and waits, and
/// serves a plugin dropped in later.
#[sqlx::test(migrations = false)]
async fn a_worker_with_an_empty_folder_waits_for_plugins(pool: sqlx::PgPool) {
    let folder = tempfile::tempdir().unwrap();
    let output = run(taskbox(&pool).args(["enqueue", "add", r#"{"a": 1, "b": 2}"#]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let id: i64 = stdout_of(&output).trim().parse().expect("an id");
    let worker = WorkerProcess::start({
        let mut command = taskbox(&pool);
        command.arg("--plugins").arg(folder.path());
        command
    });
    worker.wait_for(&["no plugins in", "waiting for NAME.wasm files"]);
    let arriving = folder.path().join("add.wasm.new");
    std::fs::copy(plugins_dir().join("add.wasm"), &arriving).unwrap();
    std::fs::rename(&arriving, folder.path().join("add.wasm")).unwrap();
    let store = common::store(pool).await;
    common::wait::until("the task to succeed", PROCESS_WAIT, || async {
        record(&store, id).await.status == Status::Success
    })
    .await;
    assert_eq!(worker.stop(), Some(0));
}

//! The `taskbox` binary against its contract, on both backends: bad input
//! exits 2 with one sentence and writes nothing; the happy path round-trips
//! through `show`, `list`, `stats` and `plugins`; broken plugin files are
//! refused while the worker serves the rest. Each of those is written once
//! and run on Postgres and on SQLite; the rest covers picking the backend
//! and SQLite's one worker process per file.

use crate::common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{PROCESS_WAIT, WorkerProcess, run_within};
use common::*;
use nix::sys::resource::{Resource, setrlimit};
use serde_json::Value;
use taskbox::store::{SqliteStore, Status, TaskStore};

on_both_backends!(
    bad_input_exits_2_and_writes_nothing,
    enqueue_run_and_read_back,
    broken_plugin_files_are_refused_and_the_rest_served,
    args_over_the_limit_are_refused_on_every_enqueue_path,
    a_result_declaring_billions_of_units_shows_as_a_marker,
    durations_and_times_past_their_bounds_are_refused,
);

fn stats(url: &str) -> Value {
    let output = run(taskbox_at(url).args(["stats", "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_slice(&output.stdout).expect("stats --json prints JSON")
}

fn bad_input_exits_2_and_writes_nothing(url: &str) {
    let output = run(taskbox_at(url).arg("migrate"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let cases: [(&[&str], &str); 7] = [
        (&["enqueue", "puts", "42"], "do not fit plugin `puts`"),
        (
            &["enqueue"],
            "required arguments were not provided: <PLUGIN>",
        ),
        (&["enqueue", "nosuch", "\"x\""], "no plugin named `nosuch`"),
        (&["enqueue", "add", "{\"a\": 1}"], "do not fit plugin `add`"),
        (
            &["enqueue", "add", "{\"a\": 1, \"b\": 2, \"c\": 3}"],
            "do not fit plugin `add`",
        ),
        (&["enqueue", "puts", "not json"], "not valid JSON"),
        (
            &["enqueue", "puts", "\"x\"", "--timeout", "5"],
            "not a duration",
        ),
    ];
    for (args, mentions) in cases {
        let output = run(taskbox_at(url).args(args));
        assert_refused(&output, mentions);
    }

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "puts", "args": "fine"}}"#).unwrap();
    writeln!(
        file,
        r#"{{"plugin": "add", "args": {{"a": "two", "b": 2}}}}"#
    )
    .unwrap();
    let output = run(taskbox_at(url).args(["enqueue", "--file"]).arg(file.path()));
    assert_refused(&output, "line 2");

    assert_eq!(
        stats(url),
        serde_json::json!({"waiting": 0, "running": 0, "success": 0, "error": 0, "timeout": 0, "cancelled": 0, "unserved": []}),
        "something was written"
    );
}

/// A timeout of 300,000,000 years once made every later claim fail; every
/// duration and time the database adds or compares is bounded at input.
fn durations_and_times_past_their_bounds_are_refused(url: &str) {
    let output = run(taskbox_at(url).arg("migrate"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let cases: [(&[&str], &str); 5] = [
        (
            &["enqueue", "puts", "\"x\"", "--timeout", "300000000y"],
            "longer than the maximum of 7days",
        ),
        (
            &[
                "enqueue",
                "puts",
                "\"x\"",
                "--run-at",
                "9999-01-01T00:00:00Z",
            ],
            "from now",
        ),
        (
            &["worker", "--drain", "--timeout", "300000000y"],
            "longer than the maximum of 7days",
        ),
        (
            &["worker", "--drain", "--backoff", "2h"],
            "longer than the maximum of 1h",
        ),
        (
            &["worker", "--drain", "--rescue-grace", "1000y"],
            "longer than the maximum of 7days",
        ),
    ];
    for (args, mentions) in cases {
        assert_refused(&run(taskbox_at(url).args(args)), mentions);
    }
    for line in [
        r#"{"plugin": "puts", "args": "x", "timeout": "300000000y"}"#,
        r#"{"plugin": "puts", "args": "x", "run_at": "9999-01-01T00:00:00Z"}"#,
    ] {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, r#"{{"plugin": "puts", "args": "fine"}}"#).unwrap();
        writeln!(file, "{line}").unwrap();
        let output = run(taskbox_at(url).args(["enqueue", "--file"]).arg(file.path()));
        assert_refused(&output, "2");
    }
    assert_eq!(stats(url)["waiting"], 0, "something was written");
}

fn enqueue_run_and_read_back(url: &str) {
    let output = run(taskbox_at(url).args(["enqueue", "puts", "\"hi there\""]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let id: i64 = stdout_of(&output)
        .trim()
        .parse()
        .expect("the id alone on stdout");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "add", "args": {{"a": 20, "b": 22}}}}"#).unwrap();
    writeln!(file, r#"{{"plugin": "forever", "timeout": "50ms"}}"#).unwrap();
    let output = run(taskbox_at(url).args(["enqueue", "--file"]).arg(file.path()));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let ids: Vec<i64> = stdout_of(&output)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);

    let output = run(taskbox_at(url).args(["worker", "--drain", "--concurrency", "2"]));
    assert!(output.status.success(), "{}", stderr_of(&output));

    let output = run(taskbox_at(url).args(["show", &id.to_string(), "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in [
        "id",
        "plugin",
        "status",
        "attempts",
        "max_attempts",
        "args",
        "result",
        "stdout",
        "stderr",
        "error",
        "errors",
        "enqueued_at",
        "started_at",
        "finished_at",
    ] {
        assert!(shown.get(key).is_some(), "show --json lacks {key}: {shown}");
    }
    assert_eq!(shown["status"], "success");
    assert_eq!(shown["args"], "hi there");
    assert_eq!(shown["stdout"], "hi there\n");

    let output = run(taskbox_at(url).args(["show", &ids[0].to_string(), "--json"]));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["result"], 42);

    let output = run(taskbox_at(url).args(["list", "--json", "--status", "timeout"]));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], ids[1]);
    assert_eq!(listed[0]["plugin"], "forever");

    assert_eq!(
        stats(url),
        serde_json::json!({"waiting": 0, "running": 0, "success": 2, "error": 0, "timeout": 1, "cancelled": 0, "unserved": []})
    );

    let output = run(taskbox_at(url).args(["show", "999999"]));
    assert_refused(&output, "no task with id 999999");
}

fn broken_plugin_files_are_refused_and_the_rest_served(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins_dir().join("add.wasm"), dir.path().join("add.wasm")).unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm at all").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // A valid component that exports nothing: the wrong world.
    std::fs::write(dir.path().join("empty.wasm"), b"\0asm\x0d\0\x01\0").unwrap();

    let output = run(taskbox_at(url)
        .arg("--plugins")
        .arg(dir.path())
        .args(["plugins", "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let by_name = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {listed}"))
            .clone()
    };
    assert!(by_name("add")["error"].is_null());
    assert!(
        by_name("add")["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        by_name("garbage")["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly file")
    );
    assert!(
        by_name("core")["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module")
    );
    assert!(
        by_name("empty")["error"]
            .as_str()
            .unwrap()
            .contains("not a taskbox task")
    );

    let output = run(taskbox_at(url).arg("--plugins").arg(dir.path()).args([
        "enqueue",
        "add",
        "{\"a\": 1, \"b\": 1}",
    ]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run(taskbox_at(url)
        .arg("--plugins")
        .arg(dir.path())
        .args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stats(url)["success"], 1);
}

/// Issue 10, item 7: over the limit is exit 2, one sentence naming the
/// size and the limit, nothing written, on each way in; the limit is
/// configurable both ways, by flag and by environment.
fn args_over_the_limit_are_refused_on_every_enqueue_path(url: &str) {
    let output = run(taskbox_at(url).arg("migrate"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let default = taskbox::store::DEFAULT_MAX_ARGS_BYTES;
    let limit = format!("more than the limit of {default} bytes");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "puts", "args": "fine"}}"#).unwrap();
    let big = "x".repeat(default + 1);
    writeln!(file, r#"{{"plugin": "puts", "args": "{big}"}}"#).unwrap();
    let output = run(taskbox_at(url).args(["enqueue", "--file"]).arg(file.path()));
    assert_refused(&output, "line 2: the args are");
    assert_refused(&output, &limit);
    assert!(
        stderr_of(&output).len() < 300,
        "the args are echoed: {} bytes",
        stderr_of(&output).len()
    );

    // One argument on a command line holds at most 128 KiB, so the single
    // path is shown with a lower limit.
    let kib = "y".repeat(2000);
    let single = ["enqueue", "puts", &format!("\"{kib}\"")];
    let output = run(taskbox_at(url)
        .args(single)
        .args(["--max-args-size", "1KiB"]));
    assert_refused(&output, "more than the limit of 1024 bytes");
    let output = run(taskbox_at(url)
        .args(single)
        .env("TASKBOX_MAX_ARGS_SIZE", "1KiB"));
    assert_refused(&output, "more than the limit of 1024 bytes");

    assert_eq!(
        stats(url),
        serde_json::json!({"waiting": 0, "running": 0, "success": 0, "error": 0, "timeout": 0, "cancelled": 0, "unserved": []}),
        "something was written"
    );

    let output = run(taskbox_at(url).args(["enqueue", "--help"]));
    assert!(
        stdout_of(&output).contains(&format!("[default: {default}]")),
        "{}",
        stdout_of(&output)
    );
    // Raised, the same file goes in whole: the store's limit follows.
    let output = run(taskbox_at(url)
        .args(["enqueue", "--max-args-size", "5MiB", "--file"])
        .arg(file.path()));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stats(url)["waiting"], 2);
}

/// Heap a `show` or `list` may use here: the bug grew past it in a second.
const SHOW_HEAP: u64 = 1 << 30;
/// How long a `show` or `list` may take.
const SHOW_WITHIN: Duration = Duration::from_secs(30);

/// Run `command` with its heap capped at [`SHOW_HEAP`], failing the test if
/// it is still running after [`SHOW_WITHIN`].
fn run_bounded(command: &mut Command) -> std::process::Output {
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        command.pre_exec(|| {
            setrlimit(Resource::RLIMIT_DATA, SHOW_HEAP, SHOW_HEAP).map_err(std::io::Error::from)
        });
    }
    run_within(command, SHOW_WITHIN)
}

/// Issue 10, item 6: `unitbomb` returns 10 bytes declaring u64::MAX unit
/// values. `show --json` and `list --json` finish quickly within a heap cap,
/// print valid JSON, and say the result is too large instead of printing it.
fn a_result_declaring_billions_of_units_shows_as_a_marker(url: &str) {
    let enqueue = |count: &str| {
        let output = run(taskbox_at(url).args(["enqueue", "unitbomb", count]));
        assert!(output.status.success(), "{}", stderr_of(&output));
        stdout_of(&output).trim().to_owned()
    };
    let bomb = enqueue(&u64::MAX.to_string());
    let small = enqueue("3");
    let output = run(taskbox_at(url).args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stats(url)["success"], 2);

    let marker = format!(
        "[taskbox: result too large to show: more than {} values]",
        taskbox::schema::MAX_DECODED_VALUES
    );
    let started = Instant::now();
    let output = run_bounded(taskbox_at(url).args(["show", &bomb, "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let shown: Value = serde_json::from_slice(&output.stdout).expect("show --json prints JSON");
    assert_eq!(shown["result"], marker.as_str());
    assert_eq!(shown["args"], u64::MAX);

    let output = run_bounded(taskbox_at(url).args(["show", &bomb]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains(&marker),
        "{}",
        stdout_of(&output)
    );

    let output = run_bounded(taskbox_at(url).args(["list", "--json"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        output.stdout.len() < 64 * 1024,
        "{} bytes",
        output.stdout.len()
    );
    let listed: Value = serde_json::from_slice(&output.stdout).expect("list --json prints JSON");
    let result_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["id"].as_i64() == id.parse().ok())
            .unwrap_or_else(|| panic!("task {id} missing from {listed}"))["result"]
            .clone()
    };
    assert_eq!(result_of(&bomb), marker.as_str());
    assert_eq!(result_of(&small), serde_json::json!([null, null, null]));
    assert!(
        started.elapsed() < SHOW_WITHIN,
        "took {:?}",
        started.elapsed()
    );
}

/// Bad JSON is quoted by a short prefix, not echoed whole.
#[test]
fn invalid_json_is_quoted_by_a_short_prefix() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let url = sqlite_url(dir.path());
    let bad = format!("{{\"a\": {}", "1234567890".repeat(100));
    let output = run(taskbox_at(&url).args(["enqueue", "add", &bad]));
    assert_refused(&output, "not valid JSON");
    let stderr = stderr_of(&output);
    assert!(stderr.contains(&format!("`{}...`", &bad[..60])), "{stderr}");
    assert!(stderr.len() < 200, "{} bytes: {stderr}", stderr.len());
}

#[test]
fn without_a_database_url_the_default_is_taskbox_db_here() {
    let dir = tempfile::tempdir().unwrap();
    let here = |args: &[&str]| {
        let mut command = taskbox_at("unused");
        command
            .env_remove("DATABASE_URL")
            .current_dir(dir.path())
            .args(args);
        run(&mut command)
    };
    let output = here(&["enqueue", "puts", "\"embedded\""]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        dir.path().join("taskbox.db").is_file(),
        "no ./taskbox.db was created"
    );
    let output = here(&["worker", "--drain"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = here(&["stats", "--json"]);
    let counts: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(counts["success"], 1, "{counts}");
}

#[test]
fn an_unknown_database_url_is_refused() {
    let output = run(taskbox_at("mysql://localhost/tasks").args(["stats"]));
    assert_refused(
        &output,
        "must start with postgres://, postgresql:// or sqlite:",
    );
    let output = run(taskbox_at("sqlite::memory:").args(["stats"]));
    assert_refused(&output, "name a file");
}

/// A bad `--queue` limit, or a queue named twice, is refused before the
/// worker touches anything: no database file, no lock file.
#[test]
fn bad_queue_limits_exit_2_before_anything_is_written() {
    let cases: [(&[&str], &str); 6] = [
        (&["--queue", "email=0"], "`0` is not a limit"),
        (&["--queue", "email=-1"], "`-1` is not a limit"),
        (&["--queue", "email=x"], "`x` is not a limit"),
        (&["--queue", "=3"], "a queue name cannot be empty"),
        (
            &["--queue", "email=2", "--queue", "email"],
            "queue `email` more than once",
        ),
        (
            &["--queue", "email", "--queue", "default", "--queue", "email"],
            "queue `email` more than once",
        ),
    ];
    for (queues, mentions) in cases {
        let dir = tempfile::tempdir().unwrap();
        let output = run_within(
            taskbox_at(&sqlite_url(dir.path()))
                .args(["worker", "--drain"])
                .args(queues),
            PROCESS_WAIT,
        );
        assert_refused(&output, mentions);
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(written.is_empty(), "{queues:?} wrote {written:?}");
    }
}

#[tokio::test]
async fn one_worker_process_per_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let first = WorkerProcess::start(taskbox_at(&url));
    first.wait_for(&["worker started"]);

    // A second worker, and the demo (which runs one), are refused.
    for args in [&["worker", "--drain"][..], &["demo", "--count", "1"]] {
        let output = run(taskbox_at(&url).args(args));
        assert_refused(&output, "another taskbox worker");
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(&format!("(process {})", first.id())),
            "{stderr}"
        );
        assert!(
            stderr.contains("one worker process per database file"),
            "{stderr}"
        );
    }

    // Every other command works beside the worker, which runs what they
    // enqueue and honours their cancels.
    let store = SqliteStore::open(dir.path().join(SQLITE_FILE));
    let output = run(taskbox_at(&url).args(["enqueue", "forever", "--timeout", "60s"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let id: i64 = stdout_of(&output).trim().parse().expect("an id");
    wait::until("the worker to run the task", PROCESS_WAIT, || async {
        record(&store, id).await.status == Status::Running
    })
    .await;
    let output = run(taskbox_at(&url).args(["cancel", &id.to_string()]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        stdout_of(&output).trim(),
        format!("task {id} cancelled while running")
    );
    assert_eq!(record(&store, id).await.status, Status::Cancelled);
    for args in [&["list"][..], &["show", &id.to_string()], &["stats"]] {
        let output = run(taskbox_at(&url).args(args));
        assert!(output.status.success(), "{args:?}: {}", stderr_of(&output));
    }

    assert_eq!(first.stop(), Some(0), "the worker stops cleanly");
    // The lock went with the process.
    let output = run(taskbox_at(&url).args(["enqueue", "puts", "\"after\""]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run(taskbox_at(&url).args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(store.stats().await.unwrap().success, 1);
}

#[test]
fn a_key_is_kept_on_every_cli_enqueue_and_a_bad_one_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let enqueue = |extra: &[&str]| {
        run_within(
            taskbox_at(&url)
                .args(["enqueue", "add", r#"{"a": 1, "b": 2}"#])
                .args(extra),
            PROCESS_WAIT,
        )
    };
    let keyed = enqueue(&["--key", "tenant-1"]);
    assert!(keyed.status.success(), "{}", stderr_of(&keyed));
    let id = stdout_of(&keyed).trim().to_owned();
    let shown = run_within(taskbox_at(&url).args(["show", &id, "--json"]), PROCESS_WAIT);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["key"], "tenant-1");

    let file = dir.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        "{\"plugin\": \"add\", \"args\": {\"a\": 1, \"b\": 2}, \"key\": \"tenant-2\"}\n",
    )
    .unwrap();
    let from_file = run_within(
        taskbox_at(&url).args(["enqueue", "--file"]).arg(&file),
        PROCESS_WAIT,
    );
    assert!(from_file.status.success(), "{}", stderr_of(&from_file));
    let listed = run_within(taskbox_at(&url).args(["list", "--json"]), PROCESS_WAIT);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["tenant-2", "tenant-1"], "newest first");

    for (key, mentions) in [
        ("", "a key cannot be empty"),
        ("a\nb", "a key cannot hold control characters"),
        (&"k".repeat(129), "a key is at most 128 characters"),
    ] {
        assert_refused(&enqueue(&["--key", key]), mentions);
    }
    std::fs::write(
        &file,
        "{\"plugin\": \"add\", \"args\": {\"a\": 1, \"b\": 2}, \"key\": \" \"}\n",
    )
    .unwrap();
    assert_refused(
        &run_within(
            taskbox_at(&url).args(["enqueue", "--file"]).arg(&file),
            PROCESS_WAIT,
        ),
        "a key cannot be empty",
    );
    let listed = run_within(taskbox_at(&url).args(["list", "--json"]), PROCESS_WAIT);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "a refused key wrote a task"
    );
}

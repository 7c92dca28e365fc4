//! The `taskbox` binary against its contract: bad input exits 2 with one
//! sentence and writes nothing; the happy path round-trips through `show`,
//! `list`, `stats` and `plugins`; broken plugin files are refused while the
//! worker serves the rest.

mod common;

use std::io::Write;

use common::*;
use serde_json::Value;
use sqlx::PgPool;
use taskbox::store::TaskStore;

fn assert_refused(output: &std::process::Output, mentions: &str) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one sentence, got: {stderr}"
    );
    assert!(stderr.contains(mentions), "{stderr}");
    assert!(output.stdout.is_empty(), "printed {:?}", stdout_of(output));
}

#[sqlx::test(migrations = false)]
async fn bad_input_exits_2_and_writes_nothing(pool: PgPool) {
    let store = store(pool.clone()).await;
    let cases: [(&[&str], &str); 6] = [
        (&["enqueue", "puts", "42"], "do not fit plugin `puts`"),
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
        let output = run(taskbox(&pool).args(args));
        assert_refused(&output, mentions);
    }

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "puts", "args": "fine"}}"#).unwrap();
    writeln!(
        file,
        r#"{{"plugin": "add", "args": {{"a": "two", "b": 2}}}}"#
    )
    .unwrap();
    let output = run(taskbox(&pool).args(["enqueue", "--file"]).arg(file.path()));
    assert_refused(&output, "line 2");

    assert_eq!(
        store.stats().await.unwrap().total(),
        0,
        "something was written"
    );
}

#[sqlx::test(migrations = false)]
async fn enqueue_run_and_read_back(pool: PgPool) {
    let output = run(taskbox(&pool).args(["enqueue", "puts", "\"hi there\""]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let id: i64 = stdout_of(&output)
        .trim()
        .parse()
        .expect("the id alone on stdout");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"plugin": "add", "args": {{"a": 20, "b": 22}}}}"#).unwrap();
    writeln!(file, r#"{{"plugin": "forever", "timeout": "50ms"}}"#).unwrap();
    let output = run(taskbox(&pool).args(["enqueue", "--file"]).arg(file.path()));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let ids: Vec<i64> = stdout_of(&output)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);

    let output = run(taskbox(&pool).args(["worker", "--drain", "--concurrency", "2"]));
    assert!(output.status.success(), "{}", stderr_of(&output));

    let output = run(taskbox(&pool).args(["show", &id.to_string(), "--json"]));
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

    let output = run(taskbox(&pool).args(["show", &ids[0].to_string(), "--json"]));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["result"], 42);

    let output = run(taskbox(&pool).args(["list", "--json", "--status", "timeout"]));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], ids[1]);
    assert_eq!(listed[0]["plugin"], "forever");

    let output = run(taskbox(&pool).args(["stats", "--json"]));
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        stats,
        serde_json::json!({"waiting": 0, "running": 0, "success": 2, "error": 0, "timeout": 1, "cancelled": 0})
    );

    let output = run(taskbox(&pool).args(["show", "999999"]));
    assert_refused(&output, "no task with id 999999");
}

#[sqlx::test(migrations = false)]
async fn broken_plugin_files_are_refused_and_the_rest_served(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins_dir().join("add.wasm"), dir.path().join("add.wasm")).unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm at all").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // A valid component that exports nothing: the wrong world.
    std::fs::write(dir.path().join("empty.wasm"), b"\0asm\x0d\0\x01\0").unwrap();

    let output = run(taskbox(&pool)
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

    let output = run(taskbox(&pool).arg("--plugins").arg(dir.path()).args([
        "enqueue",
        "add",
        "{\"a\": 1, \"b\": 1}",
    ]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run(taskbox(&pool)
        .arg("--plugins")
        .arg(dir.path())
        .args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stats = store(pool).await.stats().await.unwrap();
    assert_eq!(stats.success, 1);
}

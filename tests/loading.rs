//! Loading plugins against hostile files (issue 10, items 3, 4 and 8): a
//! component built to be slow or greedy to compile, a sparse file far over
//! the size limit, precompiled artifacts swapped or corrupted in the cache,
//! a cache folder others can write to, and replacements a (len, mtime)
//! stamp cannot see. Each case checks that ordinary tasks keep running.

use crate::common;

use std::io::{Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::WorkerProcess;
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::sandbox::{Plugins, Sandbox, SandboxConfig};
use taskbox::store::{Status, TaskStore};
use taskbox::worker::{Shutdown, Worker};

/// How long a worker process may take to start, or a task to finish.
const WAIT: Duration = Duration::from_secs(30);

/// A component wrapping one core module of `functions` functions, each a
/// long chain over many live locals: cheap to write, slow and greedy for
/// Cranelift's register allocator. Never a taskbox task; it does not need
/// to be, it never gets past compiling.
fn slow_component(functions: usize) -> Vec<u8> {
    const LOCALS: usize = 48;
    const ROUNDS: usize = 24;
    let mut wat = String::from("(component (core module\n");
    for f in 0..functions {
        wat.push_str(&format!("(func (export \"f{f}\") (param i64) (result i64)"));
        for _ in 0..LOCALS {
            wat.push_str(" (local i64)");
        }
        for l in 0..LOCALS {
            wat.push_str(&format!(
                " (local.set {} (i64.add (local.get 0) (i64.const {l})))",
                l + 1
            ));
        }
        for r in 0..ROUNDS {
            for l in 0..LOCALS {
                let a = 1 + (l + r) % LOCALS;
                let b = 1 + (l * 7 + r * 3 + 1) % LOCALS;
                wat.push_str(&format!(
                    " (local.set {} (i64.mul (local.get {a}) (i64.xor (local.get {b}) (i64.const {r}))))",
                    l + 1
                ));
            }
        }
        wat.push_str(" (local.get 1)");
        for l in 2..=LOCALS {
            wat.push_str(&format!(" (local.get {l}) (i64.add)"));
        }
        wat.push_str(")\n");
    }
    wat.push_str("))");
    wat::parse_str(&wat).expect("the generated component parses")
}

/// `bytes` with a custom section appended so the file is exactly `target`
/// bytes long (a component's custom sections may come last).
fn padded(mut bytes: Vec<u8>, target: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let room = target.checked_sub(bytes.len()).expect("room to pad");
    for name in ["", "p"] {
        for payload in 0..room {
            let mut section = Vec::new();
            let mut body = Vec::new();
            leb(name.len(), &mut body);
            body.extend_from_slice(name.as_bytes());
            body.resize(body.len() + payload, 0);
            section.push(0);
            leb(body.len(), &mut section);
            section.extend_from_slice(&body);
            if section.len() == room {
                bytes.extend_from_slice(&section);
                return bytes;
            }
        }
    }
    panic!("cannot pad to {target}");
}

/// `puts` and `add` padded to one length: a replacement no size can tell.
fn same_size_pair() -> (Vec<u8>, Vec<u8>) {
    let puts = std::fs::read(plugins_dir().join("puts.wasm")).unwrap();
    let add = std::fs::read(plugins_dir().join("add.wasm")).unwrap();
    let target = puts.len().max(add.len()) + 16;
    (padded(puts, target), padded(add, target))
}

fn copy_plugins(dir: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(
            plugins_dir().join(format!("{name}.wasm")),
            dir.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
}

/// A private cache folder for one test.
fn cache_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn plugins_in(dir: &Path, cache: &Path) -> Arc<Plugins> {
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.to_owned()),
        ..SandboxConfig::default()
    })
    .expect("the sandbox starts");
    Arc::new(Plugins::new(sandbox, dir))
}

fn artifacts(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    found.sort();
    found
}

/// `taskbox` on the test's database, plugins in `dir`, cache in `cache`.
fn taskbox_in(pool: &PgPool, dir: &Path, cache: &Path) -> Command {
    let mut command = taskbox(pool);
    command
        .env("TASKBOX_PLUGINS", dir)
        .env("TASKBOX_CACHE", cache);
    command
}

fn listed(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "status {:?}: {}",
        output.status,
        stderr_of(output)
    );
    serde_json::from_slice(&output.stdout).expect("plugins --json prints JSON")
}

fn listed_error(listing: &Value, name: &str) -> Option<String> {
    let row = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {listing}"));
    row["error"].as_str().map(str::to_owned)
}

/// Enqueue an `add` task with these JSON args through the CLI.
fn enqueue_add(pool: &PgPool, dir: &Path, cache: &Path, args: &str) -> i64 {
    enqueue_id(taskbox_in(pool, dir, cache).args(["enqueue", "add", args]))
}

fn enqueue_id(command: &mut Command) -> i64 {
    let output = run(command);
    assert!(output.status.success(), "{}", stderr_of(&output));
    stdout_of(&output).trim().parse().expect("an id")
}

async fn until_final(pool: &PgPool, id: i64, within: Duration) -> taskbox::store::TaskRecord {
    let store = taskbox::store::PgStore::from_pool(pool.clone());
    wait::until(&format!("task {id} to finish"), within, || async {
        record(&store, id).await.status.is_final()
    })
    .await;
    record(&store, id).await
}

// Item 3: loading is bounded and off the serving path.

#[sqlx::test(migrations = false)]
async fn slow_to_compile_plugins_are_refused_at_the_time_limit_while_others_serve(pool: PgPool) {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    let slow = slow_component(SLOW_FUNCTIONS);
    std::fs::write(dir.path().join("slow1.wasm"), &slow).unwrap();
    std::fs::write(
        dir.path().join("slow2.wasm"),
        padded(slow.clone(), slow.len() + 8),
    )
    .unwrap();

    let id = enqueue_add(&pool, dir.path(), cache.path(), r#"{"a": 2, "b": 3}"#);
    let started = Instant::now();
    let worker = WorkerProcess::start({
        let mut command = taskbox_in(&pool, dir.path(), cache.path());
        command.env("TASKBOX_COMPILE_TIMEOUT", "500ms");
        command
    });
    // Served while the slow ones compile (each alone takes seconds).
    let row = until_final(&pool, id, Duration::from_secs(3)).await;
    assert_eq!(row.status, Status::Success, "{:?}", row.error);
    for name in ["slow1", "slow2"] {
        let line = worker.wait_for(&[name, "took longer than 500ms to compile"]);
        assert_eq!(line.lines().count(), 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the compile limit was not kept: {:?}",
        started.elapsed()
    );
    // Still serving after the refusals.
    let id = enqueue_add(&pool, dir.path(), cache.path(), r#"{"a": 40, "b": 2}"#);
    assert_eq!(until_final(&pool, id, WAIT).await.status, Status::Success);
}

#[sqlx::test(migrations = false)]
async fn a_plugin_too_greedy_to_compile_is_refused_at_the_memory_limit(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    std::fs::write(
        dir.path().join("greedy.wasm"),
        slow_component(SLOW_FUNCTIONS),
    )
    .unwrap();
    let output = run(taskbox_in(&pool, dir.path(), cache.path())
        .env("TASKBOX_COMPILE_MEMORY", "48MiB")
        .env("TASKBOX_COMPILE_TIMEOUT", "60s")
        .args(["plugins", "--json"]));
    let listing = listed(&output);
    assert_eq!(listed_error(&listing, "add"), None);
    let error = listed_error(&listing, "greedy").expect("greedy is refused");
    assert!(
        error.contains("more than 48 MiB of memory to compile"),
        "{error}"
    );
}

#[sqlx::test(migrations = false)]
async fn an_oversized_plugin_file_is_refused_without_being_read(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    // Sparse: 4 GiB on paper, nothing on disk; reading it would take 4 GiB.
    let big = std::fs::File::create(dir.path().join("big.wasm")).unwrap();
    big.set_len(4 << 30).unwrap();
    drop(big);

    let started = Instant::now();
    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["plugins", "--json"]));
    let listing = listed(&output);
    let error = listed_error(&listing, "big").expect("big is refused");
    assert!(error.contains("over the plugin size limit"), "{error}");
    assert_eq!(error.lines().count(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}: was it read?",
        started.elapsed()
    );
    let id = enqueue_add(&pool, dir.path(), cache.path(), r#"{"a": 1, "b": 1}"#);
    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(until_final(&pool, id, WAIT).await.status, Status::Success);
}

// Item 4: the precompiled cache can be neither swapped nor corrupted into
// running.

#[sqlx::test(migrations = false)]
async fn an_artifact_swapped_between_plugins_is_never_run(pool: PgPool) {
    let store = store(pool).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add", "puts"]);
    let first = plugins_in(dir.path(), cache.path());
    first.get("add").await.unwrap();
    let add_artifact = artifacts(cache.path());
    assert_eq!(add_artifact.len(), 1, "one artifact for add");
    let puts = first.get("puts").await.unwrap();
    let puts_artifact: Vec<PathBuf> = artifacts(cache.path())
        .into_iter()
        .filter(|path| *path != add_artifact[0])
        .collect();
    assert_eq!(puts_artifact.len(), 1, "one artifact for puts");
    // add's native code under puts's name.
    std::fs::copy(&add_artifact[0], &puts_artifact[0]).unwrap();

    let second = plugins_in(dir.path(), cache.path());
    let loaded = second.get("puts").await.unwrap();
    assert_eq!(
        loaded.args_schema, puts.args_schema,
        "puts runs another plugin's code"
    );
    let ids = store
        .enqueue(&[
            task(&second, "puts", json!("still puts")).await,
            task(&second, "add", json!({"a": 2, "b": 2})).await,
        ])
        .await
        .unwrap();
    drain(&store, &second, worker_config(2)).await;
    let row = record(&store, ids[0]).await;
    assert_eq!(row.status, Status::Success, "{:?}", row.error);
    assert_eq!(text(&row.stdout), "still puts\n");
    assert_eq!(record(&store, ids[1]).await.status, Status::Success);
}

#[sqlx::test(migrations = false)]
async fn a_corrupted_artifact_is_recompiled_and_crashes_nothing(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["plugins", "--json"]));
    assert_eq!(listed_error(&listed(&output), "add"), None);
    let artifact = artifacts(cache.path()).pop().expect("add was cached");
    corrupt_code(&artifact);

    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["plugins", "--json"]));
    assert_eq!(listed_error(&listed(&output), "add"), None);
    corrupt_code(&artifacts(cache.path()).pop().unwrap());
    let id = enqueue_add(&pool, dir.path(), cache.path(), r#"{"a": 1, "b": 2}"#);
    corrupt_code(&artifacts(cache.path()).pop().unwrap());
    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["worker", "--drain"]));
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        stderr_of(&output)
    );
    corrupt_code(&artifacts(cache.path()).pop().unwrap());
    let output =
        run(taskbox_in(&pool, dir.path(), cache.path()).args(["show", &id.to_string(), "--json"]));
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        stderr_of(&output)
    );
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["status"], "success");
    assert_eq!(shown["result"], 3);
}

/// Flip every bit of the native code in the artifact at `path` (an ELF
/// object, after whatever header the cache puts first). Any single flipped
/// byte there may or may not be reached; all of them always are, so a
/// loader that trusts the file crashes on every run.
fn corrupt_code(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let elf = bytes
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("an artifact holds an ELF object");
    let u16_at =
        |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize;
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    let sections = elf + u64_at(&bytes, elf + 0x28);
    let (size, count) = (u16_at(&bytes, elf + 0x3a), u16_at(&bytes, elf + 0x3c));
    let mut flipped = 0;
    for n in 0..count {
        let header = sections + n * size;
        const SHF_EXECINSTR: usize = 0x4;
        if u64_at(&bytes, header + 8) & SHF_EXECINSTR != 0 {
            let start = elf + u64_at(&bytes, header + 24);
            let len = u64_at(&bytes, header + 32);
            for byte in &mut bytes[start..start + len] {
                *byte ^= 0xff;
            }
            flipped += len;
        }
    }
    assert!(flipped > 0, "no native code found in {}", path.display());
    // In place, as a bad disk or a stray write would leave it.
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.rewind().unwrap();
    file.write_all(&bytes).unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_cache_folder_others_can_write_is_refused(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    for args in [
        &["plugins"][..],
        &["enqueue", "add", r#"{"a": 1, "b": 1}"#],
        &["worker", "--drain"],
    ] {
        let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(args));
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
        assert!(stderr.contains("others can write to"), "{stderr}");
    }
    assert!(artifacts(cache.path()).is_empty(), "the cache was used");
    // Fixed the way ssh asks for: everything works again.
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let output = run(taskbox_in(&pool, dir.path(), cache.path()).args(["plugins"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
}

// Item 8: replacement is detected by content.

/// A worker on `plugins` that looks at the folder every 20 ms.
fn start_worker<S: TaskStore>(
    store: &S,
    plugins: &Arc<Plugins>,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let mut config = worker_config(4);
    config.drain = false;
    config.plugin_rescan = Duration::from_millis(20);
    let shutdown = Shutdown::default();
    let worker = Worker::new(store.clone(), plugins.clone(), config);
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            worker.run(shutdown).await.expect("the worker runs");
        }
    });
    (shutdown, handle)
}

#[sqlx::test(migrations = false)]
async fn a_replacement_with_the_same_size_and_mtime_is_picked_up(pool: PgPool) {
    let store = store(pool).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    let (puts, add) = same_size_pair();
    let path = dir.path().join("greet.wasm");
    std::fs::write(&path, &puts).unwrap();
    let plugins = plugins_in(dir.path(), cache.path());
    let first = plugins.get("greet").await.unwrap().digest.clone();
    let (shutdown, worker) = start_worker(&store, &plugins);

    // As `cp -p` does: rewrite in place, then put the old mtime back.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all(&add).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), puts.len() as u64);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified
    );

    wait::until(
        "the replacement to load",
        Duration::from_secs(5),
        || async { plugins.get("greet").await.unwrap().digest != first },
    )
    .await;
    let ids = store
        .enqueue(&[
            task(&plugins, "greet", json!({"a": 40, "b": 2})).await,
            task(&plugins, "add", json!({"a": 1, "b": 2})).await,
        ])
        .await
        .unwrap();
    for id in &ids {
        wait::until("the task to finish", WAIT, || async {
            record(&store, *id).await.status.is_final()
        })
        .await;
        let row = record(&store, *id).await;
        assert_eq!(row.status, Status::Success, "{:?}", row.error);
    }
    assert_ne!(
        record(&store, ids[0]).await.plugin_digest.as_deref(),
        Some(first.as_str())
    );
    shutdown.stop.cancel();
    worker.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_file_rewritten_in_place_keeps_the_last_good_version_serving(pool: PgPool) {
    let store = store(pool).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    copy_plugins(dir.path(), &["add"]);
    let (puts, add) = same_size_pair();
    let path = dir.path().join("greet.wasm");
    std::fs::write(&path, &puts).unwrap();
    let plugins = plugins_in(dir.path(), cache.path());
    let first = plugins.get("greet").await.unwrap().digest.clone();
    let (shutdown, worker) = start_worker(&store, &plugins);

    // Half-way through a rewrite in place (no rename), the folder is
    // looked at, as the watcher may do at any moment.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(&add[..add.len() / 2]).unwrap();
    file.flush().unwrap();
    let listings = plugins.load_all().await.unwrap();
    let greet = listings.iter().find(|l| l.name == "greet").unwrap();
    assert!(greet.loaded.is_err(), "half a file loaded");

    let mut tasks = Vec::new();
    for n in 0..20 {
        tasks.push(task(&plugins, "greet", json!(format!("line {n}"))).await);
        tasks.push(task(&plugins, "add", json!({"a": n, "b": 1})).await);
    }
    let ids = store.enqueue(&tasks).await.unwrap();
    for id in &ids {
        wait::until("the task to finish", WAIT, || async {
            record(&store, *id).await.status.is_final()
        })
        .await;
        let row = record(&store, *id).await;
        assert_eq!(row.status, Status::Success, "task {id}: {:?}", row.error);
    }

    file.write_all(&add[add.len() / 2..]).unwrap();
    drop(file);
    wait::until(
        "the finished file to load",
        Duration::from_secs(5),
        || async { plugins.get("greet").await.unwrap().digest != first },
    )
    .await;
    let id = store
        .enqueue(&[task(&plugins, "greet", json!({"a": 40, "b": 2})).await])
        .await
        .unwrap()[0];
    wait::until("the task to finish", WAIT, || async {
        record(&store, id).await.status.is_final()
    })
    .await;
    assert_eq!(record(&store, id).await.status, Status::Success);
    shutdown.stop.cancel();
    worker.await.unwrap();
}

/// Functions in the slow component: ~1.2 MB, which takes ~3 s to compile
/// unbounded on a 2-core machine (measured), far past the tests' limits.
const SLOW_FUNCTIONS: usize = 100;

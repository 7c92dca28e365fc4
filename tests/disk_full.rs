//! SQLite on a disk that fills up under a running worker loses nothing:
//! the worker holds finished results and its claims while writes fail,
//! replaces its writer connection (whose transaction SQLite rolled back by
//! itself), and once space returns writes every result; no task that
//! succeeded ends "worker lost". The disk is a tiny tmpfs of the test's own
//! (mounting needs root: the test fails, it does not skip, without it),
//! filled with a ballast file and then emptied again.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::LogTail;
use common::*;
use serde_json::json;
use taskbox::store::{SqliteStore, Status, TaskStore};

/// The tmpfs: room for the database and its WAL, filled to the last byte.
const DISK_SIZE: &str = "8m";
const TASKS: usize = 80;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("runs mount");
        assert!(
            output.status.success(),
            "this test mounts a small tmpfs to fill, which needs root: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the file system holding `path` to the last byte.
fn fill(path: &Path) {
    let mut ballast = std::fs::File::create(path).expect("creates the ballast");
    let block = vec![0u8; 64 * 1024];
    loop {
        match ballast.write(&block) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
            Err(err) => panic!("writing the ballast: {err}"),
        }
    }
    // Whatever fits of a smaller write, so not one block is left.
    let _ = ballast.write_all(&[0u8; 512]);
    let _ = ballast.sync_all();
}

/// A child process killed if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_a_sqlite_worker_loses_no_result() {
    init_logging();
    let disk = Tmpfs::mount(DISK_SIZE);
    let database: PathBuf = disk.path().join(SQLITE_FILE);
    let store = SqliteStore::open(&database);
    store.migrate().await.unwrap();
    let plugins = plugins();
    let template = task(&plugins, "sleep", json!(200)).await;
    let ids = store.enqueue(&vec![template; TASKS]).await.unwrap();

    let mut worker = KillOnDrop(
        taskbox_at(&sqlite_url(disk.path()))
            .args(["worker", "--drain", "--concurrency", "8", "--timeout", "5s"])
            .env("TASKBOX_LOG", "taskbox=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the worker starts"),
    );
    let log = LogTail::follow(worker.0.stderr.take().expect("stderr is piped"));
    wait::until("some tasks to finish", Duration::from_secs(60), || async {
        store.stats().await.is_ok_and(|s| s.success >= 8)
    })
    .await;

    let ballast = disk.path().join("ballast");
    fill(&ballast);
    // Tasks running at the fill finish while the disk is full: wait until
    // the completer has met it (holding, or before the fix refusing, a
    // result), so the outage really covers writing results.
    wait::until(
        "the worker to meet the full disk with a result to write",
        Duration::from_secs(30),
        || async { log.contains("holding results") || log.contains("refused") },
    )
    .await;
    std::fs::remove_file(&ballast).unwrap();

    let mut status = None;
    wait::until(
        "the worker to drain once space returned",
        Duration::from_secs(60),
        || {
            status = status.or_else(|| worker.0.try_wait().unwrap());
            let done = status.is_some();
            async move { done }
        },
    )
    .await;
    let text = log.text();
    assert!(status.unwrap().success(), "{text}");
    assert!(
        text.contains("results written"),
        "the held results were never written: {text}"
    );
    for id in ids {
        let row = record(&store, id).await;
        assert_eq!(
            row.status,
            Status::Success,
            "task {id} {:?}\n{text}",
            row.errors
        );
        assert_eq!(row.attempt, 1, "task {id} ran twice");
        assert!(row.errors.is_empty(), "task {id}: {:?}", row.errors);
    }
    store.close().await;
}

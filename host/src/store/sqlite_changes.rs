//! How a SQLite subscriber hears of other processes' writes: an enqueue
//! from the CLI or an application, a cancel. It watches the database's
//! folder and looks as soon as the database or its WAL changes; it also
//! polls, for a folder that cannot be watched (a network file system, no
//! inotify watches left) and for a change it missed.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Notification, StoreResult};

/// Least time between two looks that file changes ask for: the worker's
/// own writes change the WAL too, thousands of times a second in a drain.
const CHANGE_LOOK_GAP: Duration = Duration::from_millis(2);

/// Changes to the database's files, as they happen.
pub(super) struct FileChanges {
    /// Watching while it lives.
    _watcher: RecommendedWatcher,
    /// One slot: changes that come while one waits are one change.
    changed: mpsc::Receiver<()>,
    last: Option<Instant>,
}

impl FileChanges {
    /// Watch `database`'s folder for changes to it, its WAL or its journal;
    /// `None` (and a debug line) when the folder cannot be watched.
    pub(super) fn watch(database: &Path) -> Option<Self> {
        let folder = match database.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name: OsString = database.file_name()?.to_owned();
        let (tell, changed) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let ours = event.paths.iter().any(|path| {
                path.file_name().is_some_and(|file| {
                    file.as_encoded_bytes().starts_with(name.as_encoded_bytes())
                })
            });
            if ours && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_)) {
                // Full: a look is already due.
                let _ = tell.try_send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::debug!("cannot watch the database's folder ({err}); polling");
                return None;
            }
        };
        if let Err(err) = watcher.watch(folder, RecursiveMode::NonRecursive) {
            tracing::debug!("cannot watch {} ({err}); polling", folder.display());
            return None;
        }
        Some(FileChanges {
            _watcher: watcher,
            changed,
            last: None,
        })
    }

    /// The next change, at most one per [`CHANGE_LOOK_GAP`]; never, without
    /// a watch.
    pub(super) async fn next(changes: &mut Option<Self>) {
        let Some(watch) = changes else {
            return std::future::pending().await;
        };
        if let Some(last) = watch.last {
            tokio::time::sleep_until(last + CHANGE_LOOK_GAP).await;
        }
        if watch.changed.recv().await.is_none() {
            *changes = None;
            return std::future::pending().await;
        }
        watch.last = Some(Instant::now());
    }
}

/// What a subscriber has already seen of other processes' changes.
#[derive(Debug, Default)]
pub(super) struct ExternalWatch {
    /// The newest task id seen, once the first poll has looked.
    newest: Option<i64>,
    /// Running tasks whose cancel has been passed on.
    pub(super) cancels_sent: HashSet<i64>,
}

impl ExternalWatch {
    /// [`ExternalWatch::poll`], nothing when the database cannot be read
    /// now (the next look tries again).
    pub(super) async fn look(&mut self, reader: &SqlitePool) -> Vec<Notification> {
        self.poll(reader).await.unwrap_or_else(|err| {
            tracing::debug!("cannot look for other processes' changes: {err}");
            Vec::new()
        })
    }

    async fn poll(&mut self, reader: &SqlitePool) -> StoreResult<Vec<Notification>> {
        let mut events = Vec::new();
        let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM tasks")
            .fetch_one(reader)
            .await?;
        if self.newest.is_some_and(|seen| newest > seen) {
            events.push(Notification::TasksAvailable);
        }
        self.newest = Some(newest);
        let asked: HashSet<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE status = 'running' AND cancel_requested_at IS NOT NULL",
        )
        .fetch_all(reader)
        .await?
        .into_iter()
        .collect();
        events.extend(
            asked
                .difference(&self.cancels_sent)
                .map(|&id| Notification::Cancel(id)),
        );
        self.cancels_sent = asked;
        Ok(events)
    }
}

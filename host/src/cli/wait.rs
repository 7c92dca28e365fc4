//! `taskbox wait` and `enqueue --wait`: block until a task ends, then print
//! its result as JSON (exit 0) or its error (exit 1).

use std::time::Duration;

use super::view::TaskView;
use super::{CliError, input, print_out};
use crate::sandbox::Plugins;
use crate::store::{Status, TaskStore};

/// Wait for task `id` to end, for at most `limit` (named `flag` in the
/// message when it runs out).
pub(super) async fn wait<S: TaskStore>(
    store: &S,
    plugins: &Plugins,
    id: i64,
    limit: Option<Duration>,
    flag: &str,
) -> Result<(), CliError> {
    let ended = match limit {
        Some(limit) => tokio::time::timeout(limit, store.wait_until_ended(id))
            .await
            .ok(),
        None => Some(store.wait_until_ended(id).await),
    };
    let Some(ended) = ended else {
        let status = store
            .get(id)
            .await?
            .map_or_else(|| "gone".to_owned(), |row| row.status.to_string());
        return Err(CliError::Failure(anyhow::anyhow!(
            "task {id} is still {status} after {} ({flag}); `taskbox wait {id}` waits again",
            humantime::format_duration(limit.unwrap_or_default())
        )));
    };
    let record = ended?.ok_or_else(|| input(format!("there is no task with id {id}")))?;
    let view = TaskView::new(record, plugins, store).await;
    match view.status {
        Status::Success => print_out(&format!("{}\n", view.result)),
        status => Err(CliError::Failure(anyhow::anyhow!(
            "task {id} ended {status}: {}",
            view.error.as_deref().unwrap_or("no error was recorded")
        ))),
    }
}

//! The executor: runs one claimed task in the sandbox and decides what its
//! row becomes: success, a retry with backoff, a final error or timeout,
//! cancelled, or released unrun when the worker is shutting down.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::retry::Backoff;
use crate::sandbox::{Execution, Outcome, Plugins};
use crate::store::{ClaimedTask, Completion, Status};

/// Why a running task was interrupted from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptCause {
    /// The user cancelled it: the row ends `cancelled`.
    Cancelled,
    /// The worker is stopping: the row goes back to `waiting`, attempt unspent.
    Shutdown,
}

pub struct Executor {
    pub plugins: Arc<Plugins>,
    pub backoff: Backoff,
}

impl Executor {
    /// Run `task` and return the completion to record. `interrupt` stops it
    /// early; `cause` says why once it fired. The task's args move into the
    /// sandbox, so the caller's copy is left empty.
    pub async fn execute(
        &self,
        task: &mut ClaimedTask,
        interrupt: &CancellationToken,
        cause: impl Fn() -> InterruptCause,
    ) -> Completion {
        let (execution, digest) = match self.plugins.get(&task.plugin).await {
            Ok(plugin) => {
                // Boxed: the sandbox's future is most of a consumer's size,
                // and a small consumer is cheap to spawn and to move.
                let execution = Box::pin(self.plugins.sandbox().run(
                    &plugin,
                    Some(task.id),
                    std::mem::take(&mut task.args),
                    task.timeout(),
                    interrupt,
                ))
                .await;
                (execution, Some(plugin.digest.clone()))
            }
            Err(err) => (
                Execution {
                    outcome: Outcome::Error(format!("plugin: {err}")),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    elapsed: Default::default(),
                },
                None,
            ),
        };
        tracing::debug!(task = task.id, plugin = %task.plugin, elapsed = ?execution.elapsed, outcome = ?execution.outcome, "attempt ended");
        let mut completion = match execution.outcome {
            Outcome::Success(result) => Completion {
                result: Some(result),
                ..Completion::new(task.id, task.attempt, Status::Success)
            },
            Outcome::Error(message) => self.failed(task, Status::Error, message),
            Outcome::Timeout(message) => self.failed(task, Status::Timeout, message),
            Outcome::Interrupted => match cause() {
                InterruptCause::Cancelled => Completion {
                    error: Some("cancelled while running".to_owned()),
                    ..Completion::new(task.id, task.attempt, Status::Cancelled)
                },
                InterruptCause::Shutdown => Completion::release(task.id, task.attempt),
            },
        };
        completion.stdout = execution.stdout;
        completion.stderr = execution.stderr;
        completion.plugin_digest = digest;
        completion
    }

    /// A failed attempt: retried after a backoff while attempts remain,
    /// otherwise final with `status`. Either way the message joins the
    /// row's error history.
    fn failed(&self, task: &ClaimedTask, status: Status, message: String) -> Completion {
        let (status, retry_at) = if task.attempt < task.max_attempts {
            let delay = self.backoff.delay(task.attempt);
            let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            (Status::Waiting, Some(at))
        } else {
            (status, None)
        };
        Completion {
            error: Some(message),
            retry_at,
            ..Completion::new(task.id, task.attempt, status)
        }
    }
}

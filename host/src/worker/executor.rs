//! The executor: runs one claimed task in the sandbox and decides what its
//! row becomes: success, a retry with backoff, a final error or timeout,
//! cancelled, or released unrun when the worker is shutting down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

/// How long a worker whose host failed to run a task waits before it claims
/// again (the task itself is runnable at once by any other worker).
pub const HOST_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

pub struct Executor {
    pub plugins: Arc<Plugins>,
    pub backoff: Backoff,
    /// True while the host fails to run tasks: the problem is logged when
    /// it starts and when it ends, not once per task.
    pub host_failing: AtomicBool,
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
                    outcome: if err.is_host_failure() {
                        Outcome::HostFailure(err.to_string())
                    } else {
                        Outcome::Error(format!("plugin: {err}"))
                    },
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    elapsed: Default::default(),
                },
                None,
            ),
        };
        tracing::debug!(task = task.id, plugin = %task.plugin, elapsed = ?execution.elapsed, outcome = ?execution.outcome, "attempt ended");
        if !matches!(execution.outcome, Outcome::HostFailure(_))
            && self.host_failing.swap(false, Ordering::AcqRel)
        {
            tracing::info!("the host runs tasks again");
        }
        let mut completion = match execution.outcome {
            Outcome::HostFailure(message) => {
                if !self.host_failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        "{message}; giving tasks back unspent and claiming again every {} until the host can run them",
                        humantime::format_duration(HOST_FAILURE_BACKOFF)
                    );
                }
                Completion::release(task.id, task.attempt)
            }
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
        // The delay, not an instant: the database adds it to its own clock,
        // the one claims compare `run_at` with.
        let (status, retry_in) = if task.attempt < task.max_attempts {
            (Status::Waiting, Some(self.backoff.delay(task.attempt)))
        } else {
            (status, None)
        };
        Completion {
            error: Some(message),
            retry_in,
            ..Completion::new(task.id, task.attempt, status)
        }
    }
}

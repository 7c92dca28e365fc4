//! The executor: runs one claimed task in the sandbox and decides what its
//! row becomes: success, a retry with backoff, a final error or timeout,
//! cancelled, or released unrun when the worker is shutting down or the
//! host could not run it (a host failure spends no attempt). Args enqueued
//! as JSON (from SQL) are encoded here with the plugin's args schema; args
//! that do not fit it end the task `error` at once.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::retry::Backoff;
use crate::sandbox::{Execution, Outcome, Plugin, Plugins};
use crate::store::{ClaimedTask, Completion, Ending, Transition};

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

/// While the host keeps failing, its problem is told at most this often.
pub const HOST_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// JSON args longer than this are encoded on a blocking thread: the
/// worker's claims and completions share one async thread, which a few
/// megabytes of JSON would hold up for milliseconds.
pub const INLINE_JSON_ARGS: usize = 64 * 1024;

pub struct Executor {
    pub plugins: Arc<Plugins>,
    pub backoff: Backoff,
    /// True after the host failed to run a task, until it runs one: the
    /// producer backs off meanwhile.
    pub host_failing: AtomicBool,
    /// When the host's problem was last told, and how many tasks were given
    /// back since: told once, not once per task.
    pub host_told: Mutex<Option<(Instant, u64)>>,
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
                let args = match task.args_json.take() {
                    None => std::mem::take(&mut task.args),
                    Some(json) => match json_args(&plugin, json).await {
                        Ok(args) => args,
                        Err(why) => {
                            tracing::debug!(task = task.id, plugin = %task.plugin, "args refused: {why}");
                            return Completion {
                                plugin_digest: Some(plugin.digest.clone()),
                                ..self.decided(task, Ending::Refused(why))
                            };
                        }
                    },
                };
                // Boxed: the sandbox's future is most of a consumer's size,
                // and a small consumer is cheap to spawn and to move.
                let execution = Box::pin(self.plugins.sandbox().run(
                    &plugin,
                    Some(task.id),
                    args,
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
        // A plain load first: every task passes here, and a swap would write
        // the shared flag on every one of them.
        if !matches!(execution.outcome, Outcome::HostFailure(_))
            && self.host_failing.load(Ordering::Relaxed)
            && self.host_failing.swap(false, Ordering::AcqRel)
        {
            tracing::debug!("the host ran a task again");
        }
        let ending = match execution.outcome {
            Outcome::HostFailure(message) => {
                self.host_failing.store(true, Ordering::Release);
                self.tell_host_failure(&message);
                Ending::GivenBack
            }
            Outcome::Success(result) => Ending::Returned(result),
            Outcome::Error(message) => Ending::Failed(message),
            Outcome::Timeout(message) => Ending::TimedOut(message),
            Outcome::Interrupted => match cause() {
                InterruptCause::Cancelled => Ending::Cancelled { ran: true },
                InterruptCause::Shutdown => Ending::GivenBack,
            },
        };
        let mut completion = self.decided(task, ending);
        completion.stdout = execution.stdout;
        completion.stderr = execution.stderr;
        completion.plugin_digest = digest;
        completion
    }

    /// Log the host's problem the first time, then at most once per
    /// [`HOST_FAILURE_LOG_EVERY`] with the count of tasks given back.
    fn tell_host_failure(&self, message: &str) {
        let mut told = self.host_told.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *told {
            Some((at, given_back)) if at.elapsed() < HOST_FAILURE_LOG_EVERY => *given_back += 1,
            Some((_, given_back)) => {
                tracing::error!(
                    "the host still cannot run tasks; {} more given back unspent: {message}",
                    *given_back + 1
                );
                *told = Some((Instant::now(), 0));
            }
            None => {
                tracing::error!(
                    "{message}; giving tasks back unspent and claiming again every {} until the host can run them",
                    humantime::format_duration(HOST_FAILURE_BACKOFF)
                );
                *told = Some((Instant::now(), 0));
            }
        }
    }

    /// Where `ending` leaves `task`: a failure is retried after the
    /// backoff while attempts remain. The delay, not an instant: the
    /// database adds it to its own clock, the one claims compare `run_at`
    /// with.
    fn decided(&self, task: &ClaimedTask, ending: Ending) -> Completion {
        let transition = Transition::decide(ending, task.attempt, task.max_attempts, |attempt| {
            self.backoff.delay(attempt)
        });
        Completion::new(task, transition)
    }
}

/// JSON args text as the postcard bytes `plugin`'s args schema describes,
/// or why they cannot be: not JSON, or not of the schema (naming the field).
async fn json_args(plugin: &Arc<Plugin>, json: String) -> Result<Vec<u8>, String> {
    let inline = json.len() <= INLINE_JSON_ARGS;
    let encode = {
        let plugin = plugin.clone();
        move || {
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|err| format!("the args are not JSON: {err}"))?;
            crate::schema::encode(&plugin.args_schema, &value)
                .map_err(|why| format!("the args do not fit plugin `{}`: {why}", plugin.name))
        }
    };
    if inline {
        encode()
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .unwrap_or_else(|err| Err(format!("encoding the args failed: {err}")))
    }
}

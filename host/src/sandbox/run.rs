//! Running one call in a fresh store: instantiate from the plugin's
//! pre-linked `InstancePre`, enforce the deadline (epoch interruption inside
//! the guest, a timer around host calls), the memory limit and the stack
//! limit, capture output, and name whatever limit ended the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use super::bindings::{TaskPre, exports::taskbox::plugin::describe::Signature};
use super::capture::CappedOutput;
use super::grants::Grants;
use super::limits::{Refusal, TaskLimiter};
use super::outbound::Outbound;
use super::{LogTarget, PluginLog, Sandbox, TaskState};
use crate::size::show;
use wasmtime_wasi_http::WasiHttpCtx;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin returned these postcard bytes.
    Success(Vec<u8>),
    /// The plugin returned an error, trapped, panicked or hit a limit.
    Error(String),
    /// The deadline passed.
    Timeout(String),
    /// Stopped from outside (cancellation or shutdown) before it finished.
    Interrupted,
    /// The host, not the plugin, failed: it could not reserve the memory an
    /// instance needs (e.g. under `ulimit -v`). The task should be given
    /// back unspent and run when the host can.
    HostFailure(String),
}

/// An attempt's outcome with its captured output.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

/// What to call in the fresh instance.
pub(crate) enum Call {
    Run(Vec<u8>),
    Describe,
}

/// A call's result with the output it captured.
pub(crate) type CallResult = (Result<Returned, Outcome>, CappedOutput, CappedOutput);

/// What the call returned, before it is classified.
pub(crate) enum Returned {
    Run(Result<Vec<u8>, String>),
    Describe(Signature),
}

impl Sandbox {
    /// Make `call` on a fresh instance of `pre`, on the guest runtime so a
    /// busy guest never holds up the caller's I/O.
    pub(crate) async fn call(
        self: &Arc<Self>,
        pre: &TaskPre<TaskState>,
        grants: &Arc<Grants>,
        log_target: LogTarget,
        call: Call,
        timeout: Duration,
        interrupt: &CancellationToken,
    ) -> CallResult {
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|current| current.id() == self.guest_runtime().id())
        {
            // Already on the guest runtime (the worker's consumers are).
            return self
                .call_here(pre, grants, log_target, call, timeout, interrupt)
                .await;
        }
        let this = self.clone();
        let pre = pre.clone();
        let grants = grants.clone();
        let interrupt = interrupt.clone();
        let joined = self
            .guest_runtime()
            .spawn(async move {
                this.call_here(&pre, &grants, log_target, call, timeout, &interrupt)
                    .await
            })
            .await;
        joined.unwrap_or_else(|err| {
            let message = format!("the sandbox failed: {err}");
            let empty = CappedOutput::new(0);
            (Err(Outcome::Error(message)), empty.clone(), empty)
        })
    }

    async fn call_here(
        &self,
        pre: &TaskPre<TaskState>,
        grants: &Arc<Grants>,
        log_target: LogTarget,
        call: Call,
        timeout: Duration,
        interrupt: &CancellationToken,
    ) -> CallResult {
        let started = Instant::now();
        let deadline = started + timeout;
        let stdout = CappedOutput::new(self.config.output_cap);
        let stderr = CappedOutput::new(self.config.output_cap);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            TaskState {
                wasi,
                table: ResourceTable::new(),
                limiter: TaskLimiter::new(self.config.memory_limit),
                log: PluginLog::new(log_target, self.config.log),
                grants: grants.clone(),
                http: WasiHttpCtx::new(),
                outbound: Outbound::new(grants.clone(), deadline),
            },
        );
        store.limiter(|state| &mut state.limiter);
        if let Some(fuel) = self.config.fuel {
            store
                .set_fuel(fuel)
                .expect("fuel is enabled whenever a budget is set");
        }
        store.set_epoch_deadline(1);
        let token = interrupt.clone();
        store.epoch_deadline_callback(move |_| {
            if token.is_cancelled() || Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks on this thread run between ticks; tokio's
                // own yield puts this task behind them rather than first.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });

        let invoked = async {
            let task = pre.instantiate_async(&mut store).await?;
            match call {
                Call::Run(args) => Ok(Returned::Run(task.call_run(&mut store, &args).await?)),
                Call::Describe => Ok(Returned::Describe(
                    task.taskbox_plugin_describe()
                        .call_describe(&mut store)
                        .await?,
                )),
            }
        };
        // Epochs cannot interrupt a guest blocked in a host call (a WASI
        // sleep), so the same deadline also bounds the whole future. The call
        // is polled first: one that finishes without waiting never registers
        // the timer or the cancellation waker.
        let finished: Option<wasmtime::Result<Returned>> = tokio::select! {
            biased;
            result = invoked => Some(result),
            _ = tokio::time::sleep_until(deadline.into()) => None,
            _ = interrupt.cancelled() => None,
        };
        let mut outcome = match finished {
            Some(Ok(returned)) => Ok(returned),
            Some(Err(err)) => Err(self.classify(&err, store.data(), &stderr, timeout, interrupt)),
            None if interrupt.is_cancelled() => Err(Outcome::Interrupted),
            None => Err(timeout_outcome(timeout)),
        };
        // A plugin failing after a denial names what was denied.
        if let Some(denied) = store.data().outbound.denials()
            && let Ok(Returned::Run(Err(message))) | Err(Outcome::Error(message)) = &mut outcome
        {
            message.push_str(&format!(" ({denied})"));
        }
        store.data_mut().log.finish();
        (outcome, stdout, stderr)
    }

    /// Run a task's `run` export once and report how it ended.
    pub async fn run(
        self: &Arc<Self>,
        plugin: &super::Plugin,
        task_id: Option<i64>,
        args: Vec<u8>,
        timeout: Duration,
        interrupt: &CancellationToken,
    ) -> Execution {
        let started = Instant::now();
        let target = LogTarget {
            task_id,
            plugin: plugin.name.clone(),
        };
        let (returned, stdout, stderr) = self
            .call(
                &plugin.pre,
                &plugin.grants,
                target,
                Call::Run(args),
                timeout,
                interrupt,
            )
            .await;
        let outcome = match returned {
            Ok(Returned::Run(Ok(result))) => Outcome::Success(result),
            Ok(Returned::Run(Err(message))) => {
                Outcome::Error(format!("the plugin returned an error: {message}"))
            }
            Ok(Returned::Describe(_)) => unreachable!("asked to run, not to describe"),
            Err(outcome) => outcome,
        };
        Execution {
            outcome,
            stdout: stdout.take(),
            stderr: stderr.take(),
            elapsed: started.elapsed(),
        }
    }

    fn classify(
        &self,
        err: &wasmtime::Error,
        state: &TaskState,
        stderr: &CappedOutput,
        timeout: Duration,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let trap = err.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::Interrupt) {
            return if interrupt.is_cancelled() {
                Outcome::Interrupted
            } else {
                timeout_outcome(timeout)
            };
        }
        if let Some(Refusal::Budget { desired_total }) = state.limiter.refused {
            return Outcome::Error(format!(
                "memory limit: the task's memories and tables would have taken {} in all, past its limit of {}",
                show(desired_total as u64),
                show(state.limiter.budget() as u64)
            ));
        }
        // Matched on text where wasmtime gives no type; formatted once.
        let text = format!("{err:#}");
        if let Some(message) = count_limit(&text) {
            return Outcome::Error(message);
        }
        if host_out_of_memory(err, &text) {
            return Outcome::HostFailure(format!(
                "the host could not reserve memory for an instance ({err:#})"
            ));
        }
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Outcome::Error(format!(
                "the plugin exited with status {} instead of returning a result",
                exit.0
            ));
        }
        match trap {
            Some(Trap::OutOfFuel) => Outcome::Error(format!(
                "fuel budget: the plugin used up its {} units of fuel",
                self.config.fuel.unwrap_or_default()
            )),
            Some(Trap::StackOverflow) => Outcome::Error(format!(
                "stack limit: the plugin overflowed its {} call stack",
                show(self.config.max_wasm_stack as u64)
            )),
            Some(Trap::UnreachableCodeReached) => match panic_message(&stderr.peek()) {
                Some(message) => Outcome::Error(format!("the plugin panicked: {message}")),
                None => Outcome::Error(format!("the plugin trapped: {err}")),
            },
            Some(Trap::MemoryOutOfBounds) if deep_in_recursion(err) => Outcome::Error(
                "stack limit: the plugin overflowed its shadow stack, the part of its call stack it keeps in its own linear memory (an out-of-bounds access deep in a recursion)".to_owned(),
            ),
            Some(trap) => Outcome::Error(format!("the plugin trapped: {trap}")),
            None => Outcome::Error(format!("the plugin failed: {err:#}")),
        }
    }
}

/// Whether an out-of-bounds access happened deep in a recursion: what a
/// guest sees when its shadow stack (the part of its call stack a Rust guest
/// keeps in linear memory, below its data) runs out and the stack pointer
/// wraps past address zero. A genuine wild pointer rarely sits under a run
/// of frames of one function.
fn deep_in_recursion(err: &wasmtime::Error) -> bool {
    /// Frames of one function on top of the stack that read as recursion.
    const RECURSION_FRAMES: usize = 8;
    let Some(backtrace) = err.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return false;
    };
    let frames = backtrace.frames();
    // The faulting frame may be a helper the recursive function called.
    frames.iter().take(2).any(|top| {
        frames
            .iter()
            .skip_while(|frame| frame.func_index() != top.func_index())
            .take_while(|frame| frame.func_index() == top.func_index())
            .count()
            >= RECURSION_FRAMES
    })
}

/// Whether wasmtime failed because the operating system refused it memory
/// (an `mmap` reservation or a fiber stack failing with ENOMEM), as under a
/// virtual-memory limit: the host's fault, not the plugin's. The task's own
/// memory limit is a refusal of the limiter, checked before this.
fn host_out_of_memory(err: &wasmtime::Error, text: &str) -> bool {
    const ENOMEM: i32 = 12;
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(ENOMEM))
    }) || {
        text.contains("failed to reserve")
            || text.contains("Cannot allocate memory")
            || text.contains("failed to allocate fiber stack")
    }
}

/// The per-task count a component went past, named, when wasmtime refused
/// to create one more memory, table or instance for it.
fn count_limit(text: &str) -> Option<String> {
    use super::limits::{MAX_CORE_INSTANCES_PER_TASK, MAX_MEMORIES_PER_TASK, MAX_TABLES_PER_TASK};
    let (kind, max) = if text.contains("memory count too high") {
        ("linear memories", MAX_MEMORIES_PER_TASK)
    } else if text.contains("table count too high") {
        ("tables", MAX_TABLES_PER_TASK)
    } else if text.contains("instance count too high") {
        ("core instances", MAX_CORE_INSTANCES_PER_TASK)
    } else {
        return None;
    };
    Some(format!(
        "instance limit: the plugin's component has more {kind} than the {max} a task may have"
    ))
}

fn timeout_outcome(timeout: Duration) -> Outcome {
    Outcome::Timeout(format!(
        "deadline: the task ran past its timeout of {}",
        humantime::format_duration(timeout)
    ))
}

/// The message of a Rust panic as the default hook prints it to stderr.
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let (_, after) = text.split_once("panicked at ")?;
    let message: Vec<&str> = after
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("note:"))
        .collect();
    let message = message.join("\n");
    Some(if message.is_empty() {
        after.lines().next().unwrap_or_default().to_owned()
    } else {
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_panic_message_from_the_default_hook() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:9:5:\ndeliberate panic\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("deliberate panic"));
        assert_eq!(panic_message(b"no panic here"), None);
    }
}

//! `taskbox worker`: the worker service with its signal handling (first
//! signal drains gracefully, a second or the shutdown timeout interrupts).

use std::path::Path;
use std::sync::Arc;

use super::args::WorkerArgs;
use super::{CliError, input, open_plugins};
use crate::sandbox::{LoadLimits, Sandbox, SandboxConfig};
use crate::store::{StoreError, TaskStore};
use crate::worker::queue_caps::ServedQueue;
use crate::worker::{Shutdown, Worker, WorkerConfig, default_concurrency, wait_for_database};

pub(super) async fn worker<S: TaskStore>(
    store: S,
    plugins_dir: &Path,
    args: WorkerArgs,
    load: LoadLimits,
) -> Result<(), CliError> {
    if let Some(twice) = served_twice(&args.queues) {
        return Err(input(format!(
            "--queue names queue `{twice}` more than once; give each queue once, with its limit if it has one"
        )));
    }
    if !plugins_dir.is_dir() {
        return Err(input(format!(
            "the plugins folder {} does not exist; build plugins with `cargo xtask plugins` or pass --plugins",
            plugins_dir.display()
        )));
    }
    store.lock_worker()?;
    let concurrency = args
        .concurrency
        .map_or_else(default_concurrency, |n| n as usize);
    let sandbox_config = SandboxConfig {
        max_instances: u32::try_from(concurrency).unwrap_or(u32::MAX),
        memory_limit: args.memory,
        fuel: args.fuel,
        load,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config).map_err(anyhow::Error::from)?;
    // Plugins load in the background (the worker's watcher, or the first
    // task that needs one): claiming starts at once.
    let plugins = Arc::new(open_plugins(sandbox, plugins_dir)?);
    // A service waits for a database that is not up yet.
    wait_for_database(&store, args.connect_timeout)
        .await
        .map_err(|err| match err {
            err @ StoreError::Connect {
                transient: true, ..
            } => CliError::Failure(anyhow::anyhow!(
                "gave up after {} (--connect-timeout): {err}",
                humantime::format_duration(args.connect_timeout)
            )),
            err => CliError::from(err),
        })?;
    let config = WorkerConfig {
        concurrency,
        claim_ahead: args.claim_ahead,
        default_timeout: args.timeout,
        queues: args.queues,
        drain: args.drain,
        drain_patience: args.drain_patience,
        backoff: crate::worker::retry::Backoff {
            base: args.backoff,
            ..Default::default()
        },
        rescuer: crate::worker::rescuer::RescuerConfig {
            grace: args.rescue_grace,
            worker_ttl: args.worker_ttl,
            ..Default::default()
        },
        ..WorkerConfig::default()
    };
    tracing::info!(
        worker = %config.worker_id,
        concurrency,
        "worker started"
    );
    let shutdown = Shutdown::default();
    let signals = tokio::spawn(watch_signals(shutdown.clone(), args.shutdown_timeout));
    let report = Worker::new(store, plugins, config).run(shutdown).await?;
    signals.abort();
    tracing::info!(claimed = report.claimed, "worker stopped");
    if let Some(reason) = report.no_plugin_loads {
        return Err(input(reason));
    }
    match report.drain_unconfirmed {
        Some(last) => Err(CliError::Failure(anyhow::anyhow!(
            "stopped draining without knowing whether tasks remain, as the database did not answer for {} (--drain-patience): {last}",
            humantime::format_duration(args.drain_patience)
        ))),
        None => Ok(()),
    }
}

/// The first queue `--queue` names twice: which of its forms would count
/// is anyone's guess.
fn served_twice(queues: &[ServedQueue]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    queues
        .iter()
        .map(|queue| queue.name.as_str())
        .find(|name| !seen.insert(*name))
}

/// First SIGINT/SIGTERM: stop claiming, give running tasks `grace`, then
/// interrupt them. A second signal interrupts at once.
async fn watch_signals(shutdown: Shutdown, grace: std::time::Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch for signals; stop the worker with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "stopping: no new tasks; running tasks get {}",
        humantime::format_duration(grace)
    );
    shutdown.stop.cancel();
    tokio::select! {
        _ = term.recv() => tracing::info!("second signal: interrupting running tasks"),
        _ = int.recv() => tracing::info!("second signal: interrupting running tasks"),
        _ = tokio::time::sleep(grace) => tracing::info!("shutdown timeout: interrupting running tasks"),
    }
    shutdown.interrupt.cancel();
}

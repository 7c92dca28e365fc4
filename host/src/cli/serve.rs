//! `taskbox worker`: the worker service with its signal handling (first
//! signal drains gracefully, a second or the shutdown timeout interrupts).

use std::path::Path;
use std::sync::Arc;

use super::args::WorkerArgs;
use super::{CliError, input, open_plugins};
use crate::sandbox::{LoadLimits, Sandbox, SandboxConfig};
use crate::store::TaskStore;
use crate::worker::{Shutdown, Worker, WorkerConfig, default_concurrency};

pub(super) async fn worker<S: TaskStore>(
    store: S,
    plugins_dir: &Path,
    args: WorkerArgs,
    load: LoadLimits,
) -> Result<(), CliError> {
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
    let mut sandbox_config = SandboxConfig {
        max_instances: u32::try_from(concurrency).unwrap_or(u32::MAX),
        load,
        ..SandboxConfig::default()
    };
    if let Some(memory) = args.memory {
        sandbox_config.memory_limit = memory;
    }
    sandbox_config.fuel = args.fuel;
    let sandbox = Sandbox::new(sandbox_config).map_err(anyhow::Error::from)?;
    // Plugins load in the background (the worker's watcher, or the first
    // task that needs one): claiming starts at once.
    let plugins = Arc::new(open_plugins(sandbox, plugins_dir)?);
    store.migrate().await?;
    let config = WorkerConfig {
        concurrency,
        default_timeout: args.timeout,
        queues: args.queues,
        drain: args.drain,
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
    Ok(())
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

//! `taskbox demo`: the tutorial's `auto_start_later`. Enqueue N `puts` tasks,
//! run them on an in-process worker, and show progress until all are done.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{CliError, input, open_plugins, print_out, usable_plugin};
use crate::sandbox::{LoadLimits, Sandbox, SandboxConfig};
use crate::store::{NewTask, TaskStore};
use crate::worker::{Shutdown, Worker, WorkerConfig, default_concurrency};

/// The plugin the demo runs.
const DEMO_PLUGIN: &str = "puts";
/// Tasks per enqueue statement.
const ENQUEUE_BATCH: usize = 1000;
/// How often the progress bar reads the counts.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

pub async fn run<S: TaskStore>(
    store: S,
    plugins_dir: &Path,
    count: usize,
    load: LoadLimits,
) -> Result<(), CliError> {
    if count == 0 {
        return Err(input("--count must be at least 1"));
    }
    // The demo runs a worker: on SQLite, the only one on its file.
    store.lock_worker()?;
    let concurrency = default_concurrency();
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: u32::try_from(concurrency).unwrap_or(u32::MAX),
        load,
        ..SandboxConfig::default()
    })
    .map_err(anyhow::Error::from)?;
    let plugins = Arc::new(open_plugins(sandbox, plugins_dir)?);
    let puts = usable_plugin(&plugins, DEMO_PLUGIN).await?;

    store.migrate().await?;
    let before = store.stats().await?;
    let started = Instant::now();
    let tasks: Vec<NewTask> = (1..=count)
        .map(|n| {
            let line = format!("hello from task {n} of {count}");
            let args = crate::schema::encode(&puts.args_schema, &serde_json::Value::String(line))
                .map_err(|why| {
                anyhow::anyhow!("the puts plugin does not take a string: {why}")
            })?;
            Ok(NewTask::new(DEMO_PLUGIN, args))
        })
        .collect::<Result<_, anyhow::Error>>()?;
    for chunk in tasks.chunks(ENQUEUE_BATCH) {
        store.enqueue(chunk).await?;
    }
    let enqueued = started.elapsed();

    let bar = ProgressBar::new(count as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let config = WorkerConfig {
        concurrency,
        drain: true,
        ..WorkerConfig::default()
    };
    let worker = tokio::spawn(Worker::new(store.clone(), plugins, config).run(Shutdown::default()));
    while !worker.is_finished() {
        tokio::time::sleep(PROGRESS_EVERY).await;
        if let Ok(now) = store.stats().await {
            bar.set_position((now.finished() - before.finished()).max(0) as u64);
        }
    }
    worker.await.map_err(anyhow::Error::from)??;
    let after = store.stats().await?;
    bar.set_position((after.finished() - before.finished()).max(0) as u64);
    bar.finish();
    let elapsed = started.elapsed();
    let succeeded = after.success - before.success;
    print_out(&format!(
        "{count} tasks enqueued in {:.0?}; {succeeded} succeeded, {} failed, {} timed out; {:.0?} in all ({:.0} tasks/s)\n",
        enqueued,
        after.error - before.error,
        after.timeout - before.timeout,
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
    ))?;
    if succeeded < count as i64 {
        return Err(CliError::Failure(anyhow::anyhow!(
            "{} of {count} demo tasks did not succeed",
            count as i64 - succeeded
        )));
    }
    Ok(())
}

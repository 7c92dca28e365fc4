//! The worker: a producer that claims as many tasks as there is room for
//! (free slots and a bounded claim-ahead, GenStage demand), consumers that
//! run them in the sandbox,
//! and a completer that records outcomes in batches. One [`Shutdown`] is
//! passed into every loop.

pub mod completer;
pub mod executor;
pub mod janitor;
mod producer;
pub mod queue_caps;
pub mod rescuer;
pub mod retry;
pub mod slots;
mod starter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Plugins;
use crate::store::{Notification, StoreError, TaskStore};
use completer::CompleterConfig;
use executor::Executor;
use producer::Producer;
use queue_caps::{QueueCaps, QueueSlot, ServedQueue};
use rescuer::RescuerConfig;
use retry::Backoff;
use slots::{DEFAULT_CLAIM_AHEAD, DEFAULT_CLAIM_AHEAD_HORIZON, Slots};

/// Consumers per CPU core, as in the tutorial.
pub const CONSUMERS_PER_CORE: usize = 12;
/// Task timeout for tasks enqueued without one.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long running tasks may finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle producer looks for due tasks without being notified
/// (scheduled tasks, retries, and a lost notification connection).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a busy producer gathers demand before claiming for less than
/// half the slots.
pub const DEFAULT_CLAIM_WAIT: Duration = Duration::from_millis(2);
/// How often a worker looks for new or changed plugin files.
pub const DEFAULT_PLUGIN_RESCAN: Duration = Duration::from_secs(2);
/// Rows one claim statement takes at most. Drains of 20,000 no-op tasks at
/// concurrency 2048 ran fastest at 512: 3% ahead of 256, and 8% ahead of
/// 1024, whose statements were slow (measured before the producer's slow
/// start, which now keeps first claims small whatever this is).
pub const DEFAULT_MAX_CLAIM: usize = 512;
/// Claim statements in flight per worker. One is enough while half the
/// slots keep running during a claim; a second one mostly walks past the
/// rows the first has locked (measured: more Postgres CPU per task, no gain).
pub const DEFAULT_CLAIMERS: usize = 1;

/// How long a starting worker waits for a database it cannot reach yet
/// (`--connect-timeout`, `TASKBOX_CONNECT_TIMEOUT`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// While waiting for the database at start, a log line at most this often.
pub const CONNECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// First pause between connection attempts at start; doubles up to
/// [`MAX_CONNECT_RETRY_DELAY`].
const FIRST_CONNECT_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_CONNECT_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long a draining worker with nothing running keeps asking a database
/// that does not answer (claims, the drain check) before it stops
/// (`--drain-patience`): a drain ends, it does not wait for ever.
pub const DEFAULT_DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// Wait until the database answers and is migrated, retrying with backoff
/// while the cause is one that waiting may cure (refused, timed out, too
/// many clients, starting up), for at most `limit`; a line is logged at
/// once and then every [`CONNECT_LOG_EVERY`]. Other errors return at once.
pub async fn wait_for_database<S: TaskStore>(store: &S, limit: Duration) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut delay = FIRST_CONNECT_RETRY_DELAY;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let err = match store.ping().await {
            Ok(()) => match store.migrate().await {
                Ok(()) => {
                    if last_log.is_some() {
                        tracing::info!(
                            waited = %humantime::format_duration(round(started.elapsed())),
                            "database reachable"
                        );
                    }
                    return Ok(());
                }
                Err(err) => err,
            },
            Err(err) => err,
        };
        let waited = started.elapsed();
        if !err.is_transient_connection() || waited >= limit {
            return Err(err);
        }
        if last_log.is_none_or(|at| at.elapsed() >= CONNECT_LOG_EVERY) {
            tracing::warn!(
                "waiting for the database (up to {}, --connect-timeout): {err}",
                humantime::format_duration(limit)
            );
            last_log = Some(std::time::Instant::now());
        }
        tokio::time::sleep(delay.min(limit.saturating_sub(waited))).await;
        delay = (delay * 2).min(MAX_CONNECT_RETRY_DELAY);
    }
}

fn round(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64 / 100 * 100)
}

/// The default concurrency: 12 consumers per core.
pub fn default_concurrency() -> usize {
    CONSUMERS_PER_CORE * std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Recorded on every row this worker claims.
    pub worker_id: String,
    pub concurrency: usize,
    pub default_timeout: Duration,
    /// The queues served, each perhaps capped; empty: every queue.
    pub queues: Vec<ServedQueue>,
    pub poll_interval: Duration,
    /// How long the producer waits for half the slots to free up before
    /// claiming for fewer.
    pub claim_wait: Duration,
    /// Claim loops a worker runs at once (see [`DEFAULT_CLAIMERS`]).
    pub claimers: usize,
    /// Rows one claim takes at most.
    pub max_claim: usize,
    /// Claimed tasks held beyond those running, at most (see [`slots`]).
    pub claim_ahead: usize,
    /// Held ahead: no more than the worker expects to start within this.
    pub claim_ahead_horizon: Duration,
    /// How often the plugins folder is checked for new or changed files.
    pub plugin_rescan: Duration,
    /// Exit once nothing is running or due.
    pub drain: bool,
    /// Draining with nothing running, stop after the database has not
    /// answered for this long (see [`DEFAULT_DRAIN_PATIENCE`]).
    pub drain_patience: Duration,
    pub backoff: Backoff,
    pub completer: CompleterConfig,
    pub rescuer: RescuerConfig,
    /// How often the janitor looks at the tables' dead rows.
    pub tidy_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: new_worker_id(),
            concurrency: default_concurrency(),
            default_timeout: DEFAULT_TASK_TIMEOUT,
            queues: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            claim_wait: DEFAULT_CLAIM_WAIT,
            claimers: DEFAULT_CLAIMERS,
            max_claim: DEFAULT_MAX_CLAIM,
            claim_ahead: DEFAULT_CLAIM_AHEAD,
            claim_ahead_horizon: DEFAULT_CLAIM_AHEAD_HORIZON,
            plugin_rescan: DEFAULT_PLUGIN_RESCAN,
            drain: false,
            drain_patience: DEFAULT_DRAIN_PATIENCE,
            backoff: Backoff::default(),
            completer: CompleterConfig::default(),
            rescuer: RescuerConfig::default(),
            tidy_interval: janitor::DEFAULT_TIDY_INTERVAL,
        }
    }
}

/// `host-pid-random`: unique per process, readable in `show`.
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// The two stages of stopping: `stop` ends claiming and lets running tasks
/// finish; `interrupt` stops running tasks and gives them back unspent.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub interrupt: CancellationToken,
}

/// Tasks this worker holds, from claim until their outcome is written, so
/// they can be interrupted by id and so the rescuer can tell them from rows
/// whose claim reply was lost.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    tasks: Mutex<HashMap<i64, InFlightTask>>,
    cancelled: Notify,
}

/// A task held from claim until its outcome is written.
#[derive(Debug)]
struct InFlightTask {
    interrupt: CancellationToken,
    /// Its place in a capped queue (`--queue NAME=N`), given back as the
    /// task leaves.
    _queue_slot: Option<QueueSlot>,
}

impl InFlight {
    pub(crate) fn is_empty(&self) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    pub(crate) fn ids(&self) -> Vec<i64> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    fn insert_many(
        &self,
        tasks: impl IntoIterator<Item = (i64, CancellationToken, Option<QueueSlot>)>,
    ) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(tasks.into_iter().map(|(id, interrupt, queue_slot)| {
                (
                    id,
                    InFlightTask {
                        interrupt,
                        _queue_slot: queue_slot,
                    },
                )
            }));
    }

    pub(crate) fn remove(&self, ids: impl IntoIterator<Item = i64>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            tasks.remove(&id);
        }
    }

    /// Interrupt task `id` if it runs (or waits to run) here.
    fn cancel(&self, id: i64) {
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            tracing::info!(task = id, "cancel requested; interrupting");
            task.interrupt.cancel();
            self.cancelled.notify_one();
        }
    }

    /// Resolves after a cancel here, so the starter can end a task that
    /// had not started.
    async fn cancelled(&self) {
        self.cancelled.notified().await;
    }
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub claimed: u64,
    /// Set when a drain stopped because the database did not answer for
    /// `drain_patience` while nothing ran here: whether tasks remain is
    /// unknown. The last error.
    pub drain_unconfirmed: Option<String>,
    /// Set when the worker stopped because its plugins folder holds plugin
    /// files and not one of them loads (each refused, say by `--memory`),
    /// or, draining, holds none: why, naming the first refusal.
    pub no_plugin_loads: Option<String>,
}

pub struct Worker<S: TaskStore> {
    store: S,
    plugins: Arc<Plugins>,
    config: WorkerConfig,
}

impl<S: TaskStore> Worker<S> {
    pub fn new(store: S, plugins: Arc<Plugins>, config: WorkerConfig) -> Self {
        Worker {
            store,
            plugins,
            config,
        }
    }

    /// Serve until `shutdown.stop` fires (or, with `drain`, until nothing is
    /// left), then wait for running tasks and for their results to be
    /// written.
    pub async fn run(self, shutdown: Shutdown) -> Result<WorkerReport, StoreError> {
        let config = self.config.clone();
        if let Err(err) = self.store.warm_up().await {
            tracing::warn!("cannot connect yet ({err}); claiming will keep trying");
        }
        let slots = Arc::new(Slots::new(
            config.concurrency,
            config.claim_ahead,
            config.claim_ahead_horizon,
        ));
        let wake = Arc::new(Notify::new());
        let flushed = Arc::new(Notify::new());
        let in_flight = Arc::new(InFlight::default());
        let executor = Arc::new(Executor {
            plugins: self.plugins.clone(),
            backoff: config.backoff,
            host_failing: Default::default(),
            host_told: Default::default(),
        });

        // Room for two outcomes per task the worker may hold: a write in
        // flight and the next batch gathering.
        let (outcomes, completions) =
            mpsc::channel((config.concurrency + config.claim_ahead).max(1) * 2);
        let completer = tokio::spawn(completer::run(
            self.store.clone(),
            config.completer.clone(),
            completions,
            flushed.clone(),
            in_flight.clone(),
        ));
        let listener = self.start_listener(wake.clone(), in_flight.clone()).await;
        let rescuer_stop = CancellationToken::new();
        let (nothing_loads, told_nothing_loads) = tokio::sync::oneshot::channel();
        let plugins_scanned = CancellationToken::new();
        let watcher = tokio::spawn(watch_plugins(
            self.store.clone(),
            self.plugins.clone(),
            Watch {
                every: config.plugin_rescan,
                drain: config.drain,
                scanned: plugins_scanned.clone(),
            },
            rescuer_stop.clone(),
            nothing_loads,
        ));
        // Nothing this worker could claim would run: stop, and say why.
        let stop_serving = shutdown.stop.clone();
        let refusal = tokio::spawn(async move {
            let reason = told_nothing_loads.await.ok()?;
            tracing::error!("stopping: {reason}");
            stop_serving.cancel();
            Some(reason)
        });
        let rescuer = tokio::spawn(rescuer::run(
            self.store.clone(),
            config.worker_id.clone(),
            config.rescuer.clone(),
            in_flight.clone(),
            self.plugins.names(),
            rescuer_stop.clone(),
        ));

        // In the middle of work: holding tasks, or the last claim found
        // some (and, until the first claim, starting).
        let found_work = Arc::new(AtomicBool::new(true));
        let janitor = tokio::spawn(janitor::run(
            self.store.clone(),
            config.tidy_interval,
            {
                let (found_work, in_flight) = (found_work.clone(), in_flight.clone());
                move || found_work.load(Ordering::Relaxed) || !in_flight.is_empty()
            },
            rescuer_stop.clone(),
        ));

        let consumers = tokio_util::task::TaskTracker::new();
        let queue = Arc::new(starter::StartQueue::default());
        let claiming_ended = CancellationToken::new();
        // The starter and the consumers live on the guest runtime, so a busy
        // guest never delays claiming, the completer or the listener.
        consumers.spawn_on(
            starter::run(
                Arc::new(starter::Consumers {
                    queue: queue.clone(),
                    executor: executor.clone(),
                    slots: slots.clone(),
                    shutdown: shutdown.clone(),
                    outcomes,
                    tracker: consumers.clone(),
                }),
                in_flight.clone(),
                claiming_ended.clone(),
            ),
            self.plugins.sandbox().guest_runtime(),
        );
        let producer = Producer {
            store: self.store.clone(),
            queue_names: config.queues.iter().map(|q| q.name.clone()).collect(),
            queue_caps: QueueCaps::new(&config.queues, wake.clone()),
            config: config.clone(),
            min_demand: u32::try_from(
                ((config.concurrency + config.claim_ahead) / 2).clamp(1, config.max_claim.max(1)),
            )
            .unwrap_or(u32::MAX),
            slots,
            wake,
            flushed,
            in_flight: in_flight.clone(),
            executor,
            queue,
            shutdown,
            drained: CancellationToken::new(),
            plugins_scanned: plugins_scanned.clone(),
            claimed: AtomicU64::new(0),
            found_work,
            unanswered_since: Mutex::new(None),
            gave_up: Mutex::new(None),
        };
        futures::future::join_all((0..config.claimers.max(1)).map(|_| producer.claim_loop())).await;
        let report = WorkerReport {
            claimed: producer.claimed.load(Ordering::Relaxed),
            drain_unconfirmed: producer
                .gave_up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            no_plugin_loads: None,
        };
        drop(producer);

        claiming_ended.cancel();
        consumers.close();
        consumers.wait().await;
        let _ = completer.await;
        if let Some(listener) = listener {
            listener.abort();
            let _ = listener.await;
        }
        rescuer_stop.cancel();
        let _ = rescuer.await;
        let _ = janitor.await;
        let _ = watcher.await;
        let report = WorkerReport {
            no_plugin_loads: refusal.await.ok().flatten(),
            ..report
        };
        if report.drain_unconfirmed.is_some() {
            // The database is not answering: asking again would only delay
            // the exit by a connection timeout.
            tracing::warn!("not deregistering this worker; its row will go stale");
        } else if let Err(err) = self.store.deregister(&config.worker_id).await {
            tracing::warn!("cannot deregister this worker ({err}); its row will go stale");
        }
        Ok(report)
    }

    /// Forward database notifications to `wake`. Without them the worker
    /// still runs, on polling alone.
    async fn start_listener(
        &self,
        wake: Arc<Notify>,
        in_flight: Arc<InFlight>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match self.store.subscribe().await {
            Ok(mut notifications) => Some(tokio::spawn(async move {
                while let Some(notification) = notifications.recv().await {
                    match notification {
                        Notification::TasksAvailable => wake.notify_one(),
                        Notification::Cancel(id) => in_flight.cancel(id),
                    }
                }
            })),
            Err(err) => {
                tracing::warn!("cannot listen for new tasks ({err}); polling instead");
                None
            }
        }
    }
}

/// How the plugin watcher runs.
struct Watch {
    /// How often the folder is looked at again.
    every: Duration,
    /// A draining worker with an empty folder stops instead of waiting.
    drain: bool,
    /// Fired after the first look at every file, whatever it found.
    scanned: CancellationToken,
}

/// Load plugins whose files appeared or changed, at once and then every
/// `every`, until `stop`: the worker claims meanwhile, and a task runs the
/// latest version of its plugin that loaded. When the first look finds
/// plugin files and none of them loads (or, draining, finds none), why goes
/// to `nothing_loads`; a service with an empty folder warns and waits.
async fn watch_plugins<S: TaskStore>(
    store: S,
    plugins: Arc<Plugins>,
    watch: Watch,
    stop: CancellationToken,
    nothing_loads: tokio::sync::oneshot::Sender<String>,
) {
    let mut recorded = std::collections::HashSet::new();
    let mut failing = false;
    let mut first = Some(nothing_loads);
    loop {
        if first.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(watch.every) => {}
                _ = stop.cancelled() => return,
            }
        }
        // A slow compile must not hold up stopping.
        let scan = tokio::select! {
            scan = plugins.load_all() => scan,
            _ = stop.cancelled() => return,
        };
        if let (Some(nothing_loads), Ok(listings)) = (first.take(), &scan) {
            let dir = plugins.dir().display();
            if listings.is_empty() && watch.drain {
                let _ = nothing_loads.send(format!(
                    "the plugins folder {dir} holds no NAME.wasm file, so a --drain worker has nothing to run tasks with"
                ));
            } else if listings.is_empty() {
                tracing::warn!("no plugins in {dir} yet; waiting for NAME.wasm files to appear");
            } else if let Some(reason) = first_refusal_of_all(listings) {
                let _ = nothing_loads.send(format!(
                    "no plugin in {dir} loads, so this worker has nothing to run tasks with; the first refusal: {reason}"
                ));
            }
        }
        watch.scanned.cancel();
        if let Ok(listings) = &scan {
            // A database that does not answer must not hold up stopping.
            tokio::select! {
                _ = record_schemas(&store, listings, &mut recorded) => {}
                _ = stop.cancelled() => return,
            }
        }
        match scan {
            Ok(_) if failing => {
                tracing::info!("plugins load again");
                failing = false;
            }
            Ok(_) => {}
            Err(err) if !failing => {
                tracing::warn!("cannot load plugins: {err}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// When not one listed plugin loads nor serves from an earlier version: the
/// first one's refusal, named.
fn first_refusal_of_all(listings: &[crate::sandbox::PluginListing]) -> Option<String> {
    let mut first = None;
    for listing in listings {
        match (&listing.loaded, &listing.serving) {
            (Err(err), None) => {
                first.get_or_insert_with(|| format!("plugin {}: {err}", listing.name));
            }
            _ => return None,
        }
    }
    first
}

/// Keep the schemas of every plugin version that loaded, by digest, so a
/// result stays readable after its plugin file is replaced. After a failed
/// record the rest wait for the next look: the database is likely down.
async fn record_schemas<S: TaskStore>(
    store: &S,
    listings: &[crate::sandbox::PluginListing],
    recorded: &mut std::collections::HashSet<String>,
) {
    for listing in listings {
        let Ok(plugin) = &listing.loaded else {
            continue;
        };
        if recorded.contains(&plugin.digest) {
            continue;
        }
        match store.record_schemas(&plugin.schemas()).await {
            Ok(()) => {
                recorded.insert(plugin.digest.clone());
            }
            Err(err) => {
                tracing::debug!(plugin = %listing.name, "schemas not recorded yet: {err}");
                return;
            }
        }
    }
}

//! The rescuer, run by every worker: it keeps this worker's heartbeat fresh
//! and takes back rows that dead workers left `running`. Every task has a
//! hard deadline enforced in the sandbox, so a row well past its deadline
//! whose worker has also gone silent cannot still be running anywhere.
//! The store only finds such rows; where each goes is decided here, once,
//! by [`Transition::decide`], and written as any completion: fenced on the
//! row's token, so of two rescuers, or a rescuer and a late write from the
//! lost attempt, exactly one writes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::InFlight;
use crate::store::{
    Completion, Ending, LostRun, RescueRequest, Rescued, Status, StoreResult, TaskStore, Transition,
};

/// How often a worker beats and looks for lost rows.
pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(1);
/// How far past its deadline a running row must be before it is rescued.
pub const DEFAULT_RESCUE_GRACE: Duration = Duration::from_secs(5);
/// How long without a heartbeat before a worker counts as dead.
pub const DEFAULT_WORKER_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RescuerConfig {
    pub interval: Duration,
    pub grace: Duration,
    pub worker_ttl: Duration,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: DEFAULT_RESCUE_INTERVAL,
            grace: DEFAULT_RESCUE_GRACE,
            worker_ttl: DEFAULT_WORKER_TTL,
        }
    }
}

/// Beat and rescue every `interval` until `stop` fires. The heartbeat runs
/// on its own, on the store's heartbeat connection, so a slow or refused
/// rescue never delays it and a live worker never looks dead.
pub(crate) async fn run<S: TaskStore>(
    store: S,
    worker_id: String,
    config: RescuerConfig,
    in_flight: Arc<InFlight>,
    plugins: watch::Receiver<Arc<[String]>>,
    stop: CancellationToken,
) {
    tokio::join!(
        beat(&store, &worker_id, config.interval, plugins, &stop),
        rescue(&store, &worker_id, &config, &in_flight, &stop),
    );
}

/// Each beat also tells the plugins this worker serves, at once when they
/// change, so `stats` knows which waiting tasks nobody can run.
async fn beat<S: TaskStore>(
    store: &S,
    worker_id: &str,
    interval: Duration,
    mut plugins: watch::Receiver<Arc<[String]>>,
    stop: &CancellationToken,
) {
    let mut failing = false;
    loop {
        let serving = plugins.borrow_and_update().clone();
        match store.heartbeat(worker_id, &serving).await {
            Ok(()) if failing => {
                tracing::info!("heartbeat working again");
                failing = false;
            }
            Ok(()) => {}
            Err(err) if !failing => {
                tracing::warn!("heartbeat failed: {err}; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            // A closed channel (the plugins are gone) just waits out the interval.
            Ok(()) = plugins.changed() => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn rescue<S: TaskStore>(
    store: &S,
    worker_id: &str,
    config: &RescuerConfig,
    in_flight: &InFlight,
    stop: &CancellationToken,
) {
    let mut failing = false;
    loop {
        let held = in_flight.ids();
        let request = RescueRequest {
            grace: config.grace,
            worker_ttl: config.worker_ttl,
            worker_id,
            in_flight: &held,
        };
        match rescue_once(store, &request).await {
            Ok(rescued) => {
                if failing {
                    tracing::info!("rescue working again");
                    failing = false;
                }
                for row in rescued {
                    match row.status {
                        Status::Waiting => tracing::warn!(
                            task = row.id,
                            "rescued from a lost worker; it will run again"
                        ),
                        status => {
                            tracing::warn!(task = row.id, %status, "rescued from a lost worker; no attempts left")
                        }
                    }
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("rescue failed: {err}; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Find the rows `request` may take back and write where each goes: a
/// cancelled one ends `cancelled`; otherwise it runs again at once while
/// attempts remain, else ends `error`, "worker lost" joining its history.
pub async fn rescue_once<S: TaskStore>(
    store: &S,
    request: &RescueRequest<'_>,
) -> StoreResult<Vec<Rescued>> {
    let lost = store.lost(request).await?;
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let completions: Vec<Completion> = lost.iter().map(rescue_of).collect();
    store.complete(&completions).await?;
    Ok(completions
        .iter()
        .map(|completion| Rescued {
            id: completion.id,
            status: completion.transition.status(),
        })
        .collect())
}

/// Where a lost run goes, as the completion that writes it.
pub fn rescue_of(run: &LostRun) -> Completion {
    let ending = if run.cancel_requested {
        Ending::Cancelled { ran: true }
    } else {
        Ending::WorkerLost(format!(
            "worker lost: {} stopped during attempt {}",
            run.worker_id.as_deref().unwrap_or("an unknown worker"),
            run.attempt
        ))
    };
    let transition = Transition::decide(ending, run.attempt, run.max_attempts, |_| Duration::ZERO);
    Completion::of(run.id, run.attempt, run.token, transition)
}

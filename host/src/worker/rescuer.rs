//! The rescuer, run by every worker: it keeps this worker's heartbeat fresh
//! and takes back rows that dead workers left `running`. Every task has a
//! hard deadline enforced in the sandbox, so a row well past its deadline
//! whose worker has also gone silent cannot still be running anywhere.
//! Completion is fenced on the claim's token, so even a late write from a
//! rescued attempt never overwrites a newer one; many rescuers may run at
//! once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::InFlight;
use crate::store::{RescueRequest, Status, TaskStore};

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
        match store.rescue(&request).await {
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

//! The completer: gathers attempt outcomes from the consumers and writes them
//! in batches, one fenced statement per batch. While the database is away it
//! holds what it has (the bounded channel pushes back on the consumers) and
//! writes it once the database returns. It also ends each claim's lease with
//! the write of that claim's last outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::InFlight;
use crate::store::{Completion, TaskStore};

/// Outcomes written per statement at most. A batch grows only while the
/// previous write is in flight, so a busy worker writes fewer, larger
/// statements and an idle one writes each outcome at once.
pub const DEFAULT_MAX_BATCH: usize = 2048;
/// First pause after a failed write; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct CompleterConfig {
    pub max_batch: usize,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        CompleterConfig {
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// One claim's lease and how many of its tasks have not reached the
/// completer yet.
#[derive(Debug)]
pub(crate) struct Lease {
    id: i64,
    outstanding: AtomicUsize,
}

impl Lease {
    pub(crate) fn new(id: i64, tasks: usize) -> Arc<Self> {
        Arc::new(Lease {
            id,
            outstanding: AtomicUsize::new(tasks),
        })
    }
}

/// An attempt's outcome on its way to the completer.
#[derive(Debug)]
pub(crate) struct Finished {
    pub completion: Completion,
    pub lease: Option<Arc<Lease>>,
}

/// Run until every sender is gone and everything received is written.
/// Written tasks leave `in_flight`; `flushed` is notified after each write.
pub(crate) async fn run<S: TaskStore>(
    store: S,
    config: CompleterConfig,
    mut outcomes: mpsc::Receiver<Finished>,
    flushed: Arc<Notify>,
    in_flight: Arc<InFlight>,
) {
    let mut received = Vec::with_capacity(config.max_batch);
    let mut batch = Vec::with_capacity(config.max_batch);
    let mut leases = Vec::with_capacity(config.max_batch);
    while outcomes.recv_many(&mut received, config.max_batch).await > 0 {
        // Outcomes arrive here one at a time, so the one that brings a
        // lease's count to zero is its last: every other outcome of that
        // claim is in this batch or an earlier, already written one.
        for finished in received.drain(..) {
            let mut completion = finished.completion;
            if let Some(lease) = &finished.lease
                && lease.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
            {
                completion.ends_lease = Some(lease.id);
            }
            batch.push(completion);
            leases.push(finished.lease);
        }
        if !write(&store, &batch).await {
            // Some row may have been refused and left `running`: keep every
            // lease of this batch for the rescuer, which drops a lease once
            // none of its tasks runs.
            for lease in leases.iter().flatten() {
                lease.outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
        in_flight.remove(batch.iter().map(|c| c.id));
        batch.clear();
        leases.clear();
        flushed.notify_one();
    }
}

/// Write one batch, waiting out database outages. A write the database
/// refuses outright is retried row by row so one bad row cannot sink the
/// rest; a row that still fails is left `running` for the rescuer. True when
/// the batch was written whole.
async fn write<S: TaskStore>(store: &S, batch: &[Completion]) -> bool {
    let mut delay = FIRST_RETRY_DELAY;
    let mut outage = false;
    loop {
        match store.complete(batch).await {
            Ok(_) => {
                if outage {
                    tracing::info!(
                        held = batch.len(),
                        "database reachable again; results written"
                    );
                }
                return true;
            }
            Err(err) if err.is_transient() => {
                if !outage {
                    tracing::warn!(
                        held = batch.len(),
                        "database unreachable or full, holding results until it can write them: {err}"
                    );
                    outage = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(err) if batch.len() > 1 => {
                tracing::error!(
                    "a batch of {} results was refused ({err}); writing them one by one",
                    batch.len()
                );
                // A refused row stays `running`; its lease must outlive it
                // so the rescuer can find it, so these writes end none.
                for completion in batch {
                    let alone = Completion {
                        ends_lease: None,
                        ..completion.clone()
                    };
                    Box::pin(write(store, std::slice::from_ref(&alone))).await;
                }
                return false;
            }
            Err(err) => {
                tracing::error!(task = batch[0].id, "result refused by the database: {err}");
                return false;
            }
        }
    }
}

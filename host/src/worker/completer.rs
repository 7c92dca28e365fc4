//! The completer: gathers attempt outcomes from the consumers and writes them
//! in batches, one fenced statement per batch. While the database is away it
//! holds what it has (the bounded channel pushes back on the consumers) and
//! writes it once the database returns.

use std::sync::Arc;
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

/// Run until every sender is gone and everything received is written.
/// Written tasks leave `in_flight`; `flushed` is notified after each write.
pub(crate) async fn run<S: TaskStore>(
    store: S,
    config: CompleterConfig,
    mut outcomes: mpsc::Receiver<Completion>,
    flushed: Arc<Notify>,
    in_flight: Arc<InFlight>,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    while outcomes.recv_many(&mut batch, config.max_batch).await > 0 {
        write(&store, &batch).await;
        in_flight.remove(batch.iter().map(|c| c.id));
        batch.clear();
        flushed.notify_one();
    }
}

/// Write one batch, waiting out database outages. A write the database
/// refuses outright is retried row by row so one bad row cannot sink the
/// rest; a row that still fails is left `running` for the rescuer.
async fn write<S: TaskStore>(store: &S, batch: &[Completion]) {
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
                return;
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
                // A refused row stays `running` for the rescuer.
                for completion in batch {
                    Box::pin(write(store, std::slice::from_ref(completion))).await;
                }
                return;
            }
            Err(err) => {
                tracing::error!(task = batch[0].id, "result refused by the database: {err}");
                return;
            }
        }
    }
}

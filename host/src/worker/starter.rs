//! The starter: hands free slots to held tasks in the order they were
//! claimed (a claim takes them in priority order), and ends those that must
//! not run: a held task cancelled ends `cancelled` at once, and once the
//! worker stops claiming every held task goes back unrun, its attempt
//! unspent. Each task it starts runs in a consumer of its own, which hands
//! the outcome to the completer and then, keeping its slot, takes the next
//! held task itself; it frees the slot once none is left to start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{Executor, InterruptCause};
use super::slots::Slots;
use super::{InFlight, Shutdown};
use crate::store::{ClaimedTask, Completion, Transition};

/// A claimed task waiting for a slot.
pub(super) struct Held {
    pub task: ClaimedTask,
    /// Fires on a cancel of this task, or on the worker's interrupt.
    pub token: CancellationToken,
    /// Its place among the tasks the worker holds, kept until its outcome
    /// reaches the completer.
    pub place: OwnedSemaphorePermit,
}

/// Held tasks in claim order.
#[derive(Default)]
pub(super) struct StartQueue {
    tasks: Mutex<VecDeque<Held>>,
    added: Notify,
}

impl StartQueue {
    /// Queue a claim's tasks, in its order.
    pub(super) fn push(&self, held: impl IntoIterator<Item = Held>) {
        self.lock().extend(held);
        self.added.notify_one();
    }

    /// Held tasks not started yet.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every consumer shares.
pub(super) struct Consumers {
    pub queue: Arc<StartQueue>,
    pub executor: Arc<Executor>,
    pub slots: Arc<Slots>,
    pub shutdown: Shutdown,
    pub outcomes: mpsc::Sender<Completion>,
    pub tracker: TaskTracker,
}

/// How a held task leaves the queue.
enum Begin {
    Run(OwnedSemaphorePermit),
    /// Cancelled before it started.
    Cancelled,
    /// The worker stopped claiming (or is interrupting): back unrun.
    GiveBack,
}

impl Begin {
    /// How `held`, given `slot`, begins: it runs there, or, cancelled while
    /// it waited, ends unrun and leaves the slot free at once.
    fn in_slot(held: &Held, slot: OwnedSemaphorePermit) -> Begin {
        if held.token.is_cancelled() {
            Begin::Cancelled
        } else {
            Begin::Run(slot)
        }
    }
}

/// Start held tasks until claiming has `ended` and none is left.
pub(super) async fn run(
    consumers: Arc<Consumers>,
    in_flight: Arc<InFlight>,
    ended: CancellationToken,
) {
    let stop = consumers.shutdown.stop.clone();
    let queue = &consumers.queue;
    loop {
        if stop.is_cancelled() {
            let all: Vec<Held> = queue.lock().drain(..).collect();
            for held in all {
                begin(&consumers, held, Begin::GiveBack);
            }
        }
        if queue.lock().is_empty() {
            // Nothing is pushed once claiming has ended.
            if ended.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = queue.added.notified() => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = ended.cancelled() => {}
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            _ = in_flight.cancelled() => {
                let interrupted: VecDeque<Held> = {
                    let mut tasks = queue.lock();
                    let (gone, kept) = tasks.drain(..).partition(|held| held.token.is_cancelled());
                    *tasks = kept;
                    gone
                };
                for held in interrupted {
                    begin(&consumers, held, Begin::Cancelled);
                }
            }
            slot = consumers.slots.run().clone().acquire_owned() => {
                let slot = slot.expect("the semaphore is never closed");
                let Some(held) = queue.lock().pop_front() else {
                    // A consumer took the last held task meanwhile. The slot
                    // is free again, and a producer that counted it as taken
                    // while this waited for it must count again.
                    drop(slot);
                    consumers.slots.freed();
                    continue;
                };
                let how = Begin::in_slot(&held, slot);
                begin(&consumers, held, how);
            }
        }
    }
}

/// Take `held` out of the wait and give it to a consumer of its own.
fn begin(consumers: &Arc<Consumers>, held: Held, how: Begin) {
    consumers.slots.left_waiting();
    consumers
        .tracker
        .spawn(consume(consumers.clone(), held, how));
}

/// Run `held` (or end it unrun), then, with the same slot, the held tasks
/// still waiting, in claim order, until none is left or the worker stops:
/// a slot handed from task to task costs no wake of the starter and no new
/// consumer (a drain of 100,000 tasks at 24 slots ran 5% slower than at
/// 2,048 when every task went through the starter).
///
/// A task's end is told to the slots only once its slot is handed on or
/// free: the producer, woken by it, counts the free slots to size its next
/// claim, and a slot freed after the news would go uncounted until some
/// other task started or ended (with one slot, never).
async fn consume(consumers: Arc<Consumers>, mut held: Held, mut how: Begin) {
    loop {
        let slot = run_one(&consumers, held, how).await;
        let next = slot
            .filter(|_| !consumers.shutdown.stop.is_cancelled())
            .and_then(|slot| {
                let next = consumers.queue.lock().pop_front()?;
                Some((Begin::in_slot(&next, slot), next))
            });
        if next.is_some() {
            consumers.slots.left_waiting();
        }
        consumers.slots.finished();
        let Some((begins, next)) = next else {
            return;
        };
        (held, how) = (next, begins);
    }
}

/// One task: run it (or end it unrun) and hand the outcome to the
/// completer, keeping its place among the held tasks until the completer
/// has room (backpressure). Returns the slot it ran in; the caller tells
/// the slots the task ended.
async fn run_one(consumers: &Consumers, held: Held, how: Begin) -> Option<OwnedSemaphorePermit> {
    let Held {
        mut task,
        token,
        place,
    } = held;
    let interrupting = || consumers.shutdown.interrupt.is_cancelled();
    let (completion, slot) = match how {
        Begin::Run(slot) => {
            tracing::debug!(task = task.id, plugin = %task.plugin, attempt = task.attempt, "attempt started");
            let cause = || {
                if interrupting() {
                    InterruptCause::Shutdown
                } else {
                    InterruptCause::Cancelled
                }
            };
            let completion = consumers.executor.execute(&mut task, &token, cause).await;
            (completion, Some(slot))
        }
        Begin::Cancelled if !interrupting() => (
            Completion::new(&task, Transition::Cancelled { ran: false }),
            None,
        ),
        Begin::Cancelled | Begin::GiveBack => (Completion::release(&task), None),
    };
    if consumers.outcomes.send(completion).await.is_err() {
        tracing::error!(
            task = task.id,
            "the completer stopped; the rescuer will recover this task"
        );
    }
    drop(place);
    slot
}

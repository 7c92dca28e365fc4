//! The producer: claims as many tasks as the worker has room to hold (free
//! slots, plus what it may claim ahead of them: [`Slots`]) and queues them,
//! in claim order, for the starter. It wakes on database notifications and
//! falls back to polling; several claim loops may share one producer so a
//! batch is claimed while the previous one runs. A worker with capped
//! queues ([`QueueCaps`]) claims each capped queue for what its cap has
//! room for, then the others for the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::executor::{Executor, HOST_FAILURE_BACKOFF};
use super::queue_caps::{QueueCaps, Reservation};
use super::slots::Slots;
use super::starter::{Held, StartQueue};
use super::{InFlight, Shutdown, WorkerConfig};
use crate::store::{ClaimRequest, ClaimedTask, Scope, StoreError, TaskStore};

/// Rows the first claim of a burst takes at most; each full claim doubles
/// the next one's cap up to `max_claim`.
const FIRST_CLAIM: usize = 64;
/// Pause after a failed claim, doubling up to [`MAX_CLAIM_RETRY_DELAY`].
const FIRST_CLAIM_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_CLAIM_RETRY_DELAY: Duration = Duration::from_secs(5);

pub(super) struct Producer<S: TaskStore> {
    pub store: S,
    pub config: WorkerConfig,
    /// The served queues' names (empty: every queue), as a claim's scope.
    pub queue_names: Vec<String>,
    /// `None` unless some served queue is capped.
    pub queue_caps: Option<Arc<QueueCaps>>,
    /// Claim once there is room for this many tasks (or after `claim_wait`).
    pub min_demand: u32,
    pub slots: Arc<Slots>,
    pub wake: Arc<Notify>,
    pub flushed: Arc<Notify>,
    pub in_flight: Arc<InFlight>,
    pub executor: Arc<Executor>,
    /// Where claimed tasks wait for the starter.
    pub queue: Arc<StartQueue>,
    pub shutdown: Shutdown,
    /// Fired by the first claim loop that finds a drained queue.
    pub drained: CancellationToken,
    /// Fired once the plugin watcher has looked at every file once.
    pub plugins_scanned: CancellationToken,
    pub claimed: AtomicU64,
    /// The last claim found tasks (true until the first claim answers).
    pub found_work: Arc<AtomicBool>,
    /// Since when the database has not answered a claim or drain check.
    pub unanswered_since: Mutex<Option<Instant>>,
    /// Why a drain stopped without an answer (see `drain_patience`).
    pub gave_up: Mutex<Option<String>>,
}

impl<S: TaskStore> Producer<S> {
    /// Claim and start tasks until shutdown (or, draining, until nothing is
    /// left).
    pub async fn claim_loop(&self) {
        let config = &self.config;
        let mut retry_delay = FIRST_CLAIM_RETRY_DELAY;
        let mut claim_failing = false;
        let mut cap = first_claim_cap(config.max_claim);
        loop {
            // The host could not run the last task it tried (see
            // `Outcome::HostFailure`): back off before trying again.
            if self.executor.host_failing.load(Ordering::Acquire) {
                tokio::select! {
                    _ = tokio::time::sleep(HOST_FAILURE_BACKOFF) => {}
                    _ = self.stopped() => return,
                }
            }
            // A worker without a single loaded plugin would claim tasks
            // only to fail them: wait for one (the watcher wakes us, and
            // stops the worker when none of its plugins loads).
            if !self.executor.plugins.any_serving() {
                tokio::select! {
                    _ = self.executor.plugins.until_any_serving() => {}
                    _ = self.stopped() => return,
                }
            }
            let Some(mut held) = self.demand(cap).await else {
                return;
            };
            // As many as the worker may hold now; with nothing to spare, wait
            // for a task to start or end.
            let room = self.slots.room(self.queue.len());
            if room == 0 {
                drop(held);
                tokio::select! {
                    _ = self.slots.progressed() => {}
                    _ = self.stopped() => return,
                }
                continue;
            }
            let mut permits = if held.num_permits() > room {
                let kept = held.split(room).expect("fewer than it holds");
                drop(held);
                kept
            } else {
                held
            };
            let asked = permits.num_permits();
            // Only tasks of plugins loaded here: the rest are for workers
            // that have theirs.
            let serving = self.executor.plugins.serving_names();
            let claimed = match &self.queue_caps {
                None => {
                    self.claim_from(&self.queue_names, &serving, &mut permits, None)
                        .await
                }
                Some(caps) => self.claim_capped(caps, &serving, &mut permits).await,
            };
            let got = match claimed {
                Ok(got) => {
                    self.answered();
                    if claim_failing {
                        tracing::info!("claiming again");
                        claim_failing = false;
                    }
                    retry_delay = FIRST_CLAIM_RETRY_DELAY;
                    got
                }
                Err(err) => {
                    if !claim_failing {
                        tracing::warn!("cannot claim tasks: {err}; retrying");
                        claim_failing = true;
                    }
                    drop(permits);
                    if self.out_of_patience(&err) {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(retry_delay) => {}
                        _ = self.stopped() => return,
                    }
                    retry_delay = (retry_delay * 2).min(MAX_CLAIM_RETRY_DELAY);
                    continue;
                }
            };
            self.found_work.store(got > 0, Ordering::Relaxed);
            cap = next_claim_cap(cap, asked, got, config.max_claim);
            drop(permits);
            if got > 0 {
                continue;
            }
            // A drain decides only once every plugin file has been looked
            // at: before that, tasks of a plugin still loading look like
            // tasks this worker cannot run.
            if config.drain
                && self.plugins_scanned.is_cancelled()
                && self.slots.idle()
                && !self.has_pending_or_unknown().await
            {
                self.drained.cancel();
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.flushed.notified(), if config.drain => {}
                _ = self.plugins_scanned.cancelled(), if config.drain && !self.plugins_scanned.is_cancelled() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = self.stopped() => return,
            }
        }
    }

    /// Wait for demand: room to hold `min_demand` tasks (one statement for
    /// many rows), or whatever room there is after `claim_wait`, so a busy
    /// worker does not claim a row at a time; then take what else is free,
    /// up to `cap`. `None` once stopping.
    async fn demand(&self, cap: usize) -> Option<OwnedSemaphorePermit> {
        let held = self.slots.held();
        let wanted = self.min_demand.min(u32::try_from(cap).unwrap_or(u32::MAX));
        let gathered = tokio::select! {
            batch = tokio::time::timeout(
                self.config.claim_wait,
                held.clone().acquire_many_owned(wanted),
            ) => batch.ok().map(|permit| permit.expect("the semaphore is never closed")),
            _ = self.stopped() => return None,
        };
        let mut permits = match gathered {
            Some(permits) => permits,
            None => tokio::select! {
                permit = held.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = self.stopped() => return None,
            },
        };
        let room = cap.saturating_sub(permits.num_permits());
        let free = held.available_permits().min(room);
        if free > 0
            && let Ok(more) = held.clone().try_acquire_many_owned(free as u32)
        {
            permits.merge(more);
        }
        Some(permits)
    }

    /// Resolves once claiming should end: a shutdown, or a drained queue.
    async fn stopped(&self) {
        tokio::select! {
            _ = self.shutdown.stop.cancelled() => {}
            _ = self.drained.cancelled() => {}
        }
    }

    /// One claim statement for `queues`, for as many tasks as `permits`
    /// (or, for a capped queue, its `reservation`) has room for; the tasks
    /// claimed are started. How many.
    async fn claim_from(
        &self,
        queues: &[String],
        serving: &[String],
        permits: &mut OwnedSemaphorePermit,
        reservation: Option<Reservation>,
    ) -> Result<usize, StoreError> {
        let limit = reservation
            .as_ref()
            .map_or(permits.num_permits(), Reservation::places);
        let request = ClaimRequest {
            worker_id: &self.config.worker_id,
            limit,
            scope: Scope {
                queues,
                plugins: Some(serving),
            },
            default_timeout: self.config.default_timeout,
        };
        let claimed = self.store.claim(&request).await?;
        let got = claimed.len();
        self.start(claimed, permits, reservation);
        Ok(got)
    }

    /// Claim each capped queue for what both its cap and `permits` have
    /// room for, then the uncapped queues for what `permits` has left. A
    /// failed statement ends the round; what earlier ones claimed is
    /// started all the same.
    async fn claim_capped(
        &self,
        caps: &Arc<QueueCaps>,
        serving: &[String],
        permits: &mut OwnedSemaphorePermit,
    ) -> Result<usize, StoreError> {
        let mut got = 0;
        for index in 0..caps.capped_count() {
            let wanted = permits.num_permits();
            if wanted == 0 {
                return Ok(got);
            }
            let reservation = caps.reserve(index, wanted);
            if reservation.places() == 0 {
                continue;
            }
            got += self
                .claim_from(caps.name(index), serving, permits, Some(reservation))
                .await?;
        }
        if !caps.uncapped().is_empty() && permits.num_permits() > 0 {
            got += self
                .claim_from(caps.uncapped(), serving, permits, None)
                .await?;
        }
        Ok(got)
    }

    /// Queue the claimed tasks for the starter, in claim order, each holding
    /// one of `permits` (its place among the held tasks) and, in a capped
    /// queue, one of `reservation`'s places.
    fn start(
        &self,
        claimed: Vec<ClaimedTask>,
        permits: &mut OwnedSemaphorePermit,
        mut reservation: Option<Reservation>,
    ) {
        self.claimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        let mut tokens = Vec::with_capacity(claimed.len());
        let held: Vec<Held> = claimed
            .into_iter()
            .map(|task| {
                let token = self.shutdown.interrupt.child_token();
                let queue_slot = reservation.as_mut().map(Reservation::take_one);
                tokens.push((task.id, token.clone(), queue_slot));
                Held {
                    task,
                    token,
                    place: permits.split(1).expect("one permit per claimed task"),
                }
            })
            .collect();
        self.in_flight.insert_many(tokens);
        self.queue.push(held);
    }

    async fn has_pending_or_unknown(&self) -> bool {
        let serving = self.executor.plugins.serving_names();
        let scope = Scope {
            queues: &self.queue_names,
            plugins: Some(&serving),
        };
        match self.store.has_pending(&scope).await {
            Ok(pending) => {
                self.answered();
                pending
            }
            Err(err) => {
                tracing::warn!("cannot tell whether tasks remain: {err}");
                // Out of patience: the drain ends (reported as unconfirmed).
                !self.out_of_patience(&err)
            }
        }
    }

    fn answered(&self) {
        *self
            .unanswered_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Note an unanswered question; true (and the drain ended) when this
    /// worker is draining, runs nothing, and the database has not answered
    /// for `drain_patience`.
    fn out_of_patience(&self, err: &crate::store::StoreError) -> bool {
        let since = *self
            .unanswered_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        let idle = self.slots.idle() && self.in_flight.ids().is_empty();
        if !(self.config.drain && idle && since.elapsed() >= self.config.drain_patience) {
            return false;
        }
        tracing::error!(
            "draining: the database has not answered for {} and nothing runs here; stopping",
            humantime::format_duration(self.config.drain_patience)
        );
        *self.gave_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.to_string());
        self.drained.cancel();
        true
    }
}

fn first_claim_cap(max_claim: usize) -> usize {
    FIRST_CLAIM.min(max_claim).max(1)
}

/// Slow start: a full claim doubles the next one's cap; a short one caps the
/// next at about what it got. A queue that ran low ends its burst with an
/// empty claim, so the next burst starts small again and its first tasks
/// wait for a short statement rather than a long one; a queue whose limits
/// leave room for only so many at a time keeps claiming that many at once,
/// instead of starting over small after every claim.
fn next_claim_cap(cap: usize, asked: usize, got: usize, max_claim: usize) -> usize {
    let first = first_claim_cap(max_claim);
    if got == asked {
        (cap * 2).min(max_claim).max(first)
    } else {
        got.next_power_of_two().clamp(first, max_claim.max(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_grow_while_full_and_restart_small_after_an_empty_one() {
        let mut cap = first_claim_cap(512);
        let mut caps = vec![cap];
        for _ in 0..5 {
            cap = next_claim_cap(cap, cap, cap, 512);
            caps.push(cap);
        }
        assert_eq!(caps, [64, 128, 256, 512, 512, 512]);
        assert_eq!(next_claim_cap(512, 512, 0, 512), 64, "the queue ran dry");
        assert_eq!(next_claim_cap(512, 512, 3, 512), 64, "the queue ran low");
        // Limits left room for 177: the next claim asks for about as many.
        assert_eq!(next_claim_cap(512, 512, 177, 512), 256);
        assert_eq!(first_claim_cap(10), 10);
        assert_eq!(next_claim_cap(10, 10, 10, 10), 10);
    }
}

//! The worker's slots, and how far it claims ahead of them. A worker runs at
//! most `concurrency` tasks at once, and may hold a few more claimed tasks
//! waiting for a free slot, so that one claim statement serves many tasks
//! even at a small concurrency (GenStage's buffer: a consumer's demand is
//! its buffer's room, not the events it handles at once).
//!
//! What it holds ahead is bounded twice: by count (`claim_ahead`), and by
//! time: no more than the worker, at the pace it has been finishing tasks,
//! expects to start within `horizon`. A worker running long tasks therefore
//! holds next to nothing ahead, and another worker that is idle gets the
//! work; one running tasks of microseconds holds a full claim's worth.
//!
//! Held tasks start in the order they were claimed (see the starter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

/// Claimed tasks a worker may hold beyond those it runs: two full claims.
/// A busy worker claims once half of what it may hold is free, so each
/// claim is a full one and a full one's worth still runs while it is in
/// flight. At 512, a claim took about 270 rows at the default concurrency,
/// and 60,000-task drains ran 17% slower (median of 4 alternating runs:
/// 23.1k against 27.1k tasks/s; 2048 gave 27.5k).
pub const DEFAULT_CLAIM_AHEAD: usize = 2 * super::DEFAULT_MAX_CLAIM;
/// A worker holds no more ahead than it expects to start within this long.
pub const DEFAULT_CLAIM_AHEAD_HORIZON: Duration = Duration::from_millis(50);
/// The pace is measured over at least this long, so a burst of a few
/// finishes in a microsecond does not read as millions a second.
const PACE_WINDOW: Duration = Duration::from_millis(10);

pub(super) struct Slots {
    /// One permit per task running.
    run: Arc<Semaphore>,
    /// One permit per task held: running, or claimed and waiting to run.
    held: Arc<Semaphore>,
    capacity: usize,
    ahead: usize,
    horizon: Duration,
    finished: AtomicU64,
    pace: Mutex<Pace>,
    /// Told when a waiting task starts or a running one ends.
    progress: Notify,
}

/// Tasks finished per second, smoothed.
struct Pace {
    at: Instant,
    finished: u64,
    per_second: f64,
}

impl Slots {
    pub(super) fn new(concurrency: usize, ahead: usize, horizon: Duration) -> Self {
        Slots {
            run: Arc::new(Semaphore::new(concurrency)),
            held: Arc::new(Semaphore::new(concurrency + ahead)),
            capacity: concurrency + ahead,
            ahead,
            horizon,
            finished: AtomicU64::new(0),
            pace: Mutex::new(Pace {
                at: Instant::now(),
                finished: 0,
                per_second: 0.0,
            }),
            progress: Notify::new(),
        }
    }

    /// The semaphore of held tasks, from which the producer takes demand.
    pub(super) fn held(&self) -> &Arc<Semaphore> {
        &self.held
    }

    /// True while the worker holds no task at all.
    pub(super) fn idle(&self) -> bool {
        self.held.available_permits() == self.capacity
    }

    /// How many more tasks a claim may take now: the free slots, plus what
    /// the pace allows ahead of them, less the `waiting` ones already held.
    pub(super) fn room(&self, waiting: usize) -> usize {
        let ahead = (self.per_second() * self.horizon.as_secs_f64()) as usize;
        (self.run.available_permits() + ahead.min(self.ahead)).saturating_sub(waiting)
    }

    /// Resolves when a waiting task starts or a running one ends.
    pub(super) async fn progressed(&self) {
        self.progress.notified().await;
    }

    /// The semaphore of running tasks, from which held tasks take a slot.
    pub(super) fn run(&self) -> &Arc<Semaphore> {
        &self.run
    }

    /// A held task left the wait: it started, or it ended without running.
    pub(super) fn left_waiting(&self) {
        self.progress.notify_one();
    }

    /// A held task is done with its slot (run or not).
    pub(super) fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_one();
    }

    fn per_second(&self) -> f64 {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = pace.at.elapsed();
        if elapsed >= PACE_WINDOW {
            let finished = self.finished.load(Ordering::Relaxed);
            let recent = (finished - pace.finished) as f64 / elapsed.as_secs_f64();
            // Half the weight on the last window: a worker whose tasks turn
            // slow stops claiming ahead within a few windows.
            pace.per_second = (pace.per_second + recent) / 2.0;
            pace.at = Instant::now();
            pace.finished = finished;
        }
        pace.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_ahead_only_what_its_pace_starts_within_the_horizon() {
        let slots = Slots::new(4, 100, Duration::from_millis(50));
        assert_eq!(slots.room(0), 4, "no pace yet: the free slots only");
        assert_eq!(slots.room(4), 0);
        // 1,000 finishes in a window: 1,000 × 50 ms / window ≥ the cap.
        tokio::time::sleep(PACE_WINDOW).await;
        for _ in 0..1_000 {
            slots.finished();
        }
        let room = slots.room(4);
        assert!(room > 0 && room <= 100, "{room}");
        // Nothing finishes for a while: the pace decays, and so does the room.
        for _ in 0..20 {
            tokio::time::sleep(PACE_WINDOW).await;
            slots.room(4);
        }
        assert_eq!(slots.room(4), 0);
    }
}

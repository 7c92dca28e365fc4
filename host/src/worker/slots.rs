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
//! The pace is tasks finished per second of the time the worker had tasks
//! in hand, not of the clock: a worker starting on a backlog spends most of
//! its first milliseconds waiting for its first claims, and measured by the
//! clock it read as a slow one (its first full claim came 26-68 ms after
//! the first claim, against 8-21 ms by the time in hand).
//!
//! Held tasks start in the order they were claimed (see the starter).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

/// Claimed tasks a worker may hold beyond those it runs: eight full claims.
/// What it holds ahead is bounded by its pace (the horizon); this count is
/// a ceiling, for the memory held tasks and their outcomes take. A busy
/// worker claims once a full claim's room is free, and the tasks it holds
/// must last out the next claim's round trip: at 80,000 tasks a second a
/// claim of 512 took about 5 ms, 400 tasks' worth. At two full claims
/// (1024) the slots ran dry whenever a claim came late, and 100,000-task
/// drains ran at 75k tasks/s against 84k at 4096 (three alternating runs
/// each; 2048 gave 80k, 3072 83k).
pub const DEFAULT_CLAIM_AHEAD: usize = 8 * super::DEFAULT_MAX_CLAIM;
/// A worker holds no more ahead than it expects to start within this long.
pub const DEFAULT_CLAIM_AHEAD_HORIZON: Duration = Duration::from_millis(50);
/// The pace is measured over windows of at least this long, so that one
/// reading is of many finishes. A burst finished within microseconds in
/// hand reads as very fast; `claim_ahead` caps what that lets it hold.
const PACE_WINDOW: Duration = Duration::from_millis(10);
/// A worker with no pace yet takes its first reading as soon as this many
/// tasks finished, instead of after a whole window: until then it claims
/// only for its free slots, and a worker starting on a backlog of short
/// tasks spent its first 10-12 ms on claims of a couple of dozen rows.
const FIRST_PACE_FINISHES: u64 = 64;

pub(super) struct Slots {
    /// One permit per task running.
    run: Arc<Semaphore>,
    /// One permit per task held: running, or claimed and waiting to run.
    held: Arc<Semaphore>,
    capacity: usize,
    ahead: usize,
    horizon: Duration,
    tally: Mutex<Tally>,
    pace: Mutex<Pace>,
    /// Told when a waiting task starts, a running one ends, or a slot
    /// comes free without either.
    progress: Notify,
}

/// Tasks finished, and how long the worker has had a task in hand: one
/// that left the wait (started, or ended unrun) and has not finished. The
/// clock is read only when the first comes into hand and when the last one
/// leaves.
struct Tally {
    finished: u64,
    in_hand: usize,
    since: Instant,
    busy: Duration,
}

/// Tasks finished per second of busy time, smoothed.
struct Pace {
    at: Instant,
    finished: u64,
    busy: Duration,
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
            tally: Mutex::new(Tally {
                finished: 0,
                in_hand: 0,
                since: Instant::now(),
                busy: Duration::ZERO,
            }),
            pace: Mutex::new(Pace::new(Instant::now())),
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

    /// Resolves when a waiting task starts, a running one ends, or a slot
    /// comes free.
    pub(super) async fn progressed(&self) {
        self.progress.notified().await;
    }

    /// The semaphore of running tasks, from which held tasks take a slot.
    pub(super) fn run(&self) -> &Arc<Semaphore> {
        &self.run
    }

    /// A held task left the wait: it started, or it ended without running.
    pub(super) fn left_waiting(&self) {
        {
            let mut tally = self.lock_tally();
            if tally.in_hand == 0 {
                tally.since = Instant::now();
            }
            tally.in_hand += 1;
        }
        self.progress.notify_one();
    }

    /// A slot came free without a task ending (taken for a task that
    /// another took first).
    pub(super) fn freed(&self) {
        self.progress.notify_one();
    }

    /// A held task is done with its slot (run or not).
    pub(super) fn finished(&self) {
        {
            let mut tally = self.lock_tally();
            tally.finished += 1;
            if tally.in_hand == 1 {
                let stretch = tally.since.elapsed();
                tally.busy += stretch;
            }
            tally.in_hand = tally.in_hand.saturating_sub(1);
        }
        self.progress.notify_one();
    }

    fn lock_tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn per_second(&self) -> f64 {
        let now = Instant::now();
        let (finished, busy) = {
            let tally = self.lock_tally();
            // The stretch in hand so far counts too.
            let ongoing = if tally.in_hand > 0 {
                now.saturating_duration_since(tally.since)
            } else {
                Duration::ZERO
            };
            (tally.finished, tally.busy + ongoing)
        };
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        pace.at(now, finished, busy)
    }
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace {
            at: now,
            finished: 0,
            busy: Duration::ZERO,
            per_second: 0.0,
        }
    }

    /// The pace at `now`, with `finished` tasks finished and `busy` time
    /// with tasks in hand since the start. A window without busy time (an
    /// idle worker) reads as no pace: what the worker claims after a pause
    /// starts small again.
    fn at(&mut self, now: Instant, finished: u64, busy: Duration) -> f64 {
        let first_reading =
            self.per_second == 0.0 && finished - self.finished >= FIRST_PACE_FINISHES;
        if first_reading || now.saturating_duration_since(self.at) >= PACE_WINDOW {
            let busy_in_window = busy.saturating_sub(self.busy);
            let recent = if busy_in_window.is_zero() {
                0.0
            } else {
                (finished - self.finished) as f64 / busy_in_window.as_secs_f64()
            };
            // Half the weight on the last window: a worker whose tasks turn
            // slow stops claiming ahead within a few windows. The first
            // window that saw tasks finish is taken as it is: averaged with
            // the zero before it, a worker starting on a backlog claimed
            // half as far ahead for a window more.
            self.per_second = if self.per_second > 0.0 {
                (self.per_second + recent) / 2.0
            } else {
                recent
            };
            self.at = now;
            self.finished = finished;
            self.busy = busy;
        }
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_of_the_time_with_tasks_in_hand() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        let mut pace = Pace::new(start);
        assert_eq!(pace.at(start + PACE_WINDOW, 0, ms(0)), 0.0, "nothing yet");
        // 100 finished in the next window, with tasks in hand for 2 ms of
        // it: 50,000 a second, taken as it is for a first pace.
        let first = pace.at(start + 2 * PACE_WINDOW, 100, ms(2));
        assert!(close(first, 50_000.0), "{first}");
        // 100 more in 5 ms: 20,000 a second, averaged with the pace before.
        let second = pace.at(start + 3 * PACE_WINDOW, 200, ms(7));
        assert!(close(second, 35_000.0), "{second}");
        // Within a window the pace holds.
        let within = pace.at(start + 3 * PACE_WINDOW + PACE_WINDOW / 2, 300, ms(8));
        assert!(close(within, 35_000.0), "{within}");
        // A window with nothing in hand reads as no pace.
        let idle = pace.at(start + 5 * PACE_WINDOW, 200, ms(7));
        assert!(close(idle, 17_500.0), "{idle}");
    }

    #[test]
    fn a_first_pace_is_read_once_enough_tasks_finished() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut pace = Pace::new(start);
        // Within the first window: too few finishes to read a pace from.
        let early = start + PACE_WINDOW / 10;
        assert_eq!(pace.at(early, FIRST_PACE_FINISHES - 1, ms(1)), 0.0);
        // As many as a first reading needs, 1 ms in hand: read at once,
        // not a window later.
        let first = pace.at(early, FIRST_PACE_FINISHES, ms(1));
        assert_eq!(first, FIRST_PACE_FINISHES as f64 * 1000.0);
        // Once a pace is known, readings wait for whole windows again.
        let later = pace.at(early + PACE_WINDOW / 10, 10 * FIRST_PACE_FINISHES, ms(2));
        assert_eq!(later, first, "a window is not over yet");
    }

    #[tokio::test]
    async fn a_worker_starting_on_a_backlog_claims_ahead_before_its_first_window_ends() {
        let slots = Slots::new(4, 1_000, Duration::from_secs(1));
        assert_eq!(slots.room(4), 0, "no pace yet: the free slots only");
        for _ in 0..FIRST_PACE_FINISHES {
            slots.left_waiting();
            slots.finished();
        }
        // Far less than a window after the start, 64 tasks in far less than
        // 64 ms in hand: over 1,000 a second, a full 1,000 within 1 s.
        assert_eq!(slots.room(4), 1_000);
    }

    #[tokio::test]
    async fn a_worker_that_waited_for_work_does_not_read_as_slow() {
        let slots = Slots::new(4, 1_000, Duration::from_secs(1));
        tokio::time::sleep(PACE_WINDOW).await;
        assert_eq!(slots.room(4), 0, "no pace yet: the free slots only");
        // 100 tasks run back to back, then the worker waits 200 ms for more.
        for _ in 0..100 {
            slots.left_waiting();
        }
        for _ in 0..100 {
            slots.finished();
        }
        tokio::time::sleep(20 * PACE_WINDOW).await;
        // 100 in far less than 100 ms in hand: over 1,000 a second, a full
        // 1,000 within the 1 s horizon. By the clock, 100 in 200 ms: 500.
        assert_eq!(slots.room(4), 1_000);
    }

    #[tokio::test]
    async fn holds_ahead_only_what_its_pace_starts_within_the_horizon() {
        let slots = Slots::new(4, 100, Duration::from_millis(50));
        assert_eq!(slots.room(0), 4, "no pace yet: the free slots only");
        assert_eq!(slots.room(4), 0);
        // 1,000 finishes in a window: 1,000 × 50 ms / window ≥ the cap.
        tokio::time::sleep(PACE_WINDOW).await;
        for _ in 0..1_000 {
            slots.left_waiting();
            slots.finished();
        }
        let room = slots.room(4);
        assert!(room > 0 && room <= 100, "{room}");
        // Nothing finishes for a while: the pace halves every window, and the
        // room with it. How fast 1,000 finishes in hand read depends on the
        // machine (the busier the loop above, the faster), so the room may
        // take a few more windows than on a slower one to reach nothing; a
        // pace of a finish a nanosecond is gone within 40.
        let mut windows = 0;
        let mut last = room;
        while last > 0 {
            assert!(windows < 40, "still {last} after {windows} idle windows");
            tokio::time::sleep(PACE_WINDOW).await;
            let now = slots.room(4);
            assert!(now <= last, "the room grew while idle: {last} to {now}");
            last = now;
            windows += 1;
        }
    }
}

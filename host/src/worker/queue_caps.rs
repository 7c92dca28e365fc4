//! Per-worker queue caps (`taskbox worker --queue email=5`): how many tasks
//! of each capped queue this worker holds, from the claim until the
//! completer has written the task's outcome, so it never holds more than
//! the cap whether they run or wait for a slot. A task's place is given
//! back when it leaves [`super::InFlight`], the one point every way out
//! passes (success, failure, cancel, release unrun), and that wakes the
//! producer so it claims the queue again.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A queue a worker serves, with the most of its tasks the worker may hold
/// at once (`None`: only `--concurrency` bounds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedQueue {
    pub name: String,
    pub max_held: Option<NonZeroUsize>,
}

impl ServedQueue {
    /// Served without a cap of its own.
    pub fn uncapped(name: impl Into<String>) -> Self {
        ServedQueue {
            name: name.into(),
            max_held: None,
        }
    }
}

/// The served queues split into capped ones, each with its count of held
/// tasks, and the rest.
pub(super) struct QueueCaps {
    capped: Vec<CappedQueue>,
    uncapped: Vec<String>,
    /// The producer's wake: told when a place is given back.
    wake: Arc<Notify>,
}

struct CappedQueue {
    name: String,
    max_held: usize,
    held: AtomicUsize,
}

impl QueueCaps {
    /// `None` when no served queue is capped: the producer then claims as
    /// it always did, at no cost.
    pub(super) fn new(served: &[ServedQueue], wake: Arc<Notify>) -> Option<Arc<Self>> {
        let capped: Vec<CappedQueue> = served
            .iter()
            .filter_map(|queue| {
                Some(CappedQueue {
                    name: queue.name.clone(),
                    max_held: queue.max_held?.get(),
                    held: AtomicUsize::new(0),
                })
            })
            .collect();
        if capped.is_empty() {
            return None;
        }
        let uncapped = served
            .iter()
            .filter(|queue| queue.max_held.is_none())
            .map(|queue| queue.name.clone())
            .collect();
        Some(Arc::new(QueueCaps {
            capped,
            uncapped,
            wake,
        }))
    }

    /// How many capped queues there are; [`QueueCaps::name`] and
    /// [`QueueCaps::reserve`] take an index below this.
    pub(super) fn capped_count(&self) -> usize {
        self.capped.len()
    }

    /// The capped queue at `index`, as a claim's one-queue scope.
    pub(super) fn name(&self, index: usize) -> &[String] {
        std::slice::from_ref(&self.capped[index].name)
    }

    /// The served queues without a cap; empty when every one is capped.
    pub(super) fn uncapped(&self) -> &[String] {
        &self.uncapped
    }

    /// Take up to `wanted` places in the capped queue at `index`: as many
    /// as its cap has room for, perhaps none.
    pub(super) fn reserve(self: &Arc<Self>, index: usize, wanted: usize) -> Reservation {
        let queue = &self.capped[index];
        let mut taken = 0;
        // The closure's last run decides: on a full queue it takes none
        // and the count is left alone.
        let _ = queue
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                taken = wanted.min(queue.max_held.saturating_sub(held));
                (taken > 0).then_some(held + taken)
            });
        Reservation {
            caps: self.clone(),
            index,
            left: taken,
        }
    }

    /// Tasks of the capped queue at `index` held now.
    #[cfg(test)]
    fn held(&self, index: usize) -> usize {
        self.capped[index].held.load(Ordering::Acquire)
    }

    fn give_back(&self, index: usize, count: usize) {
        self.capped[index].held.fetch_sub(count, Ordering::AcqRel);
    }
}

/// Places taken for one claim. Those the claim did not fill go back when
/// this is dropped, quietly: the producer that took them is the one that
/// would be woken.
pub(super) struct Reservation {
    caps: Arc<QueueCaps>,
    index: usize,
    left: usize,
}

impl Reservation {
    /// Places not yet handed to a task.
    pub(super) fn places(&self) -> usize {
        self.left
    }

    /// One place, for a claimed task to hold until its outcome is written.
    pub(super) fn take_one(&mut self) -> QueueSlot {
        assert!(self.left > 0, "a place for every claimed task");
        self.left -= 1;
        QueueSlot {
            caps: self.caps.clone(),
            index: self.index,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.left > 0 {
            self.caps.give_back(self.index, self.left);
        }
    }
}

/// One held task's place in its capped queue. Dropping it gives the place
/// back and wakes the producer, which may be idle only because the queue
/// was full.
pub(crate) struct QueueSlot {
    caps: Arc<QueueCaps>,
    index: usize,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.caps.give_back(self.index, 1);
        self.caps.wake.notify_one();
    }
}

impl std::fmt::Debug for QueueSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueueSlot")
            .field(&self.caps.capped[self.index].name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(name: &str, max_held: usize) -> ServedQueue {
        ServedQueue {
            name: name.to_owned(),
            max_held: NonZeroUsize::new(max_held),
        }
    }

    fn caps(served: &[ServedQueue]) -> (Arc<QueueCaps>, Arc<Notify>) {
        let wake = Arc::new(Notify::new());
        let caps = QueueCaps::new(served, wake.clone()).expect("a capped queue");
        (caps, wake)
    }

    #[test]
    fn no_caps_when_no_queue_is_capped() {
        let wake = Arc::new(Notify::new());
        assert!(QueueCaps::new(&[], wake.clone()).is_none());
        assert!(QueueCaps::new(&[ServedQueue::uncapped("default")], wake).is_none());
    }

    #[test]
    fn splits_capped_from_uncapped_queues() {
        let (caps, _) = caps(&[
            capped("email", 5),
            ServedQueue::uncapped("default"),
            capped("sms", 1),
        ]);
        assert_eq!(caps.capped_count(), 2);
        assert_eq!(caps.name(0), ["email"]);
        assert_eq!(caps.name(1), ["sms"]);
        assert_eq!(caps.uncapped(), ["default"]);
    }

    #[test]
    fn reserves_no_more_than_the_cap_has_room_for() {
        let (caps, _) = caps(&[capped("email", 3)]);
        let first = caps.reserve(0, 2);
        assert_eq!(first.places(), 2);
        let second = caps.reserve(0, 5);
        assert_eq!(second.places(), 1, "only the room left");
        let third = caps.reserve(0, 5);
        assert_eq!(third.places(), 0, "a full queue has no room");
        assert_eq!(caps.held(0), 3);
        drop((first, second, third));
        assert_eq!(caps.held(0), 0);
    }

    #[test]
    fn unfilled_places_go_back_when_the_reservation_drops() {
        let (caps, _) = caps(&[capped("email", 4)]);
        let mut reservation = caps.reserve(0, 4);
        let slots: Vec<QueueSlot> = (0..3).map(|_| reservation.take_one()).collect();
        drop(reservation);
        assert_eq!(caps.held(0), 3, "the claim filled three of four");
        assert_eq!(caps.reserve(0, 10).places(), 1);
        drop(slots);
    }

    #[tokio::test]
    async fn a_place_given_back_makes_room_and_wakes_the_producer() {
        let (caps, wake) = caps(&[capped("email", 1)]);
        let slot = caps.reserve(0, 1).take_one();
        assert_eq!(caps.reserve(0, 1).places(), 0);
        drop(slot);
        assert_eq!(caps.held(0), 0);
        // The wake was stored for the producer, which was not waiting yet.
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
            .await
            .expect("the producer is woken");
        assert_eq!(caps.reserve(0, 1).places(), 1);
    }

    #[test]
    fn each_capped_queue_counts_its_own_tasks() {
        let (caps, _) = caps(&[capped("email", 1), capped("sms", 2)]);
        let email = caps.reserve(0, 5);
        let sms = caps.reserve(1, 5);
        assert_eq!((email.places(), sms.places()), (1, 2));
    }
}

//! The Postgres store's leases, kept inside it. A claim records its batch
//! as one lease row (so the rescuer finds a dead worker's tasks through a
//! few leases instead of every running row); this book counts, per lease,
//! the tasks whose outcome is not written yet, and the write of the last
//! one ends the lease in the same statement. A write that fails puts its
//! tasks back in the book, so a lease whose row was refused (and stays
//! `running`) outlives it for the rescuer, which drops a lease once none of
//! its tasks runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One claim's lease and how many of its tasks are not written yet.
#[derive(Debug)]
struct Lease {
    id: i64,
    outstanding: AtomicUsize,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    by_task: Mutex<HashMap<i64, Arc<Lease>>>,
}

/// The tasks a write takes out of the book, and the leases it ends.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    tasks: Vec<(i64, Arc<Lease>)>,
    pub ends: Vec<i64>,
}

impl LeaseBook {
    /// Lease `id` covers `tasks`, just claimed.
    pub(crate) fn opened(&self, id: i64, tasks: &[i64]) {
        let lease = Arc::new(Lease {
            id,
            outstanding: AtomicUsize::new(tasks.len()),
        });
        let mut book = self.by_task.lock().unwrap_or_else(|e| e.into_inner());
        for &task in tasks {
            book.insert(task, lease.clone());
        }
    }

    /// Take the outcomes of `tasks` out of the book: the leases whose last
    /// task among them is in `ends`. Every other task of those leases was
    /// written before, since one completer writes a worker's outcomes in
    /// order.
    pub(crate) fn take(&self, tasks: impl Iterator<Item = i64>) -> Taken {
        let mut book = self.by_task.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Taken::default();
        for task in tasks {
            let Some(lease) = book.remove(&task) else {
                continue;
            };
            if lease.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                taken.ends.push(lease.id);
            }
            taken.tasks.push((task, lease));
        }
        taken
    }

    /// Put back what a failed write took.
    pub(crate) fn restore(&self, taken: Taken) {
        let mut book = self.by_task.lock().unwrap_or_else(|e| e.into_inner());
        for (task, lease) in taken.tasks {
            lease.outstanding.fetch_add(1, Ordering::AcqRel);
            book.insert(task, lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_with_its_last_written_task_and_not_after_a_failed_write() {
        let book = LeaseBook::default();
        book.opened(7, &[1, 2, 3]);
        book.opened(8, &[4]);
        let first = book.take([1, 4].into_iter());
        assert_eq!(first.ends, [8]);
        // A failed write of 2 and 3 ends nothing and puts them back.
        let failed = book.take([2, 3].into_iter());
        assert_eq!(failed.ends, [7]);
        book.restore(failed);
        assert!(book.take([3].into_iter()).ends.is_empty(), "2 is still out");
        assert_eq!(book.take([2].into_iter()).ends, [7]);
        assert!(
            book.take([5].into_iter()).ends.is_empty(),
            "a task of no lease"
        );
    }
}

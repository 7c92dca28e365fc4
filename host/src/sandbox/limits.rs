//! What one task may take, counted per task rather than per piece: every
//! linear memory and table of a task's instance draws on one byte budget,
//! and the number of memories, tables and core instances is capped, so a
//! component built from many small pieces holds no more than one built from
//! a single module. The same numbers size the pooling allocator's per
//! component limits, so no task can take another task's pool slots.

/// Linear memories one task may hold. A Rust plugin has one; two leaves
/// room for a component composed of two such modules.
pub const MAX_MEMORIES_PER_TASK: u32 = 2;
/// Tables one task may hold (a Rust plugin has two: its own and the shim's).
pub const MAX_TABLES_PER_TASK: u32 = 4;
/// Core instances one task may hold (a Rust plugin has three or four: its
/// module, and the shims that lower WASI imports).
pub const MAX_CORE_INSTANCES_PER_TASK: u32 = 8;
/// Bytes a table element takes in the host (wasmtime stores a pointer).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// What the limiter refused, so the task's error names the limit rather
/// than the trap that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Memories and tables together would have taken this many bytes.
    Budget { desired_total: usize },
}

/// A task's [`wasmtime::ResourceLimiter`]: one byte budget for all its
/// memories and tables, and caps on how many of each it may create.
#[derive(Debug)]
pub(crate) struct TaskLimiter {
    budget: usize,
    used: usize,
    /// The growth approved last, taken back if wasmtime then fails it.
    pending: usize,
    pub(crate) refused: Option<Refusal>,
}

impl TaskLimiter {
    pub(crate) fn new(budget: usize) -> Self {
        TaskLimiter {
            budget,
            used: 0,
            pending: 0,
            refused: None,
        }
    }

    pub(crate) fn budget(&self) -> usize {
        self.budget
    }

    /// Approve growing one piece from `current` to `desired` bytes when the
    /// task's total stays within the budget.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let added = desired.saturating_sub(current);
        let total = self.used.saturating_add(added);
        if total > self.budget {
            self.refused = Some(Refusal::Budget {
                desired_total: total,
            });
            self.pending = 0;
            return false;
        }
        self.used = total;
        self.pending = added;
        true
    }

    fn grow_failed(&mut self) {
        self.used -= std::mem::take(&mut self.pending);
    }
}

impl wasmtime::ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES_PER_TASK as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_TASK as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_TASK as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limiter = TaskLimiter::new(64 * MIB);
        assert!(limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert_eq!(
            limiter.refused,
            Some(Refusal::Budget {
                desired_total: 80 * MIB
            })
        );
        // 24 MiB are left: a table of 3M pointers fits, 4M do not.
        assert!(!limiter.table_growing(0, 4 * MIB, None).unwrap());
        assert!(limiter.table_growing(0, 3 * MIB, None).unwrap());
    }

    #[test]
    fn a_failed_growth_gives_its_bytes_back() {
        let mut limiter = TaskLimiter::new(64 * MIB);
        assert!(limiter.memory_growing(0, 60 * MIB, Some(32 * MIB)).unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("past the maximum"))
            .unwrap();
        assert!(limiter.memory_growing(0, 60 * MIB, None).unwrap());
    }

    #[test]
    fn growth_counts_only_what_is_added() {
        let mut limiter = TaskLimiter::new(64 * MIB);
        assert!(limiter.memory_growing(0, 32 * MIB, None).unwrap());
        assert!(limiter.memory_growing(32 * MIB, 64 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(64 * MIB, 65 * MIB, None).unwrap());
    }
}

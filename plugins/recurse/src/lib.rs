//! `recurse` (hostile): recursion without a reachable base case, to exhaust
//! the stack. Each call does work after the recursive call returns (it is
//! not a tail call) and `black_box` hides the values, so the optimizer can
//! turn it into neither a loop nor a constant.

use std::hint::black_box;

use taskbox_sdk::Task;

#[inline(never)]
fn descend(depth: u64) -> u64 {
    // Never true, but the compiler cannot know: the recursion stays real.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = descend(black_box(depth + 1));
    black_box(below).wrapping_add(depth)
}

struct Recurse;

impl Task for Recurse {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        black_box(descend(0));
        Ok(())
    }
}

taskbox_sdk::export_task!(Recurse);

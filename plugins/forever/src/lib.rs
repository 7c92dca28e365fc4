//! `forever` (hostile): spins without end; only a preemptive deadline stops it.

use std::hint::black_box;

use taskbox_sdk::Task;

struct Forever;

impl Task for Forever {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        let mut n: u64 = 0;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
}

taskbox_sdk::export_task!(Forever);

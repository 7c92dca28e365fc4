//! `panic` (hostile): panics, which aborts the guest with a trap.

use taskbox_sdk::Task;

struct Panic;

impl Task for Panic {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        panic!("panic plugin: deliberate panic")
    }
}

taskbox_sdk::export_task!(Panic);

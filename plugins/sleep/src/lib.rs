//! `sleep`: waits the given number of milliseconds on WASI's clock.
//! It also logs one debug line, so it exercises the host's `log` import.

use std::time::Duration;

use taskbox_sdk::Task;

struct Sleep;

impl Task for Sleep {
    type Args = u64;
    type Output = ();

    fn run(millis: u64) -> Result<(), String> {
        taskbox_sdk::log::debug(&format!("sleeping for {millis} ms"));
        std::thread::sleep(Duration::from_millis(millis));
        Ok(())
    }
}

taskbox_sdk::export_task!(Sleep);

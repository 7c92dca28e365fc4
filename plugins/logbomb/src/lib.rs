//! `logbomb` (hostile): writes `lines` log lines of `text` through the host's
//! log import, as fast as it can. With a newline in `text` it also tries to
//! forge lines that read like the worker's own.

use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task};

#[derive(Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Flood {
    lines: u64,
    text: String,
}

struct Logbomb;

impl Task for Logbomb {
    type Args = Flood;
    type Output = ();

    fn run(Flood { lines, text }: Flood) -> Result<(), String> {
        for _ in 0..lines {
            taskbox_sdk::log::info(&text);
        }
        Ok(())
    }
}

taskbox_sdk::export_task!(Logbomb);

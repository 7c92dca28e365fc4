//! `add`: returns `a + b`; a no-op-sized task for benchmarks.

use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task};

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Pair {
    pub a: i64,
    pub b: i64,
}

struct Add;

impl Task for Add {
    type Args = Pair;
    type Output = i64;

    fn run(Pair { a, b }: Pair) -> Result<i64, String> {
        a.checked_add(b)
            .ok_or_else(|| format!("{a} + {b} overflows a 64-bit integer"))
    }
}

taskbox_sdk::export_task!(Add);

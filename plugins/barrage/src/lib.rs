//! `barrage` (hostile): sends the same GET `count` times in one attempt, to
//! prove the host stops it at its grant's `max_requests`. Returns how many
//! were answered; fails at the first refusal, saying which one it was.

use taskbox_sdk::http::{Request, send};
use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task};

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Volley {
    pub url: String,
    pub count: u32,
}

struct Barrage;

impl Task for Barrage {
    type Args = Volley;
    type Output = u32;

    fn run(volley: Volley) -> Result<u32, String> {
        for n in 1..=volley.count {
            let request = Request::get(volley.url.as_str())
                .body(())
                .map_err(|err| format!("bad request: {err}"))?;
            send(request, 1024)
                .map_err(|err| format!("request {n} of {} failed: {err}", volley.count))?;
        }
        Ok(volley.count)
    }
}

taskbox_sdk::export_task!(Barrage);

//! `settings`: returns the config value of the key it is given (`None`
//! when the key is not configured), as granted in its grants file. A
//! secret comes back as its placeholder, never its value.

use taskbox_sdk::{Task, config};

struct Settings;

impl Task for Settings {
    type Args = String;
    type Output = Option<String>;

    fn run(key: String) -> Result<Option<String>, String> {
        config::get(&key)
    }
}

taskbox_sdk::export_task!(Settings);

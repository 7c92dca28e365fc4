//! Config values the worker grants a plugin, read through
//! `wasi:config/store@0.2.0-rc.1`.
//!
//! Values come from the `[config]` table of the plugin's grants file. A
//! secret read this way yields a placeholder, never the value: the worker
//! swaps the real value in only in the headers of requests sent to that
//! secret's hosts, so a plugin can use a secret but cannot see or leak it.
//!
//! Only a plugin that calls into this module imports the store.

mod bindings {
    // Apart from the `task` world so that the import is only linked into
    // plugins that use it.
    wit_bindgen::generate!({
        world: "wasi:config/imports",
        path: "../../wit/deps/config",
    });
}

use bindings::wasi::config::store;

/// The value configured for `key`, or `None` when it is not configured.
pub fn get(key: &str) -> Result<Option<String>, String> {
    store::get(key).map_err(store_failed)
}

/// Every configured key with its value.
pub fn all() -> Result<Vec<(String, String)>, String> {
    store::get_all().map_err(store_failed)
}

fn store_failed(err: store::Error) -> String {
    match err {
        store::Error::Upstream(why) => format!("the config source failed: {why}"),
        store::Error::Io(why) => format!("reading the config failed: {why}"),
    }
}

//! The integration tests, one module per concern, linked into one binary:
//! every test binary links all of wasmtime and sqlx, and one link instead of
//! twenty keeps a clean build's time and disk use down.

#[macro_use]
mod common;

mod cancel;
mod claim_ahead;
mod cli;
mod client;
mod conformance;
mod connections;
mod containment;
mod disk_full;
mod first_hour;
mod flow;
mod grants;
mod host_failures;
mod limits;
mod loading;
mod outage;
mod plugin_sets;
mod plugins_run;
mod queues;
mod recovery;
mod schema;
mod sql_enqueue;
mod sqlite_wake;
mod two_workers;
mod vacuum;
mod waiting;

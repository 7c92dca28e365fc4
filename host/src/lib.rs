//! taskbox: run task code as sandboxed WebAssembly components pulled from a
//! database-backed queue.

pub mod cli;
pub mod sandbox;
pub mod schema;
pub mod size;
pub mod store;
pub mod worker;

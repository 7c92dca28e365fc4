//! taskbox: run task code as sandboxed WebAssembly components pulled from a
//! database-backed queue.

pub mod sandbox;
pub mod schema;
pub mod store;

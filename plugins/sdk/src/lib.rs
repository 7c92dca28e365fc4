//! The guest SDK for taskbox plugins: a plugin is a typed Rust function.
//!
//! ```ignore
//! use taskbox_sdk::{Schema, Task, serde::{Deserialize, Serialize}};
//!
//! #[derive(Deserialize, Serialize, Schema)]
//! #[serde(crate = "taskbox_sdk::serde")]
//! #[postcard(crate = taskbox_sdk::postcard_schema)]
//! pub struct Pair { a: i64, b: i64 }
//!
//! struct Add;
//!
//! impl Task for Add {
//!     type Args = Pair;
//!     type Output = i64;
//!     fn run(args: Pair) -> Result<i64, String> {
//!         args.a.checked_add(args.b).ok_or_else(|| "overflow".into())
//!     }
//! }
//!
//! taskbox_sdk::export_task!(Add);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` as a `cdylib`
//! and drop `NAME.wasm` into the worker's plugins folder. Args and output
//! travel as postcard; their schemas (from `#[derive(Schema)]`) let the
//! `taskbox` CLI check JSON args at enqueue time and print results as JSON.
//!
//! Besides [`log`], a plugin the worker grants them to may use [`http`]
//! (outbound requests) and [`config`] (values from its grants file).

pub use postcard_schema::{self, Schema};
pub use serde;

pub mod config;
pub mod http;

/// The bindings generated from `wit/`, the plugin ABI's single source.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "taskbox_sdk::bindings",
    });
}

use bindings::exports::taskbox::plugin::describe::Signature;
use postcard_schema::schema::owned::OwnedNamedType;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A task: typed args in, a typed output or an error message out.
pub trait Task {
    type Args: DeserializeOwned + Schema;
    type Output: Serialize + Schema;

    fn run(args: Self::Args) -> Result<Self::Output, String>;
}

/// Export `$task` (a type implementing [`Task`]) as this plugin's task.
#[macro_export]
macro_rules! export_task {
    ($task:ty) => {
        struct __TaskboxExport;

        impl $crate::bindings::Guest for __TaskboxExport {
            fn run(
                args: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::run::<$task>(&args)
            }
        }

        impl $crate::bindings::exports::taskbox::plugin::describe::Guest for __TaskboxExport {
            fn describe() -> $crate::bindings::exports::taskbox::plugin::describe::Signature {
                $crate::describe::<$task>()
            }
        }

        $crate::bindings::export_bindings!(__TaskboxExport with_types_in $crate::bindings);
    };
}

fn encode_schema<T: Schema + ?Sized>() -> Vec<u8> {
    let owned = OwnedNamedType::from(T::SCHEMA);
    postcard::to_stdvec(&owned).expect("a schema always encodes")
}

#[doc(hidden)]
pub fn describe<T: Task>() -> Signature {
    Signature {
        args_schema: encode_schema::<T::Args>(),
        result_schema: encode_schema::<T::Output>(),
    }
}

#[doc(hidden)]
pub fn run<T: Task>(args: &[u8]) -> Result<Vec<u8>, String> {
    let not_args = |why: &dyn core::fmt::Display| {
        format!(
            "args do not decode as {}: {why}",
            OwnedNamedType::from(<T::Args as Schema>::SCHEMA)
        )
    };
    let (args, rest) = postcard::take_from_bytes::<T::Args>(args).map_err(|err| not_args(&err))?;
    if !rest.is_empty() {
        return Err(not_args(&format_args!(
            "{} unexpected trailing bytes",
            rest.len()
        )));
    }
    let output = T::run(args)?;
    postcard::to_stdvec(&output).map_err(|err| format!("the output does not encode: {err}"))
}

/// Log lines that the worker records under the running task's id.
pub mod log {
    use crate::bindings::taskbox::plugin::host::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

// The helpers are plain Rust, so they are tested natively:
// `cargo test -p taskbox-sdk --target x86_64-unknown-linux-gnu`.
#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Serialize, Schema)]
    struct Pair {
        a: i64,
        b: i64,
    }

    struct Add;

    impl Task for Add {
        type Args = Pair;
        type Output = i64;

        fn run(Pair { a, b }: Pair) -> Result<i64, String> {
            a.checked_add(b).ok_or_else(|| "overflow".to_string())
        }
    }

    #[test]
    fn run_round_trips_postcard() {
        let args = postcard::to_stdvec(&Pair { a: 2, b: 40 }).unwrap();
        let out = run::<Add>(&args).unwrap();
        assert_eq!(postcard::from_bytes::<i64>(&out).unwrap(), 42);
    }

    #[test]
    fn run_passes_task_errors_through() {
        let args = postcard::to_stdvec(&Pair { a: i64::MAX, b: 1 }).unwrap();
        assert_eq!(run::<Add>(&args).unwrap_err(), "overflow");
    }

    #[test]
    fn run_rejects_bad_and_extra_bytes() {
        let err = run::<Add>(&[]).unwrap_err();
        assert!(err.starts_with("args do not decode as "), "{err}");
        assert!(err.contains("Pair"), "{err}");

        let mut args = postcard::to_stdvec(&Pair { a: 1, b: 2 }).unwrap();
        args.push(0);
        let err = run::<Add>(&args).unwrap_err();
        assert!(err.ends_with("1 unexpected trailing bytes"), "{err}");
    }

    #[test]
    fn describe_encodes_owned_schemas() {
        let sig = describe::<Add>();
        let args: OwnedNamedType = postcard::from_bytes(&sig.args_schema).unwrap();
        let result: OwnedNamedType = postcard::from_bytes(&sig.result_schema).unwrap();
        assert_eq!(args, OwnedNamedType::from(Pair::SCHEMA));
        assert_eq!(result, OwnedNamedType::from(i64::SCHEMA));
    }
}

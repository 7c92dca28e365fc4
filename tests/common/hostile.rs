//! Hostile components written against the WIT by hand, not with the SDK:
//! the shapes a Rust plugin never has (many core instances, each with its
//! own memory; tables without a maximum), built from text by the test and
//! dropped into a plugins folder of its own beside the real plugins.

use std::path::Path;

use postcard_schema::Schema;
use postcard_schema::schema::owned::OwnedNamedType;

/// A component that implements world `task` with a `run` taking and
/// returning `()`, whose shape and behaviour the test chooses.
#[derive(Debug, Clone, Default)]
pub struct Hostile {
    /// Core instances beside the main one, each with a memory of its own
    /// (one page to start with) that `run` may grow through `$growN`.
    pub hogs: u32,
    /// Instructions `run` executes before returning `ok`. They may call
    /// `$grow_main`, `$grow_table` and `$grow0`.. (each `(param i32)
    /// (result i32)`, returning -1 when refused), and `$exit` (`(param
    /// i32)`, WASI's `exit-with-code`), and must leave the stack empty.
    pub run: String,
}

impl Hostile {
    /// Instructions that grow with `grow` by `pages` and trap if refused.
    pub fn grow_or_trap(grow: &str, amount: u32) -> String {
        format!(
            "(if (i32.eq (call {grow} (i32.const {amount})) (i32.const -1)) (then unreachable))\n"
        )
    }

    /// The component's binary.
    pub fn build(&self) -> Vec<u8> {
        wat::parse_str(self.text()).expect("the hostile component is valid WAT")
    }

    /// Write it as `NAME.wasm` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.wasm")), self.build()).expect("writes the plugin");
    }

    fn text(&self) -> String {
        let schema = postcard::to_stdvec(&OwnedNamedType::from(<() as Schema>::SCHEMA))
            .expect("the unit schema encodes");
        let schema_len = schema.len();
        let schema_data: String = schema.iter().map(|b| format!("\\{b:02x}")).collect();
        let hog_imports: String = (0..self.hogs)
            .map(|n| {
                format!("(import \"hog{n}\" \"grow\" (func $grow{n} (param i32) (result i32)))\n")
            })
            .collect();
        let hog_instances: String = (0..self.hogs)
            .map(|n| format!("(core instance $h{n} (instantiate $hog))\n"))
            .collect();
        let hog_withs: String = (0..self.hogs)
            .map(|n| format!("(with \"hog{n}\" (instance $h{n})) "))
            .collect();
        let run = &self.run;
        format!(
            r#"(component
  (import "wasi:cli/exit@0.2.12" (instance $wasi_exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $exit_with_code (canon lower (func $wasi_exit "exit-with-code")))
  (core instance $exit (export "with-code" (func $exit_with_code)))
  (core module $hog
    (memory (export "memory") 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
  {hog_instances}
  (core module $main
    (import "exit" "with-code" (func $exit (param i32)))
    {hog_imports}
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (global $bump (mut i32) (i32.const 4096))
    (data (i32.const 16) "{schema_data}")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "describe") (result i32)
      (i32.store (i32.const 64) (i32.const 16))
      (i32.store (i32.const 68) (i32.const {schema_len}))
      (i32.store (i32.const 72) (i32.const 16))
      (i32.store (i32.const 76) (i32.const {schema_len}))
      (i32.const 64))
    (func $grow_main (param i32) (result i32) (memory.grow (local.get 0)))
    (func $grow_table (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0)))
    (func (export "run") (param i32 i32) (result i32)
      {run}
      (i32.store8 (i32.const 96) (i32.const 0))
      (i32.store (i32.const 100) (i32.const 0))
      (i32.store (i32.const 104) (i32.const 0))
      (i32.const 96)))
  (core instance $i (instantiate $main (with "exit" (instance $exit)) {hog_withs}))
  (type $sig (record (field "args-schema" (list u8)) (field "result-schema" (list u8))))
  (func $describe (result $sig)
    (canon lift (core func $i "describe") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (component $describe_shape
    (type $sig (record (field "args-schema" (list u8)) (field "result-schema" (list u8))))
    (import "import-type-signature" (type $t (eq $sig)))
    (import "import-func-describe" (func $f (result $t)))
    (export $te "signature" (type $t))
    (export "describe" (func $f) (func (result $te))))
  (instance $d (instantiate $describe_shape
    (with "import-func-describe" (func $describe))
    (with "import-type-signature" (type $sig))))
  (export "taskbox:plugin/describe@0.1.0" (instance $d))
  (func (export "run") (param "args" (list u8)) (result (result (list u8) (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))
"#
        )
    }
}

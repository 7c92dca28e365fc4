//! The `taskbox` binary: all the work is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    taskbox::cli::main()
}

//! The `taskbox` binary: all the work is in the library's `cli` module.

// Claims are decoded on one thread and their tasks freed on the guest
// threads; jemalloc's thread caches cost the worker ~1.3 µs less per task
// than glibc's arenas (100,000-task drains, `perf stat`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    taskbox::cli::main()
}

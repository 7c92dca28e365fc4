//! `fib`: the n-th Fibonacci number, computed naively: a CPU-bound task.
//!
//! The doubly recursive definition is deliberate (about 1.6^n calls); the
//! `black_box`es keep the optimizer from memoising it, turning it into a
//! loop or folding it into a closed form.

use std::hint::black_box;

use taskbox_sdk::Task;

#[inline(never)]
fn fib(n: u32) -> u64 {
    let n = black_box(n);
    if n < 2 {
        return u64::from(n);
    }
    let a = fib(n - 1);
    let b = fib(n - 2);
    black_box(a).wrapping_add(black_box(b))
}

struct Fib;

impl Task for Fib {
    type Args = u32;
    type Output = u64;

    fn run(n: u32) -> Result<u64, String> {
        Ok(fib(n))
    }
}

taskbox_sdk::export_task!(Fib);

//! `deepstack` (hostile): recursion whose every frame holds a large buffer
//! on the shadow stack (the part of the stack a Rust guest keeps in its
//! linear memory), so that stack runs out long before wasm's own call stack.

use std::hint::black_box;

use taskbox_sdk::Task;

const FRAME: usize = 32 * 1024;

#[inline(never)]
fn descend(depth: u64) -> u64 {
    let mut buffer = [0u8; FRAME];
    buffer[depth as usize % FRAME] = depth as u8;
    let buffer = black_box(buffer);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = descend(black_box(depth + 1));
    below.wrapping_add(u64::from(buffer[depth as usize % FRAME]))
}

struct Deepstack;

impl Task for Deepstack {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        black_box(descend(0));
        Ok(())
    }
}

taskbox_sdk::export_task!(Deepstack);

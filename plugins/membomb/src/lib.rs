//! `membomb` (hostile): allocates and touches memory until the host refuses.

use std::hint::black_box;

use taskbox_sdk::Task;

const CHUNK: usize = 1024 * 1024;

struct Membomb;

impl Task for Membomb {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            hoard.push(black_box(chunk));
        }
    }
}

taskbox_sdk::export_task!(Membomb);

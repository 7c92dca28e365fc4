//! `chatty` (hostile): writes 100 MB to stdout.

use std::io::Write;

use taskbox_sdk::Task;

const TOTAL: usize = 100 * 1024 * 1024;
const LINE: usize = 64 * 1024;

struct Chatty;

impl Task for Chatty {
    type Args = ();
    type Output = ();

    fn run(_: ()) -> Result<(), String> {
        let mut line = vec![b'x'; LINE];
        line[LINE - 1] = b'\n';
        let mut out = std::io::stdout().lock();
        for _ in 0..TOTAL / LINE {
            out.write_all(&line).map_err(|err| err.to_string())?;
        }
        out.flush().map_err(|err| err.to_string())
    }
}

taskbox_sdk::export_task!(Chatty);

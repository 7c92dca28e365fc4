//! `puts`: prints its string argument to stdout (the tutorial's `IO.puts`).

use taskbox_sdk::Task;

struct Puts;

impl Task for Puts {
    type Args = String;
    type Output = ();

    fn run(line: String) -> Result<(), String> {
        println!("{line}");
        Ok(())
    }
}

taskbox_sdk::export_task!(Puts);

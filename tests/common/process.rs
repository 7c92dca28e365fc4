//! Child processes a test reads as they write: a `taskbox worker` whose log
//! lines arrive on a channel, and any child's stderr kept as text, so a test
//! can wait for what a worker says instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a worker process may take to say what a test waits for.
pub const PROCESS_WAIT: Duration = Duration::from_secs(30);

/// Run `command` to its end with its output captured, killing it and
/// failing the test if it is still running after `limit`.
pub fn run_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits"));
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match outcome.recv_timeout(limit) {
        Ok(output) => output.expect("the binary runs"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("still running after {limit:?}");
        }
    }
}

/// A `taskbox worker`, killed when dropped, its log lines forwarded to a
/// channel.
pub struct WorkerProcess {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl WorkerProcess {
    /// Start `command` (the `taskbox` binary) as `worker --concurrency 2`.
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .args(["worker", "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the worker starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, log) = mpsc::channel();
        // Keep reading to the end so the worker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        WorkerProcess { child, log }
    }

    /// The first log line containing every one of `needles`.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => continue,
                Err(err) => panic!("no log line with {needles:?} ({err})"),
            }
        }
    }

    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM is delivered");
        self.child.wait().expect("the worker exits").code()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's stderr, read as it is written.
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<String>>);

impl LogTail {
    pub fn follow(stream: impl Read + Send + 'static) -> Self {
        let tail = LogTail::default();
        let sink = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut text = sink.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        tail
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().contains(needle)
    }
}

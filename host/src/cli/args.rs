//! The command line, as the design's contract defines it.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

use crate::size::parse as parse_bytes;
use crate::store::pg_schema::DEFAULT_SCHEMA;
use crate::store::{SchemaName, Status};
use crate::worker::queue_caps::ServedQueue;

/// The plugins folder `cargo xtask plugins` fills.
pub const DEFAULT_PLUGINS_DIR: &str = "target/plugins";
/// Tasks `taskbox demo` enqueues unless told otherwise.
pub const DEFAULT_DEMO_COUNT: usize = 2000;
/// Rows `taskbox list` prints unless told otherwise.
pub const DEFAULT_LIST_LIMIT: i64 = 50;

#[derive(Debug, Parser)]
#[command(
    name = "taskbox",
    version,
    about = "Run tasks as sandboxed WebAssembly plugins from a database queue"
)]
pub struct Cli {
    /// Postgres URL (postgres://...) or SQLite (sqlite:PATH); default sqlite:./taskbox.db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Postgres schema holding every taskbox table, function and its
    /// migration history (SQLite keeps its one file and ignores this).
    #[arg(long, env = "TASKBOX_SCHEMA", global = true, value_name = "NAME",
          default_value = DEFAULT_SCHEMA, value_parser = parse_schema)]
    pub schema: SchemaName,

    /// Folder of plugin components (NAME.wasm).
    #[arg(long = "plugins", env = "TASKBOX_PLUGINS", global = true, default_value = DEFAULT_PLUGINS_DIR)]
    pub plugins_dir: PathBuf,

    #[command(flatten)]
    pub load: LoadArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Limits on loading plugin files, for every command that loads them.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Refuse plugin files larger than this, unread (bytes; KiB, MiB, GiB suffixes work).
    #[arg(long, env = "TASKBOX_MAX_PLUGIN_SIZE", global = true, default_value = "128MiB", value_parser = parse_bytes)]
    pub max_plugin_size: usize,
    /// Refuse a plugin that takes longer than this to compile.
    #[arg(long, env = "TASKBOX_COMPILE_TIMEOUT", global = true, default_value = "20s", value_parser = parse_duration)]
    pub compile_timeout: Duration,
    /// Refuse a plugin whose compiler needs more memory than this.
    #[arg(long, env = "TASKBOX_COMPILE_MEMORY", global = true, default_value = "1GiB", value_parser = parse_bytes)]
    pub compile_memory: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations (idempotent).
    Migrate,
    /// Validate args against the plugin's schema and queue a task.
    Enqueue(EnqueueArgs),
    /// Run tasks until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Show one task.
    Show {
        /// The id `enqueue` printed.
        id: i64,
        /// Print the task as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this status (waiting, running, success, error,
        /// timeout, cancelled).
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        /// Only tasks of this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// At most this many tasks.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Print a JSON array of tasks.
        #[arg(long)]
        json: bool,
    },
    /// Count tasks per status.
    Stats {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Load every plugin and show what each takes, or why it was refused.
    Plugins {
        /// Print a JSON array, one object per plugin file.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a task to end and print its result as JSON: exit 0 on
    /// success, 1 when it ended otherwise (its error on stderr) or the wait
    /// timed out.
    Wait {
        /// The id `enqueue` printed.
        id: i64,
        /// Give up after this long (default: wait until the task ends).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Cancel a waiting task, or interrupt a running one wherever it runs.
    Cancel {
        /// The id `enqueue` printed.
        id: i64,
    },
    /// Pause, resume and list queues.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Enqueue N `puts` tasks and run them, with a progress bar.
    Demo {
        /// Tasks to enqueue and run.
        #[arg(long, default_value_t = DEFAULT_DEMO_COUNT)]
        count: usize,
    },
}

/// What `taskbox queue` does.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Stop every worker claiming the queue's tasks; running ones finish.
    Pause {
        /// The queue's name.
        #[arg(value_parser = parse_queue)]
        name: String,
    },
    /// Let workers claim the queue's tasks again.
    Resume {
        /// The queue's name.
        #[arg(value_parser = parse_queue)]
        name: String,
    },
    /// At most N of the queue's tasks run at once, on all workers together
    /// (`none` clears it).
    Limit {
        /// The queue's name.
        #[arg(value_parser = parse_queue)]
        name: String,
        /// A number from 1, or `none`.
        #[arg(value_parser = crate::store::flow::parse_limit)]
        limit: LimitOrNone,
    },
    /// At most N of one key's tasks run at once in the queue, and claims
    /// take its keys in turn (`none` clears it).
    KeyLimit {
        /// The queue's name.
        #[arg(value_parser = parse_queue)]
        name: String,
        /// A number from 1, or `none`.
        #[arg(value_parser = crate::store::flow::parse_limit)]
        limit: LimitOrNone,
    },
    /// At most COUNT of the queue's tasks start in any WINDOW, on all
    /// workers together, spread so that a tenth of the window starts at
    /// most a tenth of the count (rounded up) (`none` clears it).
    Rate {
        /// The queue's name.
        #[arg(value_parser = parse_queue)]
        name: String,
        /// COUNT/WINDOW, e.g. 100/1s or 5/1m; or `none`.
        #[arg(value_parser = parse_rate)]
        rate: RateOrNone,
        /// The rate holds for each key on its own.
        #[arg(long)]
        per_key: bool,
    },
    /// Every queue that holds tasks or has settings: waiting, running,
    /// limit, key limit, rate, paused.
    List {
        /// Print a JSON array, one object per queue.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The plugin's name (its file stem).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub plugin: Option<String>,
    /// The args as JSON; leave out when the plugin takes none.
    #[arg(conflicts_with = "file")]
    pub args: Option<String>,
    /// JSON lines of {"plugin": ..., "args": ...}, `-` for standard input;
    /// all or nothing.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Refuse a task whose encoded args are larger (bytes; KiB, MiB, GiB suffixes work).
    #[arg(long, env = "TASKBOX_MAX_ARGS_SIZE", value_name = "BYTES", value_parser = parse_bytes,
          default_value_t = crate::store::DEFAULT_MAX_ARGS_BYTES)]
    pub max_args_size: usize,
    /// Wait for the task to end and print its result as JSON instead of
    /// its id, as `taskbox wait` does.
    #[arg(long, conflicts_with = "file")]
    pub wait: bool,
    /// With --wait: give up after this long (default: wait until it ends).
    #[arg(long, requires = "wait", value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,
    #[command(flatten)]
    pub options: TaskOptions,
}

/// Per-task settings, for single and file enqueue alike.
#[derive(Debug, Clone, Args)]
pub struct TaskOptions {
    /// Deadline per attempt (default: the worker's --timeout).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts in all, the first included: a failed or timed-out attempt is
    /// retried with backoff while attempts remain.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts: i32,
    /// Lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Do not run before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub run_at: Option<DateTime<Utc>>,
    /// The queue to put it in; workers serve every queue unless told which.
    #[arg(long, default_value = crate::store::DEFAULT_QUEUE, value_parser = parse_queue)]
    pub queue: String,
    /// The task's key (a tenant, a customer): a queue's key limit counts
    /// tasks per key.
    #[arg(long, value_parser = parse_key)]
    pub key: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Tasks run at once (default: 12 per CPU core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Claimed tasks a worker may hold waiting for a free slot, so one claim
    /// serves many tasks; it holds no more than it would start soon at its
    /// recent pace, so an idle worker beside it is not kept waiting (0:
    /// claim only for free slots).
    #[arg(long, default_value_t = crate::worker::slots::DEFAULT_CLAIM_AHEAD,
          value_parser = clap::value_parser!(u32).range(0..=100_000).map(|n| n as usize))]
    pub claim_ahead: usize,
    /// Deadline for tasks enqueued without one.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Memory each task may take in all, every linear memory and table of
    /// its instance together (bytes; KiB, MiB, GiB suffixes work).
    #[arg(long, default_value = DEFAULT_MEMORY, value_parser = parse_bytes)]
    pub memory: usize,
    /// A deterministic instruction budget per task (wasmtime fuel), on top
    /// of the deadline.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub fuel: Option<u64>,
    /// Time running tasks get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Exit once nothing is running or due.
    #[arg(long)]
    pub drain: bool,
    /// With --drain: stop (exit 1) once nothing runs here and the database
    /// has not answered for this long.
    #[arg(long, env = "TASKBOX_DRAIN_PATIENCE", default_value = "30s", value_parser = parse_duration)]
    pub drain_patience: Duration,
    /// How long to wait at start for a database that cannot be reached yet
    /// (refused, timed out, too many clients, starting up).
    #[arg(long, env = "TASKBOX_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Serve only this queue (repeatable; default: all). NAME=N also caps
    /// it: this worker holds at most N of its tasks at once, running or
    /// claimed and waiting for a slot; NAME alone is bounded only by
    /// --concurrency.
    #[arg(long = "queue", value_name = "NAME[=N]", value_parser = parse_served_queue)]
    pub queues: Vec<ServedQueue>,
    /// Delay before the first retry of a failed task (doubles per attempt).
    #[arg(long, default_value = "1s", value_parser = parse_backoff)]
    pub backoff: Duration,
    /// How far past its deadline a lost worker's task is taken back.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub rescue_grace: Duration,
    /// How long a worker may go without a heartbeat before it counts as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub worker_ttl: Duration,
}

/// `--memory`'s default as `--help` shows it: the sandbox's own default.
pub const DEFAULT_MEMORY: &str = "64MiB";

fn parse_status(text: &str) -> Result<Status, String> {
    text.parse()
}

/// `--schema`: a name [`SchemaName`] takes.
pub fn parse_schema(text: &str) -> Result<SchemaName, String> {
    SchemaName::new(text).map_err(|err| err.to_string())
}

/// A required value that may be `none`: spelt without `Option` so that
/// clap does not take the argument itself for optional.
type LimitOrNone = Option<u32>;
type RateOrNone = Option<crate::store::flow::Rate>;

/// `queue rate`'s rate: COUNT/WINDOW, or `none`.
fn parse_rate(text: &str) -> Result<RateOrNone, String> {
    if text == "none" {
        return Ok(None);
    }
    text.parse().map(Some)
}

/// Longest queue name taken.
pub const MAX_QUEUE_NAME: usize = 128;

/// A queue name: some visible text, at most [`MAX_QUEUE_NAME`] characters.
pub fn parse_queue(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("a queue name cannot be empty".to_owned());
    }
    if text.chars().any(char::is_control) {
        return Err("a queue name cannot hold control characters".to_owned());
    }
    if text.chars().count() > MAX_QUEUE_NAME {
        return Err(format!(
            "a queue name is at most {MAX_QUEUE_NAME} characters"
        ));
    }
    Ok(text.to_owned())
}

/// `--queue NAME` or `--queue NAME=N`, N at least 1. The last `=` splits,
/// so a queue whose name holds one is served as `NAME=N`.
pub fn parse_served_queue(text: &str) -> Result<ServedQueue, String> {
    let Some((name, cap)) = text.rsplit_once('=') else {
        return Ok(ServedQueue::uncapped(parse_queue(text)?));
    };
    let name = parse_queue(name)?;
    let max_held = cap
        .parse::<NonZeroUsize>()
        .map_err(|_| format!("`{cap}` is not a limit; write NAME=N with N a whole number of at least 1, like {name}=5"))?;
    Ok(ServedQueue {
        name,
        max_held: Some(max_held),
    })
}

/// `--key`: a key as the client checks it ([`taskbox_client::task::check_key`]).
pub fn parse_key(text: &str) -> Result<String, String> {
    taskbox_client::task::check_key(text).map_err(|why| why.to_string())?;
    Ok(text.to_owned())
}

/// Longest duration any option takes: a task's deadline bound
/// ([`crate::store::MAX_TASK_TIMEOUT`], a week), so every duration the
/// database adds to its clock stays in range.
pub const MAX_DURATION: Duration = crate::store::MAX_TASK_TIMEOUT;

/// `250ms`, `1s`, `2m`: a unit is required, zero is not a deadline, and
/// nothing is longer than [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, MAX_DURATION)
}

/// `--backoff`: a duration of at most [`crate::worker::retry::MAX_BACKOFF_BASE`].
pub fn parse_backoff(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, crate::worker::retry::MAX_BACKOFF_BASE)
}

fn parse_duration_up_to(text: &str, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is not a duration; write it with a unit, like 250ms, 1s or 2m")
    })?;
    if duration.is_zero() {
        return Err("a duration must be longer than zero".to_owned());
    }
    if duration > max {
        return Err(format!(
            "`{text}` is longer than the maximum of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

/// An RFC 3339 time at most [`crate::store::MAX_SCHEDULE_AHEAD`] from now.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let time = DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| format!("`{text}` is not an RFC 3339 time, like 2026-11-24T09:00:00Z"))?;
    let ahead = crate::store::MAX_SCHEDULE_AHEAD;
    if time > Utc::now() + chrono::Duration::from_std(ahead).unwrap_or_default() {
        return Err(format!(
            "`{text}` is more than the maximum of {} from now",
            humantime::format_duration(ahead)
        ));
    }
    Ok(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn durations_and_times_are_bounded() {
        assert_eq!(parse_duration("7days").unwrap(), MAX_DURATION);
        let refused = parse_duration("300000000y").unwrap_err();
        assert_eq!(refused, "`300000000y` is longer than the maximum of 7days");
        assert!(parse_backoff("1h").is_ok());
        assert!(parse_backoff("2h").is_err());
        assert!(parse_time("2026-11-24T09:00:00Z").is_ok());
        assert!(parse_time("9999-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn load_defaults_shown_in_help_are_the_library_defaults() {
        use crate::sandbox::compile::*;
        let cli = Cli::parse_from(["taskbox", "plugins"]);
        assert_eq!(cli.load.max_plugin_size as u64, DEFAULT_MAX_PLUGIN_SIZE);
        assert_eq!(cli.load.compile_timeout, DEFAULT_COMPILE_TIMEOUT);
        assert_eq!(cli.load.compile_memory as u64, DEFAULT_COMPILE_MEMORY);
    }

    #[test]
    fn the_schema_defaults_to_the_library_default_and_is_checked() {
        let cli = Cli::parse_from(["taskbox", "stats"]);
        assert_eq!(cli.schema, SchemaName::default());
        assert_eq!(cli.schema.as_str(), DEFAULT_SCHEMA);
        let cli = Cli::parse_from(["taskbox", "--schema", "jobs_2", "stats"]);
        assert_eq!(cli.schema.as_str(), "jobs_2");
        for bad in [
            "",
            "Jobs",
            "1jobs",
            "jobs-x",
            "jobs x",
            "pg_jobs",
            "j".repeat(57).as_str(),
        ] {
            assert!(parse_schema(bad).is_err(), "{bad:?} is taken");
        }
        assert!(parse_schema(&"j".repeat(56)).is_ok());
    }

    #[test]
    fn worker_defaults_shown_in_help_are_the_library_defaults() {
        let cli = Cli::parse_from(["taskbox", "worker"]);
        let Command::Worker(args) = cli.command else {
            panic!("parses as worker")
        };
        assert_eq!(args.connect_timeout, crate::worker::DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(args.drain_patience, crate::worker::DEFAULT_DRAIN_PATIENCE);
        assert_eq!(
            args.memory,
            crate::sandbox::SandboxConfig::default().memory_limit
        );
    }

    #[test]
    fn every_option_has_a_help_line() {
        use clap::CommandFactory;
        fn missing(command: &clap::Command, path: &str, out: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    out.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                missing(sub, &path, out);
            }
        }
        let mut out = Vec::new();
        missing(&Cli::command(), "", &mut out);
        assert!(out.is_empty(), "without a help line: {out:?}");
    }

    #[test]
    fn queue_names_need_visible_text() {
        assert_eq!(parse_queue("emails").unwrap(), "emails");
        assert!(parse_queue("").is_err());
        assert!(parse_queue("  ").is_err());
        assert!(parse_queue("a\nb").is_err());
        assert!(parse_queue(&"q".repeat(MAX_QUEUE_NAME + 1)).is_err());
    }

    #[test]
    fn keys_are_checked_by_the_clients_rule() {
        assert_eq!(parse_key("tenant-1").unwrap(), "tenant-1");
        assert_eq!(parse_key(" ").unwrap_err(), "a key cannot be empty");
        let too_long = "k".repeat(taskbox_client::task::MAX_KEY_CHARS + 1);
        assert!(parse_key(&too_long).is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

//! A task as an application hands it in, the bounds every way in keeps, and
//! the refusal when a task is past them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Queue a task goes to when the caller names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Largest args (postcard bytes) taken unless told otherwise: args live in
/// the guest's memory while it runs, so args near the default memory cap
/// could never run.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 4 * 1024 * 1024;
/// Longest deadline a task may have (a week). A deadline is a time the
/// database must be able to add to its `now()`; an unbounded one
/// (`--timeout 300000000y`) overflowed that sum and failed every claim. The
/// migrations enforce the same number on every row written.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Furthest ahead a task may be scheduled (`run_at`), about ten years.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(3653 * 24 * 3600);
/// Longest task key taken, in characters; the migrations' CHECK holds every
/// row to the same.
pub const MAX_KEY_CHARS: usize = 128;

/// A task to enqueue; `args` are postcard bytes, as the plugin reads them.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub plugin: String,
    pub args: Vec<u8>,
    pub queue: String,
    pub priority: i32,
    pub max_attempts: i32,
    /// `None`: the running worker's default timeout applies.
    pub timeout: Option<Duration>,
    /// `None`: runnable at once.
    pub run_at: Option<DateTime<Utc>>,
    /// Who the task is for (a tenant, a customer): a queue's key limit
    /// counts running tasks per key. `None`: no key.
    pub key: Option<String>,
}

impl NewTask {
    /// A task of `plugin` with args already encoded.
    pub fn new(plugin: impl Into<String>, args: Vec<u8>) -> Self {
        NewTask {
            plugin: plugin.into(),
            args,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: 1,
            timeout: None,
            run_at: None,
            key: None,
        }
    }

    /// A task of `plugin` with typed args: share the plugin crate's own
    /// args type and the encoding cannot drift from what it reads.
    pub fn with_args<A: Serialize + ?Sized>(
        plugin: impl Into<String>,
        args: &A,
    ) -> Result<Self, postcard::Error> {
        Ok(Self::new(plugin, postcard::to_stdvec(args)?))
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Lower runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The deadline of each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Not before this time.
    pub fn run_at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    /// Who the task is for (see [`NewTask::key`]); checked by [`check_key`]
    /// when enqueued.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Why a task key is refused: each is one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("a key cannot be empty")]
    Empty,
    #[error("a key cannot hold control characters")]
    ControlCharacters,
    #[error("a key is at most {MAX_KEY_CHARS} characters (it was {chars})")]
    TooLong { chars: usize },
}

/// A key is some visible text of at most [`MAX_KEY_CHARS`] characters, as a
/// queue name is. The one check of a key in Rust: the client's enqueue and
/// the command line's `--key` both call it.
pub fn check_key(key: &str) -> Result<(), BadKey> {
    if key.trim().is_empty() {
        return Err(BadKey::Empty);
    }
    if key.chars().any(char::is_control) {
        return Err(BadKey::ControlCharacters);
    }
    let chars = key.chars().count();
    if chars > MAX_KEY_CHARS {
        return Err(BadKey::TooLong { chars });
    }
    Ok(())
}

/// A batch refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A task's args are over the limit.
    #[error(
        "the args{} are {size} bytes, more than the limit of {limit} bytes",
        if *.batch > 1 { format!(" of task {} of {}", .index + 1, .batch) } else { String::new() }
    )]
    ArgsTooLarge {
        /// The task's place in the batch, from 0.
        index: usize,
        batch: usize,
        size: usize,
        limit: usize,
    },
    /// A task's setting is past a bound that keeps every row claimable.
    #[error(
        "the {what}{} is {given}, more than the maximum of {max}",
        if *.batch > 1 { format!(" of task {} of {}", .index + 1, .batch) } else { String::new() }
    )]
    OutOfBounds {
        /// The task's place in the batch, from 0.
        index: usize,
        batch: usize,
        what: &'static str,
        given: String,
        max: String,
    },
    /// A task's key is not one [`check_key`] takes.
    #[error(
        "{}{why}",
        if *.batch > 1 { format!("task {} of {}: ", .index + 1, .batch) } else { String::new() }
    )]
    BadKey {
        /// The task's place in the batch, from 0.
        index: usize,
        batch: usize,
        why: BadKey,
    },
}

/// Refuse a batch in which any task's args are over `max_args_bytes`, its
/// timeout or `run_at` is past the bounds, or its key is refused by
/// [`check_key`], before anything is written.
/// Decided here once for every way in; the schema's CHECKs refuse the rest
/// (attempts below 1, empty names) for rows written by any means.
pub fn check(tasks: &[NewTask], max_args_bytes: usize, now: DateTime<Utc>) -> Result<(), Refused> {
    let latest = now + chrono::Duration::from_std(MAX_SCHEDULE_AHEAD).unwrap_or_default();
    let batch = tasks.len();
    for (index, task) in tasks.iter().enumerate() {
        let refused = |what, given, max| Refused::OutOfBounds {
            index,
            batch,
            what,
            given,
            max,
        };
        if task.args.len() > max_args_bytes {
            return Err(Refused::ArgsTooLarge {
                index,
                batch,
                size: task.args.len(),
                limit: max_args_bytes,
            });
        }
        if let Some(timeout) = task.timeout
            && timeout > MAX_TASK_TIMEOUT
        {
            return Err(refused(
                "timeout",
                humantime::format_duration(timeout).to_string(),
                humantime::format_duration(MAX_TASK_TIMEOUT).to_string(),
            ));
        }
        if let Some(run_at) = task.run_at
            && run_at > latest
        {
            return Err(refused(
                "run_at",
                run_at.to_rfc3339(),
                format!(
                    "{} from now",
                    humantime::format_duration(MAX_SCHEDULE_AHEAD)
                ),
            ));
        }
        if let Some(key) = &task.key {
            check_key(key).map_err(|why| Refused::BadKey { index, batch, why })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_need_visible_text_of_at_most_the_maximum() {
        assert_eq!(check_key("tenant-1"), Ok(()));
        assert_eq!(check_key(&"k".repeat(MAX_KEY_CHARS)), Ok(()));
        assert_eq!(check_key(""), Err(BadKey::Empty));
        assert_eq!(check_key(" \t "), Err(BadKey::Empty));
        assert_eq!(check_key("a\nb"), Err(BadKey::ControlCharacters));
        // Characters, not bytes: the database's CHECK counts the same way.
        assert_eq!(check_key(&"é".repeat(MAX_KEY_CHARS)), Ok(()));
        assert_eq!(
            check_key(&"k".repeat(200)),
            Err(BadKey::TooLong { chars: 200 })
        );
    }

    #[test]
    fn a_bad_key_refuses_the_batch_naming_its_task() {
        let fine = NewTask::new("add", Vec::new()).key("tenant-1");
        let empty = NewTask::new("add", Vec::new()).key("");
        let now = Utc::now();
        assert_eq!(check(std::slice::from_ref(&fine), 0, now), Ok(()));
        let alone = check(std::slice::from_ref(&empty), 0, now).unwrap_err();
        assert_eq!(alone.to_string(), "a key cannot be empty");
        let second = check(&[fine, empty], 0, now).unwrap_err();
        assert_eq!(second.to_string(), "task 2 of 2: a key cannot be empty");
    }
}

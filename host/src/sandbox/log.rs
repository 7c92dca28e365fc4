//! A plugin's log lines in the worker's log: capped per attempt in lines and
//! bytes like stdout (the rest dropped, with one marker line at the end),
//! escaped so a message is always one line, and written under their own
//! target (`taskbox::plugin`) with the task and plugin attached, so a plugin
//! can never produce a line that reads like the worker's own.

use std::sync::Arc;

use super::TaskState;
use super::bindings::taskbox::plugin::host::{Host, Level};

/// Log lines a plugin may write per attempt.
pub const DEFAULT_LOG_LINES: usize = 1000;
/// Bytes of log messages a plugin may write per attempt (as for stdout).
pub const DEFAULT_LOG_BYTES: usize = 64 * 1024;

/// Which task a plugin's log lines belong to.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub task_id: Option<i64>,
    pub plugin: Arc<str>,
}

/// How much a plugin may log per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub lines: usize,
    pub bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            lines: DEFAULT_LOG_LINES,
            bytes: DEFAULT_LOG_BYTES,
        }
    }
}

/// One attempt's log: where its lines go and what is left of its budget.
#[derive(Debug)]
pub(crate) struct PluginLog {
    target: LogTarget,
    limits: LogLimits,
    lines: usize,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl PluginLog {
    pub(crate) fn new(target: LogTarget, limits: LogLimits) -> Self {
        PluginLog {
            target,
            limits,
            lines: 0,
            bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    fn write(&mut self, level: Level, message: &str) {
        let room = self.limits.bytes.saturating_sub(self.bytes);
        if self.lines >= self.limits.lines || room == 0 {
            self.dropped_lines += 1;
            self.dropped_bytes += message.len() as u64;
            return;
        }
        let kept = cut(message, room);
        self.lines += 1;
        self.bytes += kept.len();
        self.dropped_bytes += (message.len() - kept.len()) as u64;
        let mut line = one_line(kept);
        if kept.len() < message.len() {
            line.push_str(" [cut]");
        }
        let task = self.target.task_id;
        let plugin = &*self.target.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "taskbox::plugin", task, plugin, "{line}"),
            Level::Debug => tracing::debug!(target: "taskbox::plugin", task, plugin, "{line}"),
            Level::Info => tracing::info!(target: "taskbox::plugin", task, plugin, "{line}"),
            Level::Warn => tracing::warn!(target: "taskbox::plugin", task, plugin, "{line}"),
            Level::Error => tracing::error!(target: "taskbox::plugin", task, plugin, "{line}"),
        }
    }

    /// The attempt is over: say once what was dropped, if anything.
    pub(crate) fn finish(&mut self) {
        if self.dropped_lines == 0 && self.dropped_bytes == 0 {
            return;
        }
        tracing::warn!(
            target: "taskbox::plugin",
            task = self.target.task_id,
            plugin = &*self.target.plugin,
            "[taskbox: plugin log cut at {} lines or {} bytes per attempt; {} more lines and {} more bytes dropped]",
            self.limits.lines,
            self.limits.bytes,
            self.dropped_lines,
            self.dropped_bytes
        );
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
    }
}

impl Host for TaskState {
    fn log(&mut self, level: Level, message: String) {
        self.log.write(level, &message);
    }
}

/// The longest prefix of `message` within `max` bytes, on a char boundary.
fn cut(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// `message` with every control character and line separator escaped, so
/// it prints as one line and cannot move the terminal's cursor.
fn one_line(message: &str) -> String {
    let mut line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_onto_one_line() {
        assert_eq!(
            one_line("a\nb\r\x1b[2Jc\u{2028}d\te"),
            "a\\nb\\r\\u{1b}[2Jc\\u{2028}d\\te"
        );
        assert_eq!(one_line("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn cuts_on_a_char_boundary() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("hi", 10), "hi");
    }

    #[test]
    fn counts_lines_and_bytes_past_the_cap() {
        let target = LogTarget {
            task_id: Some(1),
            plugin: Arc::from("p"),
        };
        let mut log = PluginLog::new(target, LogLimits { lines: 2, bytes: 8 });
        log.write(Level::Info, "12345");
        log.write(Level::Info, "67890");
        log.write(Level::Info, "abc");
        assert_eq!((log.lines, log.bytes), (2, 8));
        assert_eq!((log.dropped_lines, log.dropped_bytes), (1, 5));
    }
}

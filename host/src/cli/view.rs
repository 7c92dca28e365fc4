//! How tasks look to people and scripts: the JSON object `show --json` and
//! `list --json` print, and the plain-text forms.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use postcard_schema::schema::owned::OwnedNamedType;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::sandbox::{Plugin, Plugins};
use crate::schema;
use crate::store::{Status, TaskRecord};

/// A task as the command line shows it.
#[derive(Debug, Serialize)]
pub struct TaskView {
    pub id: i64,
    pub plugin: String,
    pub queue: String,
    pub status: Status,
    pub attempts: i32,
    pub max_attempts: i32,
    pub priority: i32,
    pub args: Value,
    pub result: Value,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
    pub errors: Vec<String>,
    pub plugin_digest: Option<String>,
    pub worker: Option<String>,
    pub run_at: String,
    pub enqueued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Bytes shown as hex when args or a result cannot be shown as JSON.
const MAX_HEX_BYTES: usize = 1024;

/// Postcard bytes as JSON through the plugin's schema; a marker string when
/// that JSON would be too large to show (see [`schema::MAX_DECODED_VALUES`]);
/// hex (`postcard:...`, at most [`MAX_HEX_BYTES`] of it) when the plugin is
/// gone or the bytes do not fit.
fn render(what: &str, schema: Option<&OwnedNamedType>, bytes: &[u8]) -> Value {
    let decoded = schema.map(|schema| schema::decode(schema, bytes));
    match decoded {
        Some(Ok(value)) => value,
        Some(Err(err)) if err.is_too_large() => {
            Value::String(format!("[taskbox: {what} too large to show: {err}]"))
        }
        _ if bytes.len() > MAX_HEX_BYTES => Value::String(format!(
            "postcard:{}... ({} bytes in all)",
            hex::encode(&bytes[..MAX_HEX_BYTES]),
            bytes.len()
        )),
        _ => Value::String(format!("postcard:{}", hex::encode(bytes))),
    }
}

/// Tasks that render one at a time as they are written out, so that
/// `list` holds one rendered task in memory, not `--limit` of them.
pub struct TaskViews {
    records: Vec<TaskRecord>,
    plugins: HashMap<String, Option<Arc<Plugin>>>,
}

impl TaskViews {
    pub async fn new(records: Vec<TaskRecord>, plugins: &Plugins) -> Self {
        let mut loaded = HashMap::new();
        for record in &records {
            if !loaded.contains_key(&record.plugin) {
                let plugin = plugins.get(&record.plugin).await.ok();
                loaded.insert(record.plugin.clone(), plugin);
            }
        }
        TaskViews {
            records,
            plugins: loaded,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = TaskView> + '_ {
        self.records.iter().map(|record| {
            let plugin = self.plugins.get(&record.plugin).and_then(Option::as_ref);
            TaskView::with_plugin(record.clone(), plugin)
        })
    }
}

impl Serialize for TaskViews {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl TaskView {
    pub async fn new(record: TaskRecord, plugins: &Plugins) -> Self {
        let plugin = plugins.get(&record.plugin).await.ok();
        Self::with_plugin(record, plugin.as_ref())
    }

    fn with_plugin(record: TaskRecord, plugin: Option<&Arc<Plugin>>) -> Self {
        let args = render("args", plugin.map(|p| &p.args_schema), &record.args);
        let result = match &record.result {
            Some(bytes) => render("result", plugin.map(|p| &p.result_schema), bytes),
            None => Value::Null,
        };
        let text = |bytes: Option<Vec<u8>>| {
            String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
        };
        TaskView {
            id: record.id,
            plugin: record.plugin,
            queue: record.queue,
            status: record.status,
            attempts: record.attempt,
            max_attempts: record.max_attempts,
            priority: record.priority,
            args,
            result,
            stdout: text(record.stdout),
            stderr: text(record.stderr),
            error: record.error,
            errors: record.errors,
            plugin_digest: record.plugin_digest,
            worker: record.worker_id,
            run_at: time(record.run_at),
            enqueued_at: time(record.enqueued_at),
            started_at: record.started_at.map(time),
            finished_at: record.finished_at.map(time),
        }
    }

    /// The multi-line form `show` prints.
    pub fn detail(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(&format!("{key:<13}{value}\n"));
        };
        line("id", &self.id.to_string());
        line("plugin", &self.plugin);
        line("queue", &self.queue);
        line("status", self.status.as_str());
        line(
            "attempts",
            &format!("{} of {}", self.attempts, self.max_attempts),
        );
        line("priority", &self.priority.to_string());
        line("args", &self.args.to_string());
        line("result", &self.result.to_string());
        line("enqueued_at", &self.enqueued_at);
        line("run_at", &self.run_at);
        line("started_at", self.started_at.as_deref().unwrap_or("-"));
        line("finished_at", self.finished_at.as_deref().unwrap_or("-"));
        line("worker", self.worker.as_deref().unwrap_or("-"));
        line("digest", self.plugin_digest.as_deref().unwrap_or("-"));
        line("error", self.error.as_deref().unwrap_or("-"));
        for (n, error) in self.errors.iter().enumerate() {
            line(&format!("errors[{}]", n + 1), error);
        }
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.is_empty() {
                out.push_str(&format!("--- {name} ---\n{text}"));
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The one-line form `list` prints.
    pub fn row(&self) -> String {
        let error = self
            .error
            .as_deref()
            .map(|e| e.lines().next().unwrap_or_default())
            .unwrap_or("");
        format!(
            "{:>8}  {:<9}  {:<12}  {}/{}  {}  {}",
            self.id,
            self.status.as_str(),
            self.plugin,
            self.attempts,
            self.max_attempts,
            self.enqueued_at,
            error
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_bounded_too() {
        let shown = render("result", None, &[0xab; 10 * MAX_HEX_BYTES]);
        let text = shown.as_str().unwrap();
        assert!(text.starts_with("postcard:abab"), "{text}");
        assert!(text.ends_with(&format!("... ({} bytes in all)", 10 * MAX_HEX_BYTES)));
        assert!(
            text.len() < 2 * MAX_HEX_BYTES + 64,
            "{} characters",
            text.len()
        );
        assert_eq!(
            render("args", None, &[1, 2]),
            Value::String("postcard:0102".into())
        );
    }
}

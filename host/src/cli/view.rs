//! How tasks look to people and scripts: the JSON object `show --json` and
//! `list --json` print, and the plain-text forms.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use postcard_schema::schema::owned::OwnedNamedType;
use serde::Serialize;
use serde_json::Value;

use crate::sandbox::Plugins;
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

/// Postcard bytes as JSON through the plugin's schema, or as hex when the
/// plugin is gone or the bytes do not fit.
fn render(schema: Option<&OwnedNamedType>, bytes: &[u8]) -> Value {
    schema
        .and_then(|schema| schema::decode(schema, bytes).ok())
        .unwrap_or_else(|| Value::String(format!("postcard:{}", hex::encode(bytes))))
}

impl TaskView {
    pub async fn new(record: TaskRecord, plugins: &Plugins) -> Self {
        let plugin = plugins.get(&record.plugin).await.ok();
        Self::with_plugin(record, plugin.as_ref())
    }

    pub async fn many(records: Vec<TaskRecord>, plugins: &Plugins) -> Vec<Self> {
        let mut views = Vec::with_capacity(records.len());
        for record in records {
            views.push(Self::new(record, plugins).await);
        }
        views
    }

    fn with_plugin(record: TaskRecord, plugin: Option<&Arc<crate::sandbox::Plugin>>) -> Self {
        let args = render(plugin.map(|p| &p.args_schema), &record.args);
        let result = match &record.result {
            Some(bytes) => render(plugin.map(|p| &p.result_schema), bytes),
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

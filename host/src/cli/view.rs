//! How tasks look to people and scripts: the JSON object `show --json` and
//! `list --json` print, and the plain-text forms.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use postcard_schema::schema::owned::OwnedNamedType;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::sandbox::Plugins;
use crate::schema;
use crate::store::{Status, TaskRecord, TaskStore};

/// A task as the command line shows it.
#[derive(Debug, Serialize)]
pub struct TaskView {
    pub id: i64,
    pub plugin: String,
    pub queue: String,
    /// `null` for a task enqueued without a key.
    pub key: Option<String>,
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

/// The schemas a task's bytes are read with: those of the plugin version
/// that ran it, else (not run yet) of the version loaded now.
struct Schemas {
    args: OwnedNamedType,
    result: OwnedNamedType,
}

/// Why a task's bytes cannot be read as JSON, said in place of the JSON.
type Unreadable = String;

/// Postcard bytes as JSON through a schema; a marker string when that JSON
/// would be too large to show (see [`schema::MAX_DECODED_VALUES`]); when no
/// schema is known or the bytes do not fit it, hex (`postcard:...`, at most
/// [`MAX_HEX_BYTES`] of it) after the reason.
fn render(what: &str, schema: Result<&OwnedNamedType, &str>, bytes: &[u8]) -> Value {
    let reason = match schema.map(|schema| schema::decode(schema, bytes)) {
        Ok(Ok(value)) => return value,
        Ok(Err(err)) if err.is_too_large() => {
            return Value::String(format!("[taskbox: {what} too large to show: {err}]"));
        }
        Ok(Err(err)) => format!("the {what} does not fit its plugin's schema: {err}"),
        Err(reason) => reason.to_owned(),
    };
    let hex = if bytes.len() > MAX_HEX_BYTES {
        format!(
            "postcard:{}... ({} bytes in all)",
            hex::encode(&bytes[..MAX_HEX_BYTES]),
            bytes.len()
        )
    } else {
        format!("postcard:{}", hex::encode(bytes))
    };
    Value::String(format!("[taskbox: cannot show as JSON: {reason}] {hex}"))
}

/// Finds the schemas for tasks, asking the plugins folder and the store
/// once per plugin name and once per digest.
struct SchemaFinder<'a, S> {
    plugins: &'a Plugins,
    store: &'a S,
    /// By plugin name: the digest of the version loaded here and its
    /// schemas, built once however many of its tasks are shown.
    loaded: HashMap<String, Option<(String, Arc<Schemas>)>>,
    recorded: HashMap<String, Option<Arc<Schemas>>>,
}

impl<'a, S: TaskStore> SchemaFinder<'a, S> {
    fn new(plugins: &'a Plugins, store: &'a S) -> Self {
        SchemaFinder {
            plugins,
            store,
            loaded: HashMap::new(),
            recorded: HashMap::new(),
        }
    }

    async fn find(&mut self, record: &TaskRecord) -> Result<Arc<Schemas>, Unreadable> {
        if !self.loaded.contains_key(&record.plugin) {
            let plugin = self.plugins.get(&record.plugin).await.ok().map(|plugin| {
                let schemas = Schemas {
                    args: plugin.args_schema.clone(),
                    result: plugin.result_schema.clone(),
                };
                (plugin.digest.clone(), Arc::new(schemas))
            });
            self.loaded.insert(record.plugin.clone(), plugin);
        }
        let current = self.loaded[&record.plugin].as_ref();
        let Some(digest) = &record.plugin_digest else {
            return current
                .map(|(_, schemas)| schemas.clone())
                .ok_or_else(|| format!("no plugin named {} is loaded here", record.plugin));
        };
        if let Some((_, schemas)) = current.filter(|(loaded, _)| loaded == digest) {
            return Ok(schemas.clone());
        }
        if !self.recorded.contains_key(digest) {
            let schemas = self.recorded_schemas(digest).await;
            self.recorded.insert(digest.clone(), schemas);
        }
        self.recorded[digest].clone().ok_or_else(|| {
            format!(
                "the version of plugin {} that ran it ({digest}) is not loaded here and its schemas were never recorded",
                record.plugin
            )
        })
    }

    /// A database older than the schemas table, or one unreachable now,
    /// holds none: the task still shows, as hex.
    async fn recorded_schemas(&self, digest: &str) -> Option<Arc<Schemas>> {
        let recorded = self.store.schemas(digest).await.ok().flatten()?;
        Some(Arc::new(Schemas {
            args: schema::parse_schema(&recorded.args).ok()?,
            result: schema::parse_schema(&recorded.result).ok()?,
        }))
    }
}

/// Tasks that render one at a time as they are written out, so that
/// `list` holds one rendered task in memory, not `--limit` of them.
pub struct TaskViews {
    records: Vec<(TaskRecord, Result<Arc<Schemas>, Unreadable>)>,
}

impl TaskViews {
    pub async fn new<S: TaskStore>(records: Vec<TaskRecord>, plugins: &Plugins, store: &S) -> Self {
        let mut finder = SchemaFinder::new(plugins, store);
        let mut found = Vec::with_capacity(records.len());
        for record in records {
            let schemas = finder.find(&record).await;
            found.push((record, schemas));
        }
        TaskViews { records: found }
    }

    pub fn iter(&self) -> impl Iterator<Item = TaskView> + '_ {
        self.records
            .iter()
            .map(|(record, schemas)| TaskView::with_schemas(record.clone(), schemas))
    }
}

impl Serialize for TaskViews {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl TaskView {
    pub async fn new<S: TaskStore>(record: TaskRecord, plugins: &Plugins, store: &S) -> Self {
        let schemas = SchemaFinder::new(plugins, store).find(&record).await;
        Self::with_schemas(record, &schemas)
    }

    fn with_schemas(record: TaskRecord, schemas: &Result<Arc<Schemas>, Unreadable>) -> Self {
        let schema = |pick: fn(&Schemas) -> &OwnedNamedType| match schemas {
            Ok(schemas) => Ok(pick(schemas)),
            Err(reason) => Err(reason.as_str()),
        };
        let args = record
            .json_args()
            .unwrap_or_else(|| render("args", schema(|s| &s.args), &record.args));
        let result = match &record.result {
            Some(bytes) => render("result", schema(|s| &s.result), bytes),
            None => Value::Null,
        };
        let text = |bytes: Option<Vec<u8>>| {
            String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
        };
        TaskView {
            id: record.id,
            plugin: record.plugin,
            queue: record.queue,
            key: record.key,
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
        // Most tasks have no key; a line of "-" would say nothing to them.
        if let Some(key) = &self.key {
            line("key", key);
        }
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
        let shown = render("result", Err("unknown"), &[0xab; 10 * MAX_HEX_BYTES]);
        let text = shown.as_str().unwrap();
        assert!(
            text.starts_with("[taskbox: cannot show as JSON: unknown] postcard:abab"),
            "{text}"
        );
        assert!(text.ends_with(&format!("... ({} bytes in all)", 10 * MAX_HEX_BYTES)));
        assert!(
            text.len() < 2 * MAX_HEX_BYTES + 128,
            "{} characters",
            text.len()
        );
        assert_eq!(
            render("args", Err("unknown"), &[1, 2]),
            Value::String("[taskbox: cannot show as JSON: unknown] postcard:0102".into())
        );
    }
}

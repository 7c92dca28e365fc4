//! `taskbox enqueue`: JSON args checked against the plugin's schema before
//! anything is written, single tasks and `--file` batches (all or nothing).

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::args::{self, EnqueueArgs, TaskOptions};
use super::{CliError, input, print_out, usable_plugin};
use crate::sandbox::Plugins;
use crate::store::{NewTask, TaskStore};

/// `--file -`: the task lines come on standard input.
const STDIN_PATH: &str = "-";

/// Characters of the user's input an error message quotes.
const QUOTED_INPUT_CHARS: usize = 60;

/// `text` as an error message quotes it: at most [`QUOTED_INPUT_CHARS`]
/// characters, with an ellipsis when cut.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_INPUT_CHARS) {
        Some((cut, _)) => format!("`{}...`", &text[..cut]),
        None => format!("`{text}`"),
    }
}

/// Check `args` against the plugin's schema and the size limit, and build
/// the task.
async fn checked_task(
    plugins: &Plugins,
    plugin: &str,
    args: Option<Value>,
    options: &TaskOptions,
    max_args_size: usize,
) -> Result<NewTask, CliError> {
    let loaded = usable_plugin(plugins, plugin).await?;
    let args = args.unwrap_or(Value::Null);
    let bytes = crate::schema::encode(&loaded.args_schema, &args).map_err(|why| {
        input(format!(
            "args {} do not fit plugin `{plugin}`: {why}",
            quoted(&args.to_string())
        ))
    })?;
    // The store refuses them too; checking here names the line of a file.
    if bytes.len() > max_args_size {
        return Err(input(format!(
            "the args are {} bytes, more than the limit of {max_args_size} bytes (--max-args-size)",
            bytes.len()
        )));
    }
    Ok(NewTask {
        plugin: plugin.to_owned(),
        args: bytes,
        queue: options.queue.clone(),
        priority: options.priority,
        max_attempts: options.max_attempts,
        timeout: options.timeout,
        run_at: options.run_at,
        key: options.key.clone(),
    })
}

/// One line of `enqueue --file`; fields left out take the command's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    plugin: String,
    #[serde(default)]
    args: Option<Value>,
    queue: Option<String>,
    priority: Option<i32>,
    max_attempts: Option<i32>,
    timeout: Option<String>,
    run_at: Option<String>,
    key: Option<String>,
}

pub(super) async fn enqueue<S: TaskStore>(
    store: &S,
    plugins: &Plugins,
    args: EnqueueArgs,
) -> Result<(), CliError> {
    let tasks = match (&args.file, &args.plugin) {
        (Some(file), _) => {
            tasks_from_file(plugins, file, &args.options, args.max_args_size).await?
        }
        (None, Some(plugin)) => {
            let json = match &args.args {
                Some(text) => Some(serde_json::from_str(text).map_err(|err| {
                    input(format!(
                        "the args {} are not valid JSON: {err}",
                        quoted(text)
                    ))
                })?),
                None => None,
            };
            vec![checked_task(plugins, plugin, json, &args.options, args.max_args_size).await?]
        }
        (None, None) => return Err(input("name a plugin or pass --file")),
    };
    store.migrate().await?;
    let ids = store.enqueue(&tasks).await?;
    // So `show` can decode a result after this plugin file is replaced.
    let names: std::collections::BTreeSet<&str> =
        tasks.iter().map(|task| task.plugin.as_str()).collect();
    for name in names {
        if let Ok(plugin) = plugins.get(name).await
            && let Err(err) = store.record_schemas(&plugin.schemas()).await
        {
            tracing::debug!(plugin = name, "schemas not recorded: {err}");
        }
    }
    if args.wait {
        return super::wait::wait(store, plugins, ids[0], args.wait_timeout, "--wait-timeout")
            .await;
    }
    let out: String = ids.iter().map(|id| format!("{id}\n")).collect();
    print_out(&out)
}

async fn tasks_from_file(
    plugins: &Plugins,
    path: &Path,
    defaults: &TaskOptions,
    max_args_size: usize,
) -> Result<Vec<NewTask>, CliError> {
    // `-` is standard input, as for most Unix tools.
    let (reader, shown): (Box<dyn BufRead>, String) = if path == Path::new(STDIN_PATH) {
        (
            Box::new(std::io::stdin().lock()),
            "standard input".to_owned(),
        )
    } else {
        let file = std::fs::File::open(path)
            .map_err(|err| input(format!("cannot read {}: {err}", path.display())))?;
        (
            Box::new(std::io::BufReader::new(file)),
            path.display().to_string(),
        )
    };
    let mut tasks = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let at = || format!("{shown} line {}", index + 1);
        let line = line.map_err(|err| input(format!("cannot read {}: {err}", at())))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: FileLine = serde_json::from_str(&line).map_err(|err| {
            input(format!(
                "{} is not a task line ({{\"plugin\": ..., \"args\": ...}}): {err}",
                at()
            ))
        })?;
        let mut options = defaults.clone();
        if let Some(queue) = entry.queue {
            options.queue =
                args::parse_queue(&queue).map_err(|why| input(format!("{}: {why}", at())))?;
        }
        if let Some(key) = entry.key {
            options.key =
                Some(args::parse_key(&key).map_err(|why| input(format!("{}: {why}", at())))?);
        }
        if let Some(priority) = entry.priority {
            options.priority = priority;
        }
        if let Some(max_attempts) = entry.max_attempts {
            if max_attempts < 1 {
                return Err(input(format!("{}: max_attempts must be at least 1", at())));
            }
            options.max_attempts = max_attempts;
        }
        if let Some(timeout) = entry.timeout {
            options.timeout = Some(
                args::parse_duration(&timeout).map_err(|why| input(format!("{}: {why}", at())))?,
            );
        }
        if let Some(run_at) = entry.run_at {
            options.run_at =
                Some(args::parse_time(&run_at).map_err(|why| input(format!("{}: {why}", at())))?);
        }
        let task = checked_task(plugins, &entry.plugin, entry.args, &options, max_args_size)
            .await
            .map_err(|err| match err {
                CliError::Input(message) => input(format!("{}: {message}", at())),
                other => other,
            })?;
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(input(format!("{shown} holds no tasks")));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_at_most_a_short_prefix() {
        assert_eq!(quoted("{\"a\": 1"), "`{\"a\": 1`");
        let long = "é".repeat(10 * QUOTED_INPUT_CHARS);
        let shown = quoted(&long);
        assert_eq!(shown.chars().count(), QUOTED_INPUT_CHARS + 5, "{shown}");
        assert!(shown.ends_with("...`"));
    }
}

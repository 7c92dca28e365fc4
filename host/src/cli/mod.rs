//! The `taskbox` command line: parse, pick the store, run the command, and
//! turn failures into one sentence on stderr with the contract's exit code
//! (2: bad input, nothing written; 1: anything else).

pub mod args;
mod demo;
mod enqueue;
mod queue;
mod serve;
mod view;
mod wait;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::sandbox::{Compiler, LoadLimits, PluginError, Plugins, Sandbox, SandboxConfig};
use crate::store::sqlite::DEFAULT_DATABASE_URL;
use crate::store::{CancelOutcome, ListFilter, PgStore, SqliteStore, StoreError, TaskStore};
use args::{Cli, Command};
use view::{TaskView, TaskViews};

/// Instances a short-lived command needs (loading plugins one at a time).
const CLI_INSTANCES: u32 = 4;

/// A failed command: `Input` exits 2 and guarantees nothing was written.
#[derive(Debug)]
pub enum CliError {
    Input(String),
    Failure(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        CliError::Failure(err)
    }
}

impl From<StoreError> for CliError {
    fn from(err: StoreError) -> Self {
        match err {
            // Starting a second worker on an SQLite file is bad usage.
            StoreError::WorkerLocked { .. } => CliError::Input(err.to_string()),
            // Refused before anything was written.
            StoreError::Refused(_) => CliError::Input(err.to_string()),
            // A read of a database nobody migrated: nothing was created.
            StoreError::NotMigrated => CliError::Input(err.to_string()),
            // Already names the server and the cause.
            StoreError::Connect { .. } => CliError::Failure(anyhow::anyhow!(err.to_string())),
            err if err.is_connection() => CliError::Failure(anyhow::anyhow!(
                "cannot reach the database: {}",
                err.cause()
            )),
            err => CliError::Failure(err.into()),
        }
    }
}

fn input(message: impl Into<String>) -> CliError {
    CliError::Input(message.into())
}

/// Parse the process's arguments, run, and report.
pub fn main() -> ExitCode {
    // The compiler process the worker starts for each plugin (see
    // `sandbox::compile`): not a user command, so not in clap's help.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(crate::sandbox::compile::COMPILE_SUBCOMMAND) {
        return crate::sandbox::compile::child_main(&argv[1..]);
    }
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == clap::error::ErrorKind::MissingSubcommand => {
            // Bare `taskbox`: the help is the answer, on stderr as it is
            // still bad usage.
            let help = <Cli as clap::CommandFactory>::command().render_help();
            eprint!("{help}");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("taskbox: {}", clap_sentence(&err.to_string()));
            return ExitCode::from(2);
        }
    };
    init_logging(matches!(cli.command, Command::Worker(_)));
    // One thread is plenty for claiming, completing and listening: guests run
    // on the sandbox's own runtime, and a worker's cores are better spent on
    // them and on Postgres than on a second idle scheduler thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("taskbox: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Input(message)) => {
            eprintln!("taskbox: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failure(err)) => {
            eprintln!("taskbox: {}", one_sentence(&err));
            ExitCode::from(1)
        }
    }
}

/// clap's error as one line: its message, which runs to the first blank
/// line (a list of missing arguments spans several), then its tips ("a
/// similar subcommand exists", "to pass `-1`, use `-- -1`"); the usage
/// block and the pointer to `--help` are left out.
fn clap_sentence(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n");
    let message: Vec<&str> = paragraphs
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .collect();
    let mut sentence = message.join(" ").trim_start_matches("error: ").to_owned();
    for paragraph in paragraphs {
        for line in paragraph.lines().map(str::trim) {
            if line.starts_with("tip:") {
                sentence.push_str("; ");
                sentence.push_str(line);
            }
        }
    }
    sentence
}

/// The error and its causes, each said once: a cause whose text its
/// wrapper already shows is left out (sqlx and thiserror wrappers both
/// display their source and return it).
fn one_sentence(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn init_logging(worker: bool) {
    // A short command reports a refused plugin itself, in its one
    // sentence; the loader's warning would say it twice.
    let default = if worker {
        "taskbox=info"
    } else {
        "taskbox=warn,taskbox::sandbox::plugin=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The store a database URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Postgres(String),
    Sqlite(String),
}

impl Backend {
    /// No URL (or an empty one): the embedded SQLite default.
    fn from_url(url: Option<&str>) -> Result<Backend, CliError> {
        match url.map(str::trim).filter(|url| !url.is_empty()) {
            None => Ok(Backend::Sqlite(DEFAULT_DATABASE_URL.to_owned())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Backend::Postgres(url.to_owned()))
            }
            Some(url) if url.starts_with("sqlite:") => Ok(Backend::Sqlite(url.to_owned())),
            Some(_) => Err(input(format!(
                "the database URL must start with postgres://, postgresql:// or sqlite: (or leave DATABASE_URL unset to use {DEFAULT_DATABASE_URL})"
            ))),
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let unusable = |err: StoreError| input(format!("the database URL is not usable: {err}"));
    match Backend::from_url(cli.database_url.as_deref())? {
        Backend::Postgres(url) => {
            let store = PgStore::connect_lazy_in(&url, &cli.schema).map_err(unusable)?;
            run_with(store, cli).await
        }
        Backend::Sqlite(url) => {
            // Commands that only read create no database file.
            let reads_only = matches!(
                cli.command,
                Command::Show { .. }
                    | Command::List { .. }
                    | Command::Stats { .. }
                    | Command::Wait { .. }
            );
            let store = if reads_only {
                SqliteStore::connect_existing(&url).map_err(|err| match err {
                    StoreError::NotMigrated => CliError::from(err),
                    err => unusable(err),
                })?
            } else {
                SqliteStore::connect_lazy(&url).map_err(unusable)?
            };
            let outcome = run_with(store.clone(), cli).await;
            // Leaves one tidy file behind rather than a WAL beside it.
            store.close().await;
            outcome
        }
    }
}

/// The load limits the flags ask for, compiling in a child process of
/// this binary so a hostile plugin cannot exhaust this one.
fn load_limits(args: &args::LoadArgs) -> Result<LoadLimits, CliError> {
    let program = std::env::current_exe().map_err(|err| {
        anyhow::anyhow!("cannot find the taskbox binary to compile plugins with: {err}")
    })?;
    Ok(LoadLimits {
        max_file_size: args.max_plugin_size as u64,
        compile_timeout: args.compile_timeout,
        compile_memory: args.compile_memory as u64,
        compiler: Compiler::Subprocess(program),
    })
}

/// Plugins ready to load, the cache folder checked: one that others may
/// write to is bad input (exit 2), as ssh treats `~/.ssh`.
fn open_plugins(sandbox: Arc<Sandbox>, dir: &std::path::Path) -> Result<Plugins, CliError> {
    let plugins = Plugins::new(sandbox, dir);
    plugins.check_cache().map_err(|err| match err {
        PluginError::UnsafeCache { .. } => input(err.to_string()),
        err => CliError::Failure(err.into()),
    })?;
    Ok(plugins)
}

async fn run_with<S: TaskStore>(store: S, cli: Cli) -> Result<(), CliError> {
    let plugins_dir = cli.plugins_dir;
    let load = load_limits(&cli.load)?;
    let cli_plugins = || -> Result<Plugins, CliError> {
        let sandbox = Sandbox::new(SandboxConfig {
            max_instances: CLI_INSTANCES,
            load: load.clone(),
            ..SandboxConfig::default()
        })
        .map_err(|err| CliError::Failure(err.into()))?;
        open_plugins(sandbox, &plugins_dir)
    };
    match cli.command {
        Command::Migrate => {
            store.migrate().await?;
            Ok(())
        }
        Command::Enqueue(args) => {
            let store = store.with_max_args_bytes(args.max_args_size);
            enqueue::enqueue(&store, &cli_plugins()?, args).await
        }
        Command::Worker(args) => serve::worker(store, &plugins_dir, args, load).await,
        Command::Show { id, json } => {
            let record = store
                .get(id)
                .await?
                .ok_or_else(|| input(format!("there is no task with id {id}")))?;
            let view = TaskView::new(record, &cli_plugins()?, &store).await;
            if json {
                print_json(&view)
            } else {
                print_out(&view.detail())
            }
        }
        Command::List {
            status,
            plugin,
            limit,
            json,
        } => {
            let filter = ListFilter {
                status,
                plugin,
                limit,
            };
            let views = TaskViews::new(store.list(&filter).await?, &cli_plugins()?, &store).await;
            if json {
                print_json(&views)
            } else {
                let rows: String = views.iter().map(|v| v.row() + "\n").collect();
                print_out(&rows)
            }
        }
        Command::Stats { json } => {
            let stats = store.stats().await?;
            if json {
                print_json(&stats)
            } else {
                let value = serde_json::to_value(&stats).context("rendering stats")?;
                let mut out = String::new();
                for status in crate::store::Status::ALL {
                    out.push_str(&format!(
                        "{:<10}{}\n",
                        status.as_str(),
                        value[status.as_str()]
                    ));
                }
                if !stats.unserved.is_empty() {
                    out.push_str(&format!(
                        "unserved  {} (tasks wait with no live worker serving the plugin)\n",
                        stats.unserved.join(", ")
                    ));
                }
                print_out(&out)
            }
        }
        Command::Plugins { json } => list_plugins(&cli_plugins()?, json).await,
        Command::Cancel { id } => cancel(&store, id).await,
        Command::Queue { action } => queue::queue(&store, action).await,
        Command::Wait { id, timeout } => {
            wait::wait(&store, &cli_plugins()?, id, timeout, "--timeout").await
        }
        Command::Demo { count } => demo::run(store, &plugins_dir, count, load).await,
    }
}

fn print_out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .context("writing to stdout")?;
    Ok(())
}

/// Written as it renders: `list --json` never holds all of its text.
fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut stdout, value).context("writing JSON to stdout")?;
    writeln!(stdout)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    Ok(())
}

/// The plugin's name as a bad-input error when it cannot be used.
async fn usable_plugin(
    plugins: &Plugins,
    name: &str,
) -> Result<Arc<crate::sandbox::Plugin>, CliError> {
    plugins.get(name).await.map_err(|err| match err {
        PluginError::NotFound(_) => input(format!(
            "{err} ({}); build plugins with `cargo xtask plugins` or pass --plugins",
            plugins.dir().display()
        )),
        PluginError::Engine(_) => CliError::Failure(err.into()),
        other => input(other.to_string()),
    })
}

/// How long `cancel` waits to report a running task's final status.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

async fn cancel<S: TaskStore>(store: &S, id: i64) -> Result<(), CliError> {
    match store.cancel(id).await? {
        CancelOutcome::Cancelled => print_out(&format!("task {id} cancelled\n")),
        CancelOutcome::NotFound => Err(input(format!("there is no task with id {id}"))),
        CancelOutcome::AlreadyFinished(status) => Err(input(format!(
            "task {id} already ended as {status}; nothing to cancel"
        ))),
        CancelOutcome::Interrupting => {
            let started = std::time::Instant::now();
            while started.elapsed() < CANCEL_WAIT {
                if let Some(record) = store.get(id).await?
                    && record.status.is_final()
                {
                    return print_out(&format!(
                        "task {id} {}\n",
                        match record.status {
                            crate::store::Status::Cancelled => "cancelled while running".to_owned(),
                            status => format!("ended as {status} before the cancel reached it"),
                        }
                    ));
                }
                tokio::time::sleep(CANCEL_POLL).await;
            }
            print_out(&format!(
                "task {id}: cancel requested; its worker has not answered yet (a lost worker's task is cancelled when rescued)\n"
            ))
        }
    }
}

async fn list_plugins(plugins: &Plugins, json: bool) -> Result<(), CliError> {
    let listings = plugins
        .load_all()
        .await
        .map_err(|err| input(err.to_string()))?;
    #[derive(serde::Serialize)]
    struct Row {
        name: String,
        digest: Option<String>,
        args_schema: Option<String>,
        result_schema: Option<String>,
        error: Option<String>,
        /// What `NAME.toml` grants, never a secret's value.
        #[serde(skip_serializing_if = "Option::is_none")]
        grants: Option<crate::sandbox::grants::GrantsShown>,
        /// While the file fails to load: the digest of the version that
        /// still serves.
        #[serde(skip_serializing_if = "Option::is_none")]
        serving: Option<String>,
    }
    let rows: Vec<Row> = listings
        .into_iter()
        .map(|listing| match listing.loaded {
            Ok(plugin) => Row {
                name: listing.name,
                digest: Some(plugin.digest.clone()),
                args_schema: Some(plugin.args_schema.to_pseudocode()),
                result_schema: Some(plugin.result_schema.to_pseudocode()),
                error: None,
                grants: Some(plugin.grants.shown()),
                serving: None,
            },
            Err(err) => Row {
                name: listing.name,
                digest: None,
                args_schema: None,
                result_schema: None,
                error: Some(err.to_string()),
                grants: None,
                serving: listing.serving.map(|plugin| plugin.digest.clone()),
            },
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        return print_out(&format!(
            "no plugins in {}: a plugin is a NAME.wasm component there; build this repository's with `cargo xtask plugins` or pass --plugins\n",
            plugins.dir().display()
        ));
    }
    let mut out = String::new();
    for row in rows {
        match row.error {
            None => {
                out.push_str(&format!(
                    "{:<12} {} -> {}  {}\n",
                    row.name,
                    row.args_schema.unwrap_or_default(),
                    row.result_schema.unwrap_or_default(),
                    row.digest.unwrap_or_default()
                ));
                if let Some(grants) = row.grants.filter(|grants| !grants.is_empty()) {
                    out.push_str(&format!("{:<12} grants: {grants}\n", ""));
                }
            }
            Some(error) => out.push_str(&format!("{:<12} REFUSED: {error}\n", row.name)),
        }
    }
    print_out(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_keep_their_tips_on_one_line() {
        use clap::Parser;
        let said = |argv: &[&str]| {
            let err = args::Cli::try_parse_from(argv).expect_err("refused");
            clap_sentence(&err.to_string())
        };
        let typo = said(&["taskbox", "wrker"]);
        assert!(
            typo.starts_with("unrecognized subcommand 'wrker'"),
            "{typo}"
        );
        assert!(
            typo.contains("tip: a similar subcommand exists: 'worker'"),
            "{typo}"
        );
        let negative = said(&["taskbox", "show", "-1"]);
        assert!(
            negative.contains("tip: to pass '-1' as a value, use '-- -1'"),
            "{negative}"
        );
        let missing = said(&["taskbox", "enqueue"]);
        assert!(
            !missing.contains('\n') && !missing.contains("Usage"),
            "{missing}"
        );
    }

    #[test]
    fn the_database_url_picks_the_backend() {
        let sqlite = |url: &str| Backend::Sqlite(url.to_owned());
        assert_eq!(
            Backend::from_url(None).unwrap(),
            sqlite(DEFAULT_DATABASE_URL)
        );
        assert_eq!(
            Backend::from_url(Some("")).unwrap(),
            sqlite(DEFAULT_DATABASE_URL)
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:/tmp/t.db")).unwrap(),
            sqlite("sqlite:/tmp/t.db")
        );
        assert_eq!(
            Backend::from_url(Some("postgresql://h/db")).unwrap(),
            Backend::Postgres("postgresql://h/db".to_owned())
        );
        assert!(matches!(
            Backend::from_url(Some("mysql://h/db")),
            Err(CliError::Input(message)) if message.contains("must start with")
        ));
    }
}

//! Shared set-up for the integration tests: the built plugins, a store on
//! the test's fresh database (Postgres from `sqlx::test`, or SQLite in a
//! temporary folder), a worker run to completion, and the `taskbox` binary.
//! Nothing here is mocked.

#![allow(dead_code)]

pub mod hostile;
pub mod http_server;
pub mod pg_server;
pub mod process;
pub mod wait;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use taskbox::sandbox::{Plugins, Sandbox, SandboxConfig};
use taskbox::store::{NewTask, PgStore, SqliteStore, TaskRecord, TaskStore};
use taskbox::worker::{Shutdown, Worker, WorkerConfig, WorkerReport};

/// The folder `cargo xtask plugins` fills. A missing folder fails the test
/// with the command that builds it; nothing is skipped.
pub fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("TASKBOX_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("puts.wasm").is_file(),
        "no built plugins in {}: run the tests with `cargo xtask test` (or `cargo xtask plugins` first)",
        dir.display()
    );
    dir
}

/// A plugins folder of the test's own holding copies of the named real
/// plugins, for hostile files to be added beside them.
pub fn plugins_folder_with(real: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for name in real {
        let file = format!("{name}.wasm");
        std::fs::copy(plugins_dir().join(&file), dir.path().join(&file))
            .expect("copies a built plugin");
    }
    dir
}

pub fn plugins() -> Arc<Plugins> {
    plugins_with(SandboxConfig::default())
}

pub fn plugins_with(config: SandboxConfig) -> Arc<Plugins> {
    plugins_in(&plugins_dir(), config)
}

/// The plugins of `dir`, on a sandbox of its own.
pub fn plugins_in(dir: &std::path::Path, config: SandboxConfig) -> Arc<Plugins> {
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    Arc::new(Plugins::new(sandbox, dir))
}

/// Log lines go to the test's captured output (shown when it fails).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("taskbox=info")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn store(pool: PgPool) -> PgStore {
    init_logging();
    let store = PgStore::from_pool(pool);
    store.migrate().await.expect("migrations apply");
    store
}

/// A migrated SQLite store on a fresh file in its own temporary folder,
/// which goes when this is dropped.
pub struct SqliteDb {
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl SqliteDb {
    pub async fn new() -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = SqliteStore::open(dir.path().join(SQLITE_FILE));
        store.migrate().await.expect("migrations apply");
        SqliteDb { store, dir }
    }

    /// The `sqlite:` URL of the same file, for child processes.
    pub fn url(&self) -> String {
        sqlite_url(self.dir.path())
    }
}

/// The database file's name inside a test's temporary folder.
pub const SQLITE_FILE: &str = "t.db";

/// The `sqlite:` URL of [`SQLITE_FILE`] in `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite:{}", dir.join(SQLITE_FILE).display())
}

/// A task for `plugin` with JSON args, checked against its schema.
pub async fn task(plugins: &Plugins, plugin: &str, args: Value) -> NewTask {
    let loaded = plugins.get(plugin).await.expect("the plugin loads");
    let bytes = taskbox::schema::encode(&loaded.args_schema, &args).expect("args fit");
    NewTask::new(plugin, bytes)
}

/// A task's result as JSON, decoded with its plugin's result schema.
pub async fn result_json(plugins: &Plugins, plugin: &str, bytes: &[u8]) -> Value {
    let loaded = plugins.get(plugin).await.expect("loads");
    taskbox::schema::decode(&loaded.result_schema, bytes).expect("the result decodes")
}

pub fn worker_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        drain: true,
        ..WorkerConfig::default()
    }
}

/// Run a draining worker until nothing is left.
pub async fn drain<S: TaskStore>(
    store: &S,
    plugins: &Arc<Plugins>,
    config: WorkerConfig,
) -> WorkerReport {
    tokio::time::timeout(
        Duration::from_secs(120),
        Worker::new(store.clone(), plugins.clone(), config).run(Shutdown::default()),
    )
    .await
    .expect("the worker drains within two minutes")
    .expect("the worker runs")
}

pub async fn record<S: TaskStore>(store: &S, id: i64) -> TaskRecord {
    store
        .get(id)
        .await
        .expect("reads")
        .expect("the task exists")
}

/// Every task in the store, newest first.
pub async fn all_tasks<S: TaskStore>(store: &S) -> Vec<TaskRecord> {
    store
        .list(&taskbox::store::ListFilter {
            limit: i64::MAX,
            ..Default::default()
        })
        .await
        .expect("lists")
}

pub fn text(bytes: &Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(bytes.as_deref().unwrap_or_default()).into_owned()
}

/// The URL of the test's own database, for child processes.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by `cargo xtask test`");
    let database = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test names its database")
        .to_owned();
    let mut url = url_without_database(&base);
    url.push('/');
    url.push_str(&database);
    url
}

fn url_without_database(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// The `taskbox` binary with the test's database and the built plugins.
pub fn taskbox(pool: &PgPool) -> Command {
    taskbox_at(&database_url(pool))
}

/// The `taskbox` binary on the database at `url`, with the built plugins.
pub fn taskbox_at(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskbox"));
    command
        .env("DATABASE_URL", url)
        .env("TASKBOX_PLUGINS", plugins_dir())
        .env_remove("TASKBOX_LOG");
    command
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A child's stderr, asserted to be one line: an error is one sentence.
pub fn one_line_stderr(output: &Output) -> String {
    let stderr = stderr_of(output);
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one sentence, got: {stderr}"
    );
    stderr
}

/// Refused as bad input: exit 2, one sentence on stderr naming `mentions`,
/// nothing on stdout.
pub fn assert_refused(output: &Output, mentions: &str) {
    let stderr = one_line_stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(mentions), "{stderr}");
    assert!(output.stdout.is_empty(), "printed {:?}", stdout_of(output));
}

/// Instantiate each case, a `fn(url)`, on a fresh Postgres database and on
/// a fresh SQLite file.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $case(pool: sqlx::PgPool) {
                    super::$case(&super::common::database_url(&pool));
                }
            )+
        }

        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().expect("a temporary folder");
                    super::$case(&super::common::sqlite_url(dir.path()));
                }
            )+
        }
    };
}

//! `taskbox-client`: enqueue taskbox tasks from a Rust application and wait
//! for their results, without wasmtime. Tasks go in with typed args (the
//! plugin crate's own args type, encoded with postcard as the plugin reads
//! it), on their own or inside the application's own transaction, and a
//! waiter gets the result back as a typed value. Postgres and SQLite, the
//! same stores `taskbox worker` serves; the worker inserts through this
//! crate too, so there is one copy of the statements.
//!
//! ```no_run
//! # async fn example() -> Result<(), taskbox_client::Error> {
//! use taskbox_client::{Client, NewTask};
//! #[derive(serde::Serialize)]
//! struct Pair { a: i64, b: i64 }
//!
//! let client = Client::connect("postgres://localhost/app").await?;
//! let id = client.enqueue(NewTask::with_args("add", &Pair { a: 1, b: 2 })?).await?;
//! let sum: i64 = client.wait(id, None).await?;
//! # Ok(()) }
//! ```

pub mod postgres;
pub mod schema;
pub mod sqlite;
mod status;
pub mod task;

use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub use schema::SchemaName;
pub use status::Status;
pub use task::{BadKey, NewTask, Refused};

/// Connections a client holds at most.
pub const CLIENT_CONNECTIONS: u32 = 4;
/// How long a statement may wait for SQLite's write lock, which a busy
/// worker holds for a few milliseconds at a time.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A task as the client reads it back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskState {
    pub id: i64,
    pub plugin: String,
    pub status: Status,
    /// Attempts made so far.
    pub attempt: i32,
    /// The plugin's result (postcard bytes) once it succeeded.
    pub result: Option<Vec<u8>>,
    /// The last attempt's error.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Displayed with its cause, not returned as a `source`, so the cause
    /// is said once.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot encode the args: {0}")]
    Encode(#[from] postcard::Error),
    #[error("the result of task {id} does not decode as the type asked for: {reason}")]
    Decode { id: i64, reason: postcard::Error },
    #[error("the database URL must start with postgres://, postgresql:// or sqlite:")]
    Url,
    #[error("there is no task with id {0}")]
    NoSuchTask(i64),
    /// The task ended, but not in success.
    #[error("task {id} ended {status}: {error}")]
    Failed {
        id: i64,
        status: Status,
        error: String,
    },
    /// The wait's limit ran out first.
    #[error("task {id} is still {status} after {}", humantime::format_duration(*.waited))]
    StillRunning {
        id: i64,
        status: Status,
        waited: Duration,
    },
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::Database(err)
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres { pool: PgPool, schema: SchemaName },
    Sqlite(SqlitePool),
}

/// A connection pool to taskbox's tables, for enqueueing and waiting.
#[derive(Debug, Clone)]
pub struct Client {
    backend: Backend,
}

impl Client {
    /// Connect to `url` (`postgres://...`, `postgresql://...` or
    /// `sqlite:PATH`), in the default schema on Postgres.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_in(url, SchemaName::default()).await
    }

    /// Connect to `url`, using `schema` on Postgres (the workers'
    /// `--schema`).
    pub async fn connect_in(url: &str, schema: SchemaName) -> Result<Self, Error> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options: PgConnectOptions = url.parse()?;
            let pool = PgPoolOptions::new()
                .max_connections(CLIENT_CONNECTIONS)
                .connect_with(options)
                .await?;
            Backend::Postgres { pool, schema }
        } else if url.starts_with("sqlite:") {
            let options: SqliteConnectOptions = url.parse()?;
            let pool = SqlitePoolOptions::new()
                .max_connections(CLIENT_CONNECTIONS)
                .connect_with(options.busy_timeout(SQLITE_BUSY_TIMEOUT))
                .await?;
            Backend::Sqlite(pool)
        } else {
            return Err(Error::Url);
        };
        Ok(Client { backend })
    }

    /// Enqueue one task; its id.
    pub async fn enqueue(&self, task: NewTask) -> Result<i64, Error> {
        let ids = self.enqueue_many(std::slice::from_ref(&task)).await?;
        Ok(ids[0])
    }

    /// Enqueue tasks all or nothing; their ids in input order.
    pub async fn enqueue_many(&self, tasks: &[NewTask]) -> Result<Vec<i64>, Error> {
        task::check(tasks, task::DEFAULT_MAX_ARGS_BYTES, chrono::Utc::now())?;
        match &self.backend {
            Backend::Postgres { pool, schema } => Ok(postgres::insert(pool, schema, tasks).await?),
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let ids = sqlite::insert(&mut tx, tasks, sqlite::now_micros()).await?;
                tx.commit().await?;
                Ok(ids)
            }
        }
    }

    /// A task's state; `None` when there is no such task.
    pub async fn task(&self, id: i64) -> Result<Option<TaskState>, Error> {
        Ok(match &self.backend {
            Backend::Postgres { pool, schema } => postgres::task(pool, schema, id).await?,
            Backend::Sqlite(pool) => sqlite::task(pool, id).await?,
        })
    }

    /// Wait for task `id` to end (for at most `limit`) and decode its
    /// result as `R`. A task that ended otherwise is [`Error::Failed`]; a
    /// limit that runs out first is [`Error::StillRunning`].
    pub async fn wait<R: DeserializeOwned>(
        &self,
        id: i64,
        limit: Option<Duration>,
    ) -> Result<R, Error> {
        let ended = async {
            match &self.backend {
                Backend::Postgres { pool, schema } => {
                    postgres::wait_until_ended(pool, schema, id).await
                }
                Backend::Sqlite(pool) => sqlite::wait_until_ended(pool, id).await,
            }
        };
        let ended = match limit {
            Some(limit) => match tokio::time::timeout(limit, ended).await {
                Ok(ended) => ended?,
                Err(_) => {
                    let state = self.task(id).await?.ok_or(Error::NoSuchTask(id))?;
                    return Err(Error::StillRunning {
                        id,
                        status: state.status,
                        waited: limit,
                    });
                }
            },
            None => ended.await?,
        };
        let state = ended.ok_or(Error::NoSuchTask(id))?;
        if state.status != Status::Success {
            return Err(Error::Failed {
                id,
                status: state.status,
                error: state.error.unwrap_or_default(),
            });
        }
        postcard::from_bytes(state.result.as_deref().unwrap_or_default())
            .map_err(|reason| Error::Decode { id, reason })
    }
}

/// Enqueue `tasks` inside the caller's Postgres transaction (or on any
/// connection): they exist if and only if it commits, and workers wake at
/// the commit. `schema` is the workers' `--schema`.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), taskbox_client::Error> {
/// let mut tx = pool.begin().await?;
/// // ... the application's own writes on `tx` ...
/// let task = taskbox_client::NewTask::with_args("add", &(1i64, 2i64))?;
/// taskbox_client::enqueue_in(&mut *tx, &Default::default(), &[task]).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue_in(
    conn: &mut sqlx::PgConnection,
    schema: &SchemaName,
    tasks: &[NewTask],
) -> Result<Vec<i64>, Error> {
    task::check(tasks, task::DEFAULT_MAX_ARGS_BYTES, chrono::Utc::now())?;
    Ok(postgres::insert(conn, schema, tasks).await?)
}

/// [`enqueue_in`] for SQLite: inside the caller's transaction on the
/// database file the worker serves.
pub async fn enqueue_in_sqlite(
    conn: &mut sqlx::SqliteConnection,
    tasks: &[NewTask],
) -> Result<Vec<i64>, Error> {
    task::check(tasks, task::DEFAULT_MAX_ARGS_BYTES, chrono::Utc::now())?;
    Ok(sqlite::insert(conn, tasks, sqlite::now_micros()).await?)
}

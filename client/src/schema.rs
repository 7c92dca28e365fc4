//! The Postgres schema taskbox lives in: what a schema name may be, and the
//! notification channels and search path it gives. The worker creates the
//! schema; an application names it to enqueue and wait.

use sqlx::postgres::PgConnectOptions;

/// The schema taskbox keeps its tables, functions and migration history in
/// unless told otherwise (`--schema`, `TASKBOX_SCHEMA`).
pub const DEFAULT_SCHEMA: &str = "taskbox";
/// Appended to the schema's name to name the channel every enqueue notifies
/// and every worker listens on (`taskbox_tasks`).
pub const TASKS_CHANNEL_SUFFIX: &str = "_tasks";
/// Appended to the schema's name to name the channel carrying the id of a
/// running task to interrupt (`taskbox_cancel`). One per schema: ids are
/// per schema, so a cancel in one must not interrupt the same id in another.
pub const CANCEL_CHANNEL_SUFFIX: &str = "_cancel";
/// Appended to the schema's name to name the channel a waited-for task's
/// end is told on, with its id (`taskbox_ended`).
pub const ENDED_CHANNEL_SUFFIX: &str = "_ended";
/// Longest schema name taken: its channels must fit Postgres's 63-byte
/// identifiers.
pub const MAX_SCHEMA_NAME: usize = 63 - CANCEL_CHANNEL_SUFFIX.len();
/// Why a schema name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaNameError {
    #[error("a schema name cannot be empty")]
    Empty,
    #[error(
        "`{0}` is not a schema name taskbox takes: use lowercase ASCII letters, digits and underscores, starting with a letter or an underscore"
    )]
    Characters(String),
    #[error(
        "a schema name is at most {MAX_SCHEMA_NAME} characters, so that its notification channels fit Postgres's names"
    )]
    TooLong,
    #[error("schema names starting with `pg_` are reserved by Postgres")]
    Reserved,
}

/// A schema's name, checked: lowercase ASCII letters, digits and
/// underscores, starting with a letter or an underscore, at most
/// [`MAX_SCHEMA_NAME`] characters, not `pg_...`. Such a name means the same
/// quoted or not, so users can write it in SQL as they see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn new(name: &str) -> Result<Self, SchemaNameError> {
        let mut chars = name.chars();
        let Some(first) = chars.next() else {
            return Err(SchemaNameError::Empty);
        };
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if !(first.is_ascii_lowercase() || first == '_') || !chars.all(allowed) {
            return Err(SchemaNameError::Characters(name.to_owned()));
        }
        if name.len() > MAX_SCHEMA_NAME {
            return Err(SchemaNameError::TooLong);
        }
        if name.starts_with("pg_") {
            return Err(SchemaNameError::Reserved);
        }
        Ok(SchemaName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as SQL text: quoted, so a name that is also a keyword
    /// (`user`, `select`) still works.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The channel enqueues notify and workers listen on.
    pub fn tasks_channel(&self) -> String {
        format!("{}{TASKS_CHANNEL_SUFFIX}", self.0)
    }

    /// The channel carrying the ids of running tasks to interrupt.
    pub fn cancel_channel(&self) -> String {
        format!("{}{CANCEL_CHANNEL_SUFFIX}", self.0)
    }

    /// The channel the end of a task someone waits for is told on.
    pub fn ended_channel(&self) -> String {
        format!("{}{ENDED_CHANNEL_SUFFIX}", self.0)
    }

    /// `options` whose connections see this schema alone (and the system
    /// catalog, which Postgres always searches): every unqualified name a
    /// statement uses is taskbox's.
    pub fn search_path_of(&self, options: PgConnectOptions) -> PgConnectOptions {
        options.options([("search_path", self.quoted())])
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        SchemaName(DEFAULT_SCHEMA.to_owned())
    }
}

impl std::str::FromStr for SchemaName {
    type Err = SchemaNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SchemaName::new(name)
    }
}

impl std::fmt::Display for SchemaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

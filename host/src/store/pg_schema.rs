//! Getting the Postgres schema taskbox lives in (its name, channels and
//! search path are `taskbox_client::schema`'s) ready before migrations run, which once moves a database made before
//! schemas existed (taskbox's tables and migration history in `public`)
//! into it. Every other statement is in `postgres.rs`.

use std::collections::HashMap;

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

pub use taskbox_client::schema::{
    CANCEL_CHANNEL_SUFFIX, DEFAULT_SCHEMA, ENDED_CHANNEL_SUFFIX, MAX_SCHEMA_NAME, SchemaName,
    SchemaNameError, TASKS_CHANNEL_SUFFIX,
};

/// The history sqlx keeps of applied migrations, a table in the schema.
const HISTORY: &str = "_sqlx_migrations";
/// The tables the migrations made before schemas existed created in
/// `public`, each with the version of the migration that created it: a
/// table is taskbox's to move only when that migration is in taskbox's
/// history.
const PUBLIC_TABLES: [(&str, i64); 4] = [
    ("tasks", 1),
    ("workers", 1),
    ("leases", 2),
    ("plugin_schemas", 5),
];
/// Transaction-scoped advisory lock serialising schema creation and the
/// move, so processes starting together do both once ("taskbox" in ASCII).
const PREPARE_LOCK: i64 = 0x0074_6173_6b62_6f78;

/// What [`prepare`] moved out of `public`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub tables: Vec<&'static str>,
}

/// Make sure `schema` exists before migrations run on `conn` (whose search
/// path is the schema). The first time, if `public` holds what the release
/// before schemas made (taskbox's own migration history, by version and
/// checksum, and its `tasks` table), its tables and history move into the
/// schema in one transaction, every row kept; migrations then carry on from
/// there. Anything else in `public` is left alone.
pub(crate) async fn prepare(
    conn: &mut PgConnection,
    schema: &SchemaName,
    migrator: &Migrator,
) -> Result<Option<Moved>, sqlx::Error> {
    // The usual case, one round trip: the schema has its history already.
    if has_history(conn, schema).await? {
        return Ok(None);
    }
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PREPARE_LOCK)
        .execute(&mut *tx)
        .await?;
    // Another process may have finished while this one waited.
    if has_history(&mut tx, schema).await? {
        return Ok(None);
    }
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()))
        .execute(&mut *tx)
        .await?;
    let moved = match taskbox_history_in_public(&mut tx, schema, migrator).await? {
        Some(history) => Some(move_from_public(&mut tx, schema, &history).await?),
        None => None,
    };
    tx.commit().await?;
    if let Some(moved) = &moved {
        tracing::info!(
            schema = schema.as_str(),
            tables = ?moved.tables,
            "moved taskbox's tables and migration history from public into its schema"
        );
    }
    Ok(moved)
}

async fn has_history(conn: &mut PgConnection, schema: &SchemaName) -> Result<bool, sqlx::Error> {
    relation_exists(conn, schema.as_str(), HISTORY).await
}

async fn relation_exists(
    conn: &mut PgConnection,
    schema: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL")
        .bind(schema)
        .bind(name)
        .fetch_one(&mut *conn)
        .await
}

/// The versions in `public`'s migration history, when they are the
/// previous release's: the first migration is there, every version taskbox
/// knows has taskbox's checksum, `public.tasks` exists, and the schema
/// holds no `tasks` of its own. `None` for anything else (an application's
/// own history, a fresh database, a schema already in use).
async fn taskbox_history_in_public(
    conn: &mut PgConnection,
    schema: &SchemaName,
    migrator: &Migrator,
) -> Result<Option<Vec<i64>>, sqlx::Error> {
    if schema.as_str() == "public"
        || !relation_exists(conn, "public", HISTORY).await?
        || !relation_exists(conn, "public", "tasks").await?
        || relation_exists(conn, schema.as_str(), "tasks").await?
    {
        return Ok(None);
    }
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as(&format!("SELECT version, checksum FROM public.{HISTORY}"))
            .fetch_all(&mut *conn)
            .await?;
    let ours: HashMap<i64, &[u8]> = migrator
        .iter()
        .map(|migration| (migration.version, &*migration.checksum))
        .collect();
    let first = migrator.iter().map(|migration| migration.version).min();
    let has_first = rows.iter().any(|(version, _)| Some(*version) == first);
    let checksums_match = rows.iter().all(|(version, checksum)| {
        ours.get(version)
            .is_none_or(|expected| *expected == checksum.as_slice())
    });
    if !has_first || !checksums_match {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|(version, _)| version)
            .filter(|version| ours.contains_key(version))
            .collect(),
    ))
}

/// Move taskbox's tables (with their indexes, constraints and identity
/// sequences, which follow a table) and its history rows from `public`
/// into the schema. The migrations made before schemas created no
/// functions, triggers or types, so tables are all there is to move.
async fn move_from_public(
    conn: &mut PgConnection,
    schema: &SchemaName,
    applied: &[i64],
) -> Result<Moved, sqlx::Error> {
    let mut tables = Vec::new();
    for (table, created_by) in PUBLIC_TABLES {
        if applied.contains(&created_by) && relation_exists(conn, "public", table).await? {
            sqlx::query(&format!(
                "ALTER TABLE public.{table} SET SCHEMA {}",
                schema.quoted()
            ))
            .execute(&mut *conn)
            .await?;
            tables.push(table);
        }
    }
    let foreign: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM public.{HISTORY} WHERE version <> ALL($1)"
    ))
    .bind(applied)
    .fetch_one(&mut *conn)
    .await?;
    if foreign == 0 {
        sqlx::query(&format!(
            "ALTER TABLE public.{HISTORY} SET SCHEMA {}",
            schema.quoted()
        ))
        .execute(&mut *conn)
        .await?;
    } else {
        // Someone else's migrations share the table (possible only with
        // sqlx's `ignore_missing`): move taskbox's rows, leave theirs.
        let target = schema.quoted();
        sqlx::query(&format!(
            "CREATE TABLE {target}.{HISTORY} (LIKE public.{HISTORY} INCLUDING ALL)"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "WITH taken AS (DELETE FROM public.{HISTORY} WHERE version = ANY($1) RETURNING *)
             INSERT INTO {target}.{HISTORY} SELECT * FROM taken"
        ))
        .bind(applied)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Moved { tables })
}

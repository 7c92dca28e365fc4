-- The args and result schemas each plugin version declared, by digest, as
-- in the Postgres store: `show` decodes a result with the schema of the
-- version that wrote it, after the plugin file has been replaced.
CREATE TABLE plugin_schemas (
    digest        TEXT PRIMARY KEY CHECK (digest LIKE 'sha256:%'),
    args_schema   BLOB NOT NULL,
    result_schema BLOB NOT NULL
) STRICT;

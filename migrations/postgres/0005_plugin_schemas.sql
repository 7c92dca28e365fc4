-- The args and result schemas each plugin version declared, by the digest
-- a task records when it runs: `show` decodes a result with the schema of
-- the version that wrote it, after the plugin file has been replaced.
-- Written once per version by enqueue and by workers as they load it.
CREATE TABLE plugin_schemas (
    digest        text  PRIMARY KEY CHECK (digest LIKE 'sha256:%'),
    args_schema   bytea NOT NULL,
    result_schema bytea NOT NULL
);

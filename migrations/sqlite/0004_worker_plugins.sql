-- The plugins each live worker serves (a JSON array), refreshed with its
-- heartbeat, as in the Postgres store: `stats` names the plugins whose
-- waiting tasks no live worker can run.
ALTER TABLE workers ADD COLUMN plugins TEXT NOT NULL DEFAULT '[]';

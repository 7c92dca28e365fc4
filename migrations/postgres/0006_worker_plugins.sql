-- The plugins each live worker serves, refreshed with its heartbeat:
-- workers claim only tasks of plugins they have loaded, and `stats` names
-- the plugins whose waiting tasks no live worker can run.
ALTER TABLE workers ADD COLUMN plugins text[] NOT NULL DEFAULT '{}';

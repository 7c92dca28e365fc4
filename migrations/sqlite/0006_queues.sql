-- Queues with settings of their own. A queue needs no row to be used: a
-- row exists once someone sets something on it. `paused_at` (microseconds
-- since the epoch) set: no worker claims the queue's tasks; running ones
-- finish.
CREATE TABLE queues (
    name TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    paused_at INTEGER
) STRICT;

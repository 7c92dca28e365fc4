-- Queues with settings of their own. A queue needs no row to be used: a
-- row exists once someone sets something on it. `paused_at` set: no worker
-- claims the queue's tasks; running ones finish.
CREATE TABLE queues (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    paused_at timestamptz
);

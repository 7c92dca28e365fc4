-- The runs a limit counts, one row per claim instead of one per run: the
-- claim's tasks and, in the same order, their keys. A claim writes one row
-- and a completion changes the few rows holding its tasks, where a row per
-- run cost an insert with two index entries at every claim, a delete at
-- every completion, and a read of every counted run (and of the dead ones
-- the drain left) at every claim of the queue. A completion leaves a row
-- it empties in place (a delete would lose a concurrent completion's
-- change to it); the next claim of its queue removes it.
CREATE TABLE counted_claims (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue    text     NOT NULL,
    task_ids bigint[] NOT NULL,
    keys     text[]   NOT NULL,
    CONSTRAINT a_key_per_task CHECK (cardinality(task_ids) = cardinality(keys))
);

-- A claim's row stays on its page (as a lease's does) up to about 500 tasks
-- with short keys, instead of moving its arrays to TOAST at 2 kB.
ALTER TABLE counted_claims SET (toast_tuple_target = 8160);

INSERT INTO counted_claims (queue, task_ids, keys)
SELECT queue, array_agg(task_id ORDER BY task_id), array_agg(key ORDER BY task_id)
FROM counted_runs
GROUP BY queue;

DROP TABLE counted_runs;

-- Waiting for a result (`taskbox wait`, `enqueue --wait`, the client's
-- `wait`): a waiter marks its task `waited` and listens on the schema's
-- ended channel; the statements that end a task (completion, cancel,
-- rescue) notify for the waited ones among the rows they end, at commit.
-- Tasks nobody waits for send nothing. (A row trigger did the same and cost
-- the drain 10-20%.)
ALTER TABLE tasks ADD COLUMN waited boolean NOT NULL DEFAULT false;

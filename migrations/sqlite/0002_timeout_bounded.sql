-- A task's timeout is at most a week (taskbox::store::MAX_TASK_TIMEOUT,
-- 604 800 000 ms), as in migrations/postgres/0004_timeout_bounded.sql. An
-- unbounded one overflowed the claim's deadline into a REAL that the STRICT
-- table refused, failing every claim of every task. SQLite cannot add a
-- CHECK to an existing table, so triggers enforce it on rows as they are
-- written; the claim ends any older row past it `error` with a reason.
CREATE TRIGGER timeout_bounded_insert BEFORE INSERT ON tasks
WHEN NEW.timeout_ms > 604800000
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: timeout_bounded');
END;

CREATE TRIGGER timeout_bounded_update BEFORE UPDATE OF timeout_ms ON tasks
WHEN NEW.timeout_ms > 604800000
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: timeout_bounded');
END;

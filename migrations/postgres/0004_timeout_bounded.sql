-- A task's timeout is at most a week (taskbox::store::MAX_TASK_TIMEOUT,
-- 604 800 000 ms). An unbounded one (`--timeout 300000000y`) could not be
-- added to now() when the task was claimed, and the error failed every claim
-- of every task. The CHECK applies to rows as they are written (NOT VALID:
-- rows written before it are not rewritten); the claim itself ends any such
-- older row `error` with a reason instead of failing.
ALTER TABLE tasks ADD CONSTRAINT timeout_bounded
    CHECK (timeout_ms IS NULL OR timeout_ms <= 604800000) NOT VALID;

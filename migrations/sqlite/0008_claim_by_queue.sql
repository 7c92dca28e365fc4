-- Each queue's waiting tasks in claim order, for a claim that takes some
-- queues and not others (a worker's `--queue`s, or beside a paused or
-- limited queue): it reads each queue it takes from its own first task,
-- where the walk over every queue in claim order (`tasks_claim`) would read
-- through all the waiting tasks of the queues it leaves.
CREATE INDEX tasks_queue_order ON tasks (queue, priority, run_at, id) WHERE status = 'waiting';

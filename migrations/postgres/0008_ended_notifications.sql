-- Waiting for a result (`taskbox wait`, `enqueue --wait`): a waiter marks
-- its task `waited` and listens; when that task's status becomes final, by
-- whatever path (completion, cancel, rescue, a refused claim), this trigger
-- notifies the waiter at commit. Tasks nobody waits for send nothing, so
-- the completion of a batch pays only for the WHEN check.
ALTER TABLE tasks ADD COLUMN waited boolean NOT NULL DEFAULT false;

CREATE FUNCTION notify_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The schema's own channel (`taskbox_ended` by default): ids are per
    -- schema.
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_ended', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_ended AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN (NEW.waited AND NEW.status IN ('success', 'error', 'timeout', 'cancelled'))
EXECUTE FUNCTION notify_ended();

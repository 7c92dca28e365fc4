-- A task's key (see 0011_flow.sql) from SQL: `enqueue(..., key => 'tenant-42')`
-- and a "key" field in enqueue_many's objects. The rule is the command
-- line's and the client's (taskbox_client::task::check_key): visible text
-- of at most 128 characters; NULL is no key. Bad input raises SQLSTATE
-- 22023 (invalid_parameter_value) with one sentence, as checked_task does.
CREATE FUNCTION checked_key(key text) RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    END IF;
    IF btrim(key) = '' THEN
        RAISE EXCEPTION 'a key cannot be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF key ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'a key cannot hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF char_length(key) > 128 THEN
        RAISE EXCEPTION 'a key is at most 128 characters (it was %)', char_length(key)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN key;
END;
$$;

-- enqueue gains a last argument, so every call written before keeps
-- working; a new signature is a new function, hence the drop.
DROP FUNCTION enqueue(text, jsonb, text, integer, timestamptz, integer, interval);
CREATE FUNCTION enqueue(
    plugin       text,
    args         jsonb,
    queue        text        DEFAULT 'default',
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts integer     DEFAULT 1,
    timeout      interval    DEFAULT NULL,
    key          text        DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    task   record;
    new_id bigint;
BEGIN
    task := checked_task(plugin, args, queue, priority, run_at, max_attempts, timeout);
    INSERT INTO tasks (queue, plugin, args, args_json, priority, max_attempts, timeout_ms, run_at,
                       key)
    VALUES (task.task_queue, task.task_plugin, '\x'::bytea, task.task_args, task.task_priority,
            task.task_max_attempts, task.task_timeout_ms, task.task_run_at, checked_key(key))
    RETURNING tasks.id INTO new_id;
    PERFORM pg_notify(current_schema() || '_tasks', '');
    RETURN new_id;
END;
$$;

-- enqueue_many takes a "key" field.
CREATE OR REPLACE FUNCTION enqueue_many(tasks jsonb) RETURNS bigint[]
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    task          jsonb;
    checked       record;
    total         integer;
    item          integer := 0;
    unknown       text;
    message       text;
    state         text;
    plugins       text[] := '{}';
    args          jsonb[] := '{}';
    queues        text[] := '{}';
    priorities    integer[] := '{}';
    run_ats       timestamptz[] := '{}';
    max_attempts  integer[] := '{}';
    timeouts      bigint[] := '{}';
    keys          text[] := '{}';
    ids           bigint[];
BEGIN
    IF tasks IS NULL OR jsonb_typeof(tasks) <> 'array' THEN
        RAISE EXCEPTION 'enqueue_many takes a JSON array of task objects, like [{"plugin": "add", "args": {"a": 1, "b": 2}}]'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    total := jsonb_array_length(tasks);
    IF total = 0 THEN
        RETURN '{}';
    END IF;
    BEGIN
        FOR task IN
            SELECT e.value FROM jsonb_array_elements(tasks) WITH ORDINALITY AS e(value, n)
            ORDER BY e.n
        LOOP
            item := item + 1;
            IF jsonb_typeof(task) <> 'object' THEN
                RAISE EXCEPTION 'it is not a JSON object'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT k INTO unknown FROM jsonb_object_keys(task) AS k
            WHERE k NOT IN ('plugin', 'args', 'queue', 'priority', 'run_at', 'max_attempts',
                            'timeout', 'key')
            LIMIT 1;
            IF unknown IS NOT NULL THEN
                RAISE EXCEPTION 'it has the field "%", which is none of plugin, args, queue, priority, run_at, max_attempts, timeout, key', unknown
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            checked := checked_task(
                task ->> 'plugin',
                task -> 'args',
                task ->> 'queue',
                (task ->> 'priority')::integer,
                (task ->> 'run_at')::timestamptz,
                (task ->> 'max_attempts')::integer,
                (task ->> 'timeout')::interval);
            -- Appending to a local array is done in place: linear in all.
            plugins := plugins || checked.task_plugin;
            args := args || checked.task_args;
            queues := queues || checked.task_queue;
            priorities := priorities || checked.task_priority;
            run_ats := run_ats || checked.task_run_at;
            max_attempts := max_attempts || checked.task_max_attempts;
            timeouts := timeouts || checked.task_timeout_ms;
            keys := keys || checked_key(task ->> 'key');
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'task % of %: %', item, total, message USING ERRCODE = state;
    END;
    -- Rows go in in input order, so their ids ascend in it (as in the
    -- Rust store's enqueue).
    WITH inserted AS (
        INSERT INTO tasks (queue, plugin, args, args_json, priority, max_attempts, timeout_ms,
                           run_at, key)
        SELECT n.queue, n.plugin, '\x'::bytea, n.args, n.priority, n.max_attempts, n.timeout_ms,
               n.run_at, n.key
        FROM unnest(queues, plugins, args, priorities, max_attempts, timeouts, run_ats, keys)
             WITH ORDINALITY AS n(queue, plugin, args, priority, max_attempts, timeout_ms, run_at,
                                  key, ord)
        ORDER BY n.ord
        RETURNING tasks.id
    )
    SELECT array_agg(inserted.id ORDER BY inserted.id) INTO ids FROM inserted;
    PERFORM pg_notify(current_schema() || '_tasks', '');
    RETURN ids;
END;
$$;

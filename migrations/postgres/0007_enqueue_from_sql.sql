-- Enqueue from SQL, inside the caller's transaction, from any language:
--   SELECT taskbox.enqueue('add', '{"a": 1, "b": 2}', priority => 5);
--   SELECT taskbox.enqueue_many('[{"plugin": "add", "args": {"a": 1, "b": 2}}]');
-- Both are created in the schema these migrations run in (their search
-- path; nothing here names it) and keep it as their own search path, so
-- they work whatever the caller's is.
--
-- JSON args are kept as given in `args_json`; the worker encodes them with
-- the plugin's args schema when it runs the task, and ends the task `error`
-- at once when they do not fit. Such a row's postcard `args` are empty:
-- each row holds its args in one form. (NOT VALID: no row before this one
-- has JSON args, and checking would hold the table locked for a scan.)
ALTER TABLE tasks ADD COLUMN args_json jsonb;
ALTER TABLE tasks ADD CONSTRAINT args_in_one_form
    CHECK (args_json IS NULL OR octet_length(args) = 0) NOT VALID;

-- One task's arguments checked and given their defaults; shared by
-- enqueue and enqueue_many. Every optional argument given NULL takes its
-- default; args NULL means JSON null (a plugin that takes no args), as
-- leaving ARGS_JSON out of `taskbox enqueue` does. The bounds are the
-- command line's and the stores' (taskbox::store): a timeout of at most a
-- week (MAX_TASK_TIMEOUT), run_at at most 3653 days ahead
-- (MAX_SCHEDULE_AHEAD), args of at most 4 MiB (DEFAULT_MAX_ARGS_BYTES, here
-- of JSON text), a queue name of visible text of at most 128 characters
-- (MAX_QUEUE_NAME). Bad input raises SQLSTATE 22023
-- (invalid_parameter_value) with one sentence.
CREATE FUNCTION checked_task(
    plugin       text,
    args         jsonb,
    queue        text,
    priority     integer,
    run_at       timestamptz,
    max_attempts integer,
    timeout      interval,
    OUT task_plugin       text,
    OUT task_args         jsonb,
    OUT task_queue        text,
    OUT task_priority     integer,
    OUT task_run_at       timestamptz,
    OUT task_max_attempts integer,
    OUT task_timeout_ms   bigint
)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    timeout_msecs numeric;
    args_bytes    integer;
BEGIN
    IF plugin IS NULL OR btrim(plugin) = '' THEN
        RAISE EXCEPTION 'the plugin name is NULL or empty; pass the name of a plugin file without .wasm'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    task_queue := coalesce(queue, 'default');
    IF btrim(task_queue) = '' THEN
        RAISE EXCEPTION 'a queue name cannot be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF task_queue ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'a queue name cannot hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF char_length(task_queue) > 128 THEN
        RAISE EXCEPTION 'a queue name is at most 128 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    task_max_attempts := coalesce(max_attempts, 1);
    IF task_max_attempts < 1 THEN
        RAISE EXCEPTION 'max_attempts must be at least 1 (it was %)', task_max_attempts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF timeout IS NOT NULL THEN
        timeout_msecs := floor(extract(epoch FROM timeout) * 1000);
        IF timeout_msecs < 1 THEN
            RAISE EXCEPTION 'the timeout must be at least 1 millisecond (it was %)', timeout
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF timeout_msecs > 604800000 THEN
            RAISE EXCEPTION 'the timeout is %, more than the maximum of 7 days', timeout
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        task_timeout_ms := timeout_msecs;
    END IF;
    task_run_at := coalesce(run_at, now());
    IF NOT isfinite(task_run_at) THEN
        RAISE EXCEPTION 'run_at must be a time, not %', task_run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF task_run_at > now() + interval '3653 days' THEN
        RAISE EXCEPTION 'run_at is %, more than the maximum of 3653 days from now', task_run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    task_args := coalesce(args, 'null'::jsonb);
    args_bytes := octet_length(task_args::text);
    IF args_bytes > 4194304 THEN
        RAISE EXCEPTION 'the args are % bytes of JSON, more than the limit of 4194304 bytes', args_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    task_plugin := plugin;
    task_priority := coalesce(priority, 0);
END;
$$;

-- One task, in the caller's transaction; returns its id. Nothing is
-- written when the arguments are refused (see checked_task). Workers are
-- woken at commit: pg_notify is transactional, on the schema's tasks
-- channel (`<schema>_tasks`).
CREATE FUNCTION enqueue(
    plugin       text,
    args         jsonb,
    queue        text        DEFAULT 'default',
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts integer     DEFAULT 1,
    timeout      interval    DEFAULT NULL
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
    INSERT INTO tasks (queue, plugin, args, args_json, priority, max_attempts, timeout_ms, run_at)
    VALUES (task.task_queue, task.task_plugin, '\x'::bytea, task.task_args, task.task_priority,
            task.task_max_attempts, task.task_timeout_ms, task.task_run_at)
    RETURNING tasks.id INTO new_id;
    PERFORM pg_notify(current_schema() || '_tasks', '');
    RETURN new_id;
END;
$$;

-- Many tasks in one call: a JSON array of objects with enqueue's argument
-- names as keys (`plugin` and `args` as above, `timeout` as interval text
-- such as "30 seconds" or "250ms", `run_at` as timestamptz text), all or
-- nothing, written by one statement. Returns the new ids in input order,
-- as an array (a set has no order of its own once a query wraps it). A
-- refusal names the task: "task 2 of 3: ...".
CREATE FUNCTION enqueue_many(tasks jsonb) RETURNS bigint[]
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
                            'timeout')
            LIMIT 1;
            IF unknown IS NOT NULL THEN
                RAISE EXCEPTION 'it has the field "%", which is none of plugin, args, queue, priority, run_at, max_attempts, timeout', unknown
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
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'task % of %: %', item, total, message USING ERRCODE = state;
    END;
    -- Rows go in in input order, so their ids ascend in it (as in the
    -- Rust store's enqueue).
    WITH inserted AS (
        INSERT INTO tasks (queue, plugin, args, args_json, priority, max_attempts, timeout_ms,
                           run_at)
        SELECT n.queue, n.plugin, '\x'::bytea, n.args, n.priority, n.max_attempts, n.timeout_ms,
               n.run_at
        FROM unnest(queues, plugins, args, priorities, max_attempts, timeouts, run_ats)
             WITH ORDINALITY AS n(queue, plugin, args, priority, max_attempts, timeout_ms, run_at,
                                  ord)
        ORDER BY n.ord
        RETURNING tasks.id
    )
    SELECT array_agg(inserted.id ORDER BY inserted.id) INTO ids FROM inserted;
    PERFORM pg_notify(current_schema() || '_tasks', '');
    RETURN ids;
END;
$$;

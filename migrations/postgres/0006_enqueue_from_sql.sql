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

-- Every optional argument given NULL takes its default; args NULL means
-- JSON null (a plugin that takes no args), as leaving ARGS_JSON out of
-- `taskbox enqueue` does. The bounds are the command line's and the
-- stores' (taskbox::store): a timeout of at most a week
-- (MAX_TASK_TIMEOUT), run_at at most 3653 days ahead (MAX_SCHEDULE_AHEAD),
-- args of at most 4 MiB (DEFAULT_MAX_ARGS_BYTES, here of JSON text), a
-- queue name of visible text of at most 128 characters (MAX_QUEUE_NAME).
-- Bad input raises SQLSTATE 22023 (invalid_parameter_value) with one
-- sentence and writes nothing. Workers are woken at commit: pg_notify is
-- transactional, on the schema's tasks channel (`<schema>_tasks`).
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
    timeout_msecs numeric;
    args_bytes    integer;
    new_id        bigint;
BEGIN
    IF plugin IS NULL OR btrim(plugin) = '' THEN
        RAISE EXCEPTION 'the plugin name is NULL or empty; pass the name of a plugin file without .wasm'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    queue := coalesce(queue, 'default');
    IF btrim(queue) = '' THEN
        RAISE EXCEPTION 'a queue name cannot be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF queue ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'a queue name cannot hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF char_length(queue) > 128 THEN
        RAISE EXCEPTION 'a queue name is at most 128 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    max_attempts := coalesce(max_attempts, 1);
    IF max_attempts < 1 THEN
        RAISE EXCEPTION 'max_attempts must be at least 1 (it was %)', max_attempts
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
    END IF;
    run_at := coalesce(run_at, now());
    IF NOT isfinite(run_at) THEN
        RAISE EXCEPTION 'run_at must be a time, not %', run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF run_at > now() + interval '3653 days' THEN
        RAISE EXCEPTION 'run_at is %, more than the maximum of 3653 days from now', run_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    args := coalesce(args, 'null'::jsonb);
    args_bytes := octet_length(args::text);
    IF args_bytes > 4194304 THEN
        RAISE EXCEPTION 'the args are % bytes of JSON, more than the limit of 4194304 bytes', args_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO tasks (queue, plugin, args, args_json, priority, max_attempts, timeout_ms, run_at)
    VALUES (enqueue.queue, enqueue.plugin, '\x'::bytea, enqueue.args,
            coalesce(enqueue.priority, 0), enqueue.max_attempts, timeout_msecs::bigint,
            enqueue.run_at)
    RETURNING tasks.id INTO new_id;
    PERFORM pg_notify(current_schema() || '_tasks', '');
    RETURN new_id;
END;
$$;

-- Many tasks in one call: a JSON array of objects with enqueue's argument
-- names as keys (`plugin` and `args` as above, `timeout` as interval text
-- such as "30 seconds" or "250ms", `run_at` as a timestamptz text), all or
-- nothing. Returns the new ids in input order, as an array (a set has no
-- order of its own once a query wraps it). A refusal names the task:
-- "task 2 of 3: ...".
CREATE FUNCTION enqueue_many(tasks jsonb) RETURNS bigint[]
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    task    jsonb;
    ids     bigint[] := '{}';
    total   integer;
    item    integer := 0;
    unknown text;
    message text;
    state   text;
BEGIN
    IF tasks IS NULL OR jsonb_typeof(tasks) <> 'array' THEN
        RAISE EXCEPTION 'enqueue_many takes a JSON array of task objects, like [{"plugin": "add", "args": {"a": 1, "b": 2}}]'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    total := jsonb_array_length(tasks);
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
            ids := ids || enqueue(
                plugin       => task ->> 'plugin',
                args         => task -> 'args',
                queue        => task ->> 'queue',
                priority     => (task ->> 'priority')::integer,
                run_at       => (task ->> 'run_at')::timestamptz,
                max_attempts => (task ->> 'max_attempts')::integer,
                timeout      => (task ->> 'timeout')::interval);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'task % of %: %', item, total, message USING ERRCODE = state;
    END;
    RETURN ids;
END;
$$;

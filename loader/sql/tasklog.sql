-- The Celery task log (task_logs), kept by signal handlers in the workers.

-- name: tasklog_timeouts
-- Bound this transaction's statements and lock waits: a task-log write must stay cheap for the task.
-- A timeout the role or session sets stricter (not 0, and shorter) stays in force; compared
-- as intervals (current_setting shows '5s', '1500ms' or 0; %(timeout)s comes as '<n>ms').
SELECT set_config(v.name,
                  CASE WHEN current_setting(v.name)::interval > interval '0'
                            AND current_setting(v.name)::interval < %(timeout)s::text::interval
                       THEN current_setting(v.name) ELSE %(timeout)s::text END,
                  true)
FROM (VALUES ('statement_timeout'), ('lock_timeout')) AS v (name);

-- name: tasklog_upsert
-- Record a task's state, one row per task_id: PENDING only creates, links only an existing chain.
--
-- * PENDING comes from the publisher and may arrive after the worker already
--   wrote STARTED or later, so on conflict it changes nothing.
-- * The task's chain_id header is resolved to chain_executions.id (the
--   application's TaskLog links chains by id): a chain id that is not (yet) in
--   chain_executions leaves chain_execution_id NULL instead of failing the FK.
-- * retries never goes down (a late write of an earlier attempt cannot undo a
--   retry); error keeps the last failure's text until a new one replaces it.
-- * started_at is the first start; finished_at is set by SUCCESS / FAILURE /
--   REVOKED and cleared when a redelivered task starts again.
INSERT INTO task_logs AS t (task_id, task_name, chain_execution_id, status, retries, error, started_at, finished_at)
SELECT %(task_id)s,
       %(task_name)s,
       (SELECT c.id FROM chain_executions c WHERE c.chain_id = %(chain_id)s),
       %(status)s::process_status,
       %(retries)s,
       %(error)s,
       CASE WHEN %(status)s::process_status <> 'PENDING' THEN now() END,
       CASE WHEN %(status)s::process_status IN ('SUCCESS', 'FAILURE', 'REVOKED') THEN now() END
ON CONFLICT (task_id) DO UPDATE SET
    task_name   = COALESCE(EXCLUDED.task_name, t.task_name),
    chain_execution_id = COALESCE(EXCLUDED.chain_execution_id, t.chain_execution_id),
    status      = EXCLUDED.status,
    retries     = GREATEST(t.retries, EXCLUDED.retries),
    error       = COALESCE(EXCLUDED.error, t.error),
    started_at  = COALESCE(t.started_at, EXCLUDED.started_at),
    finished_at = EXCLUDED.finished_at
WHERE EXCLUDED.status <> 'PENDING'
RETURNING status::text, retries;

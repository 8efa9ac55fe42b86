-- migration 0005: exact under overlap (replays confirmed by rows, counters only the loader sets, retention under the batch lock), plans that cannot flip, result history
--
-- Takes a loader schema from version 4 to version 5, keeping every row. Apply
-- with `loader schema upgrade`, or as a DBA:
--
--     psql -v ON_ERROR_STOP=1 -f 0005_exact_under_overlap.sql "$DSN"
--
-- * All or nothing: one transaction; any error rolls it all back.
-- * Refuses to run on any version but 4 (raises, nothing changed).
--
-- What and why (each section below says its own):

BEGIN;

SET LOCAL client_min_messages = warning;

-- The same lock as schema.sql: deployments and migrations never interleave.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7423011001); END $$;

DO $$
DECLARE
    deployed integer;
BEGIN
    SELECT max(version) INTO deployed FROM loader_schema_version;
    IF deployed IS DISTINCT FROM 4 THEN
        RAISE EXCEPTION 'migration 0005 takes loader schema version 4 to 5, but this database holds version %',
            coalesce(deployed::text, 'none')
            USING HINT = 'Run `loader schema upgrade`, which applies only the migrations a database needs.';
    END IF;
END
$$;

-- [v5 triggers: counters and replays]

-- [v5 functions: merge verdicts and positions]

-- [v5 tables: result history]

-- [v5 indexes: plans]

-- [v5 grants: roles and threat model]
-- Version 5: loader_writer updates in place only the columns a save writes,
-- not whole rows (docs/security.md, the threat model). A compromised worker
-- can no longer move a chain or an image to another batch, rename a batch,
-- change a path, an id, a declared total, a creation time or a task id;
-- updated_at is granted but kept by the touch triggers (now(), whatever is
-- written). REVOKE first: revoking a table privilege revokes its column
-- privileges too. Each list is what loader/sql writes:
--   batch_executions: the merge's and recount_batch's totals and status;
--   chain_executions: a claimed position, a replaced result's status and task counts;
--   ocr_executions:   a replaced result;
--   task_logs:        the Celery task log's upsert (loader/sql/tasklog.sql).
REVOKE UPDATE ON batch_executions, chain_executions, task_logs, ocr_executions FROM loader_writer;
GRANT UPDATE (status, total_images, completed_images, failed_images, totals_stale, updated_at)
    ON batch_executions TO loader_writer;
GRANT UPDATE (status, completed_tasks, failed_tasks, position, updated_at)
    ON chain_executions TO loader_writer;
GRANT UPDATE (status, error, public_path, model_version, updated_at)
    ON ocr_executions TO loader_writer;
GRANT UPDATE (task_name, chain_execution_id, status, retries, error, started_at, finished_at, updated_at)
    ON task_logs TO loader_writer;

INSERT INTO loader_schema_version (version, description)
VALUES (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history');

COMMIT;

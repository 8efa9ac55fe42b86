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
-- Plans that cannot flip (schema.sql, "v5 indexes: plans"): the (batch_id, status)
-- index of the chains competed with chain_executions_position_once for the merge's
-- position probe and, on an analyzed database, won it (reading the whole batch once
-- per staged input); it goes, and the failures get a partial index of their own.
-- Retention gets its index. Both are built under this transaction's locks (a plain
-- CREATE INDEX blocks writes to the table while it runs: minutes on a table of
-- millions of chains; run the upgrade when no load runs).
DROP INDEX IF EXISTS chain_executions_batch_id_status_idx;
CREATE INDEX chain_executions_failed_idx ON chain_executions (batch_id)
    WHERE status = 'FAILURE';
COMMENT ON INDEX chain_executions_failed_idx IS
    'A batch''s failed chains (`loader status` failure counts and reasons) without reading its successes; partial so that no probe of a batch''s chains by position can take it instead of chain_executions_position_once.';
CREATE INDEX batch_executions_finished_idx ON batch_executions (updated_at, id)
    WHERE status IN ('SUCCESS', 'FAILURE');
COMMENT ON INDEX batch_executions_finished_idx IS
    'Finished batches by age (retention, finished_batches_before); the predicate must match the query''s word for word.';

-- [v5 grants: roles and threat model]

INSERT INTO loader_schema_version (version, description)
VALUES (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history');

COMMIT;

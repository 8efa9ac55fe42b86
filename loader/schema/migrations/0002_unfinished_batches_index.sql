-- migration 0002: index the unfinished batches (PENDING or STARTED) by age, for `loader status --unfinished` and stuck-batch alerts
--
-- Takes a loader schema from version 1 to version 2: one partial index, and
-- loader_writer loses UPDATE on the two tables the loader only ever inserts
-- into (least privilege). No table or data change. Apply with `loader schema upgrade`,
-- or as a DBA:
--
--     psql -v ON_ERROR_STOP=1 -f 0002_unfinished_batches_index.sql "$DSN"
--
-- * All or nothing: one transaction; any error rolls it all back.
-- * Refuses to run on any version but 1 (raises, nothing changed).
-- * CREATE INDEX (not CONCURRENTLY, which cannot run in a transaction) blocks
--   writes to batch_executions while it builds: one row per batch, so
--   milliseconds even with a million batches.
--
-- Why: "which batches are not finished, oldest first?" is the operator's first
-- question (`loader status --unfinished`, alerting on stuck backfills). The
-- created_at index alone makes that walk every finished batch older than the
-- oldest unfinished one; this index holds only the unfinished ones, so the
-- answer costs the same after years of history. Batches leave it when they
-- reach SUCCESS or FAILURE, so it stays as small as the work in flight.

BEGIN;

SET LOCAL client_min_messages = warning;

-- The same lock as schema.sql: deployments and migrations never interleave.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7423011001); END $$;

DO $$
DECLARE
    deployed integer;
BEGIN
    SELECT max(version) INTO deployed FROM loader_schema_version;
    IF deployed IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'migration 0002 takes loader schema version 1 to 2, but this database holds version %',
            coalesce(deployed::text, 'none')
            USING HINT = 'Run `loader schema upgrade`, which applies only the migrations a database needs.';
    END IF;
END
$$;

CREATE INDEX batch_executions_unfinished_idx ON batch_executions (created_at, id)
    WHERE status IN ('PENDING', 'STARTED');
COMMENT ON INDEX batch_executions_unfinished_idx IS
    'Unfinished batches by age (`loader status --unfinished`); the predicate must match the query''s word for word.';

-- Version 1 granted UPDATE on every table; rows of these two are only inserted.
REVOKE UPDATE ON ocr_text_boxes, load_rejects FROM loader_writer;

INSERT INTO loader_schema_version (version, description)
VALUES (2, 'index the unfinished batches (PENDING or STARTED) by age; loader_writer may not update text boxes or rejects');

COMMIT;

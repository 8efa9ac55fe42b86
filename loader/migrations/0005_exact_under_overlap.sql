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

-- Version 5: rejects a version-3 loader stored. Version 3 numbered a Celery
-- chunk's rejects from 0 in their call, not in their batch; migration 0004 kept
-- those numbers as positions, so a redelivered chunk rejected the same line
-- again at its real position and the batch counted it twice. Migration 0005
-- marks every reject older than version 4 (its position cannot be trusted); the
-- merge matches an input of a call starting at position F, at position P, to a
-- marked open reject of the same bytes (or image_path) at P - F, and supersedes
-- that reject (resolved, by no OCR row) while the input is judged at P.
ALTER TABLE load_rejects ADD COLUMN IF NOT EXISTS legacy_position boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN load_rejects.legacy_position IS
    'Version 5: true for rejects stored before version 4, whose position may be relative to their call (version 3 numbered a Celery chunk''s rejects from 0); the merge supersedes one when the same input arrives at its batch position (its position + the call''s first position).';
-- The merge asks whether a batch holds any open ones before probing per input.
CREATE INDEX IF NOT EXISTS load_rejects_legacy_open_idx ON load_rejects (batch_id)
    WHERE legacy_position AND resolved_at IS NULL;
-- A lower position taking a duplicated image renames the image's other
-- duplicates ("first at position P"): the only column of a reject, besides
-- whether it was resolved, the workers' role may update.
GRANT UPDATE (reason) ON load_rejects TO loader_writer;

-- Not a change of the rows: updated_at stays.
ALTER TABLE load_rejects DISABLE TRIGGER load_rejects_touch;
UPDATE load_rejects SET legacy_position = true
WHERE created_at < (SELECT applied_at FROM loader_schema_version WHERE version = 4);
ALTER TABLE load_rejects ENABLE TRIGGER load_rejects_touch;
-- Chains at a position without an OCR row (`schema adopt` of version 4 gave
-- positions to the application's in-flight chains; an application deleting an
-- OCR row leaves its chain) need no repair: the merge now fills such a slot
-- with the valid input at its position, joining the chain already there.

-- [v5 tables: result history]

-- [v5 indexes: plans]

-- [v5 grants: roles and threat model]

INSERT INTO loader_schema_version (version, description)
VALUES (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history');

COMMIT;

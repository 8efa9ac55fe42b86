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
-- Version 5: a re-OCR (replace=True), a repair that replaces a stored failure
-- and a rollback (loader.history) keep the result they replace. The merge
-- copies it here in its own statement (data-modifying CTEs, no row trigger),
-- so a plain save pays nothing. docs/history.md.
ALTER TABLE ocr_executions
    ADD COLUMN IF NOT EXISTS result_version integer NOT NULL DEFAULT 1 CHECK (result_version > 0);
COMMENT ON COLUMN ocr_executions.result_version IS
    'Version 5: which result of this image the row holds: 1 for the first, one more with every replace by the loader (re-OCR, repaired failure, rollback); the earlier ones are in ocr_result_history.';

CREATE TABLE IF NOT EXISTS ocr_result_history (
    batch_id         text        NOT NULL REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    ocr_execution_id bigint      NOT NULL,
    version          integer     NOT NULL CHECK (version > 0),
    model_version    text,
    status           ocr_status  NOT NULL,
    error            text,
    public_path      text,
    texts            text[]      NOT NULL,
    confidences      double precision[] NOT NULL,
    bboxes           jsonb[]     NOT NULL,
    stored_at        timestamptz NOT NULL,
    replaced_at      timestamptz NOT NULL DEFAULT now(),
    replaced_by      bytea       NOT NULL CHECK (length(replaced_by) = 32),
    replaced_in      text        NOT NULL CHECK (replaced_in IN ('replace', 'repair')),
    PRIMARY KEY (ocr_execution_id, version),
    -- One box per index of the three arrays.
    CONSTRAINT ocr_result_history_boxes_aligned
        CHECK (cardinality(confidences) = cardinality(texts) AND cardinality(bboxes) = cardinality(texts))
);
COMMENT ON TABLE ocr_result_history IS
    'Version 5: every OCR result the loader replaced (re-OCR, repaired failure, rollback), one row per replaced version, append-only; deleted with its batch, or by retention (loader history --keep / --replaced-before).';
COMMENT ON COLUMN ocr_result_history.ocr_execution_id IS
    'The image (ocr_executions.id, which a replace keeps). No foreign key: deleting an OCR row one by one leaves its history to its batch''s deletion, and the merge pays no check per row.';
COMMENT ON COLUMN ocr_result_history.version IS
    'The ocr_executions.result_version this result had while it was the image''s current one.';
COMMENT ON COLUMN ocr_result_history.texts IS
    'The result''s text boxes in reading order, as three arrays of one element per box (empty for a failure): their texts, confidences and bboxes. Arrays, not one JSON document: copying them costs a fifth of building JSON.';
COMMENT ON COLUMN ocr_result_history.confidences IS 'Each box''s confidence, in the order of texts.';
COMMENT ON COLUMN ocr_result_history.bboxes IS 'Each box''s polygon (a JSON array of [x, y] points), in the order of texts.';
COMMENT ON COLUMN ocr_result_history.stored_at IS 'When this result was written (the OCR row''s updated_at then).';
COMMENT ON COLUMN ocr_result_history.replaced_at IS 'When the call that replaced it ran (now() of its transaction).';
COMMENT ON COLUMN ocr_result_history.replaced_by IS
    'The replacing call''s digest, as the batch''s ledger (loader_calls.digest) holds it.';
COMMENT ON COLUMN ocr_result_history.replaced_in IS 'The kind of call that replaced it: replace (re-OCR or rollback) or repair.';
-- Deleting a batch (the foreign key's cascade, one lookup per batch), a batch's versions, compare.
CREATE INDEX IF NOT EXISTS ocr_result_history_batch_idx ON ocr_result_history (batch_id, ocr_execution_id);
-- The merge inserts history; only loader_admin deletes it (retention).
GRANT SELECT, INSERT ON ocr_result_history TO loader_writer;
GRANT DELETE ON ocr_result_history TO loader_admin;

-- [v5 indexes: plans]

-- [v5 grants: roles and threat model]

INSERT INTO loader_schema_version (version, description)
VALUES (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history');

COMMIT;

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

-- Version 5: a merge never clears what it did not see. Every write by another
-- writer to a batch or to the rows it counts bumps outside_writes (the
-- triggers below, even when the batch is already stale); a merge or
-- recount_batch clears totals_stale only if the outside_writes it counted from
-- is still the row's when it writes (its UPDATE re-reads the newest row version
-- after waiting for the row's lock), so a write committed while it ran keeps
-- the mark for the next reader.
ALTER TABLE batch_executions ADD COLUMN IF NOT EXISTS outside_writes bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN batch_executions.outside_writes IS
    'Version 5: how many writes by writers other than the loader touched the batch or the rows it counts (trigger loader_note_batch_write); a merge clears totals_stale only when this is still the value it counted from.';

-- Version 5: what the ledger and the mark now mean (the comments above are version 4's).
COMMENT ON TABLE loader_calls IS
    'The calls each batch committed. A redelivered call is a replay (nothing judged or written) only when the rows at its positions confirm it (loader_locked_call); otherwise it is judged. Deleted with the batch.';
COMMENT ON COLUMN loader_calls.digest IS
    'SHA-256 of the call: its kind (plain, repair, replace), and every input with its position, over a typed canonical form (loader/save/digest.py: a Decimal and a string, bytes and str never share one).';
COMMENT ON COLUMN batch_executions.totals_stale IS
    'True when a writer other than the loader changed the counters, the status, the total or the rows they count (triggers loader_note_batch_write, loader_note_outside_write); readers then read the rows'' figures, and the next merge recounts the batch and clears it, unless another outside write came meanwhile (outside_writes). Only the loader clears it.';

-- Replaces the version-4 definition above: the status and the total are the
-- loader's too (the application's start_execution() / complete_execution(), a
-- hand-written UPDATE mark the batch stale, and readers derive the status from
-- the rows by loader_batch_status); the mark cannot be cleared, nor the count
-- of outside writes set, by another writer.
CREATE OR REPLACE FUNCTION loader_note_batch_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.declared_images := coalesce(NEW.declared_images, NEW.total_images);
        NEW.totals_stale := NEW.totals_stale OR NEW.completed_images <> 0 OR NEW.failed_images <> 0
                            OR NEW.status NOT IN ('PENDING', 'STARTED');
        NEW.outside_writes := 0;
        RETURN NEW;
    END IF;
    -- Another writer setting total_images declares the batch's size.
    IF NEW.total_images IS DISTINCT FROM OLD.total_images THEN
        NEW.declared_images := NEW.total_images;
    END IF;
    NEW.totals_stale := OLD.totals_stale OR NEW.totals_stale
        OR (NEW.completed_images, NEW.failed_images, NEW.status, NEW.total_images)
           IS DISTINCT FROM (OLD.completed_images, OLD.failed_images, OLD.status, OLD.total_images);
    NEW.outside_writes := OLD.outside_writes + (CASE WHEN NEW.totals_stale THEN 1 ELSE 0 END);
    RETURN NEW;
END
$$;

-- Replaces the version-4 definition above: the batch row is written even when
-- it is already stale, so the write counts (outside_writes) for a merge
-- running meanwhile; once per transaction (a row this transaction already
-- marked is skipped: the transaction holds its lock until it commits, so a
-- merge's UPDATE sees that one bump, and the application's bulk writes do not
-- write the batch row once per row).
CREATE OR REPLACE FUNCTION loader_note_outside_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    touched text[];
BEGIN
    IF TG_TABLE_NAME = 'ocr_executions' THEN
        -- An OCR row names its chain; the chain names the batch.
        SELECT array_agg(c.batch_id) INTO touched
        FROM chain_executions c
        WHERE c.chain_id = ANY (CASE TG_OP WHEN 'INSERT' THEN ARRAY[NEW.chain_id]
                                           WHEN 'DELETE' THEN ARRAY[OLD.chain_id]
                                           ELSE ARRAY[OLD.chain_id, NEW.chain_id] END);
    ELSE
        touched := CASE TG_OP WHEN 'INSERT' THEN ARRAY[NEW.batch_id]
                              WHEN 'DELETE' THEN ARRAY[OLD.batch_id]
                              ELSE ARRAY[OLD.batch_id, NEW.batch_id] END;
    END IF;
    -- A batch being deleted in this statement is no longer visible: nothing to mark.
    UPDATE batch_executions SET totals_stale = true
    WHERE batch_id = ANY (touched) AND NOT (totals_stale AND xmin = pg_current_xact_id()::xid);
    RETURN NULL;
END
$$;

-- A batch's progress as readers see it: the stored totals, or, while another
-- writer left them stale, the rows' recount and the status loader_batch_status
-- gives it (so an outside SUCCESS at 20 % reads STARTED). get_progress reads it;
-- lock_batch reads it for a replayed call, so its report says what get_progress says.
CREATE OR REPLACE FUNCTION loader_progress(batch text)
RETURNS TABLE (batch_id text, status text, total_images bigint, declared_images integer,
               completed_images bigint, failed_images bigint, rejected_images bigint,
               created_at timestamptz, updated_at timestamptz)
-- plpgsql: resolved when run, as loader_recount is defined further down.
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT f.batch_id,
           (CASE WHEN f.totals_stale THEN loader_batch_status(f.declared, f.completed, f.failed, f.status)
                 ELSE f.status END)::text,
           CASE WHEN f.totals_stale THEN greatest(f.declared, f.completed + f.failed) ELSE f.total_images END,
           f.declared, f.completed, f.failed, f.rejected, f.created_at, f.updated_at
    FROM (
        -- The recount sits in the CASE branches, so only a stale batch pays for it.
        SELECT b.*, coalesce(b.declared_images, b.total_images) AS declared,
               -- Named by the parameter, not b.batch_id: planned for this batch,
               -- the recount seeks it through its index ("v5 indexes: plans").
               CASE WHEN b.totals_stale THEN (SELECT rc.completed FROM loader_recount(batch) rc)
                    ELSE b.completed_images END AS completed,
               CASE WHEN b.totals_stale THEN (SELECT rc.failed + rc.rejected FROM loader_recount(batch) rc)
                    ELSE b.failed_images END AS failed,
               (SELECT count(*) FROM load_rejects r
                WHERE r.batch_id = batch AND r.resolved_at IS NULL) AS rejected
        FROM batch_executions b
        WHERE b.batch_id = batch
    ) AS f;
END
$$;
COMMENT ON FUNCTION loader_progress(text) IS
    'A batch''s progress as read (get_progress, a replayed call''s report): stored totals, or the rows'' recount and derived status while totals_stale.';

-- A replay is believed only when the rows confirm it. lock_batch calls this
-- after its advisory lock was granted: VOLATILE, so under READ COMMITTED its
-- query takes a snapshot of its own, newer than the lock (lock_batch's own
-- snapshot predates it: a delete committed while it waited is invisible there).
-- A call is a replay when the ledger holds its digest for the same first
-- position and number of inputs, and the positions it covers ([first, last],
-- the call's own, not the ledger's, so a forged ledger row confirms nothing)
-- hold as many inputs (a stored image or an open reject) as the call has: a
-- range probe of two indexes. Otherwise the call is judged, which for a true
-- redelivery only finds every input unchanged: the ledger is a shortcut, never
-- the truth.
CREATE OR REPLACE FUNCTION loader_locked_call(
    call_batch text, call_digest bytea, call_first integer, call_last integer, call_inputs integer,
    OUT replayed boolean, OUT total_images bigint, OUT declared_images integer,
    OUT completed_images bigint, OUT failed_images bigint, OUT rejected_images bigint,
    OUT status text, OUT created_at timestamptz, OUT updated_at timestamptz
)
LANGUAGE sql VOLATILE AS $$
    SELECT EXISTS (SELECT FROM loader_calls l
                   WHERE l.batch_id = call_batch AND l.digest = call_digest
                     AND l.first_position IS NOT DISTINCT FROM call_first AND l.inputs = call_inputs)
           AND (SELECT count(DISTINCT h.position) FROM (
                    SELECT c.position FROM chain_executions c
                    WHERE c.batch_id = call_batch AND c.position BETWEEN call_first AND call_last
                      AND EXISTS (SELECT FROM ocr_executions o WHERE o.chain_id = c.chain_id)
                    UNION ALL
                    SELECT r.position FROM load_rejects r
                    WHERE r.batch_id = call_batch AND r.resolved_at IS NULL
                      AND r.position BETWEEN call_first AND call_last
                ) AS h) = call_inputs,
           p.total_images, p.declared_images, p.completed_images, p.failed_images, p.rejected_images,
           p.status, p.created_at, p.updated_at
    FROM (SELECT) AS one
    LEFT JOIN loader_progress(call_batch) AS p ON true
$$;
COMMENT ON FUNCTION loader_locked_call(text, bytea, integer, integer, integer) IS
    'Called by lock_batch once it holds the batch''s lock: whether the call is a replay the ledger holds and the rows at its positions confirm, and the batch''s progress, both as of after the lock.';

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
-- The merge asks whether a batch holds any open ones, then probes the one
-- position an input would have had in version 3 (its position - the call's first).
CREATE INDEX IF NOT EXISTS load_rejects_legacy_open_idx ON load_rejects (batch_id, position)
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
-- Version 5: a re-OCR (replace=True), a repair that replaces a stored failure
-- and a rollback (loader.lifecycle.history) keep the result they replace. The merge
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
    WHERE status IN ('SUCCESS', 'FAILURE') AND NOT totals_stale;
COMMENT ON INDEX batch_executions_finished_idx IS
    'Finished batches the loader counted, by age (retention, finished_batches_before); stale ones are in batch_executions_stale_idx. The predicate must match the query''s word for word.';
-- Stale batches by age: retention judges them by their rows, whatever status
-- another writer stored (finished_batches_before, loader/sql/lifecycle.sql).
CREATE INDEX IF NOT EXISTS batch_executions_stale_idx ON batch_executions (updated_at, id)
    WHERE totals_stale;

-- [v5 grants: roles and threat model]
-- Version 5: loader_writer updates in place only the columns a save writes,
-- not whole rows (docs/security.md, the threat model). A compromised worker
-- can no longer move a chain or an image to another batch, rename a batch,
-- change a path, an id, a declared total, a creation time or a task id;
-- updated_at is granted but kept by the touch triggers (now(), whatever is
-- written). REVOKE first: revoking a table privilege revokes its column
-- privileges too. Each list is what loader/sql writes:
--   batch_executions: the merge's and recount_batch's totals and status;
--   chain_executions: a claimed position, a replaced result's status and task counts
--                     (a re-OCR counts one more task run: total_tasks);
--   ocr_executions:   a replaced result and its version number (result_version);
--   task_logs:        the Celery task log's upsert (loader/sql/tasklog.sql).
REVOKE UPDATE ON batch_executions, chain_executions, task_logs, ocr_executions FROM loader_writer;
GRANT UPDATE (status, total_images, completed_images, failed_images, totals_stale, updated_at)
    ON batch_executions TO loader_writer;
GRANT UPDATE (status, total_tasks, completed_tasks, failed_tasks, position, updated_at)
    ON chain_executions TO loader_writer;
GRANT UPDATE (status, error, public_path, model_version, result_version, updated_at)
    ON ocr_executions TO loader_writer;
GRANT UPDATE (task_name, chain_execution_id, status, retries, error, started_at, finished_at, updated_at)
    ON task_logs TO loader_writer;

INSERT INTO loader_schema_version (version, description)
VALUES (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history');

COMMIT;

-- migration 0004: one identity per input (chain_executions.position), the call ledger, model_version, batch counters kept by the loader, loader_admin deletes batches
--
-- Takes a loader schema from version 3 to version 4, keeping every row. Apply
-- with `loader schema upgrade`, or as a DBA:
--
--     psql -v ON_ERROR_STOP=1 -f 0004_input_identity.sql "$DSN"
--
-- * All or nothing: one transaction; any error rolls it all back.
-- * Refuses to run on any version but 3 (raises, nothing changed).
-- * Locks: the new columns are nullable or have constant defaults (catalog-only
--   changes, no rewrite); the UNIQUE (batch_id, position) index on
--   chain_executions is built under its ACCESS EXCLUSIVE lock, reading the
--   table once.
--
-- What and why:
-- * chain_executions.position: an input's identity is its position in the
--   batch. Rows stored before this version have none (NULL); the next input of
--   the loader at a free position claims its image.
-- * loader_calls: the calls each batch committed, so a redelivery is
--   recognised in one probe.
-- * ocr_executions.model_version: which OCR model produced a result.
-- * batch_executions.declared_images / totals_stale and the triggers: the
--   counters are the loader's; a write by another writer marks the batch
--   stale and the next merge recounts it. Every batch is marked stale here,
--   since version 3 could not tell whether another writer had touched it.
-- * loader_writer may delete text boxes (a replaced result's); loader_admin
--   deletes whole batches.

BEGIN;

SET LOCAL client_min_messages = warning;

-- The same lock as schema.sql: deployments and migrations never interleave.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7423011001); END $$;

DO $$
DECLARE
    deployed integer;
BEGIN
    SELECT max(version) INTO deployed FROM loader_schema_version;
    IF deployed IS DISTINCT FROM 3 THEN
        RAISE EXCEPTION 'migration 0004 takes loader schema version 3 to 4, but this database holds version %',
            coalesce(deployed::text, 'none')
            USING HINT = 'Run `loader schema upgrade`, which applies only the migrations a database needs.';
    END IF;
END
$$;

ALTER TABLE batch_executions
    ADD COLUMN declared_images integer CHECK (declared_images >= 0),
    ADD COLUMN totals_stale boolean NOT NULL DEFAULT false;
ALTER TABLE chain_executions
    ADD COLUMN position integer CHECK (position >= 0),
    ADD CONSTRAINT chain_executions_position_once UNIQUE (batch_id, position);
ALTER TABLE ocr_executions
    ADD COLUMN model_version text CHECK (model_version <> '' AND length(model_version) <= 255);

-- Not a change of the rows: updated_at stays.
ALTER TABLE batch_executions DISABLE TRIGGER batch_executions_touch;
UPDATE batch_executions SET declared_images = total_images, totals_stale = true;
ALTER TABLE batch_executions ENABLE TRIGGER batch_executions_touch;

COMMENT ON COLUMN batch_executions.total_images IS
    'Images the batch holds: declared_images, or more when more inputs were accounted for than declared (so completed + failed never exceeds it).';
COMMENT ON COLUMN batch_executions.completed_images IS
    'Images stored with OCR status success. Kept by the loader (each merge adds its own changes under the batch''s lock); a write by anyone else marks totals_stale and the next merge recounts.';
COMMENT ON COLUMN batch_executions.failed_images IS 'Images stored with OCR status failed plus open rejects in load_rejects, so completed + failed = inputs accounted for.';
COMMENT ON COLUMN batch_executions.declared_images IS
    'Version 4: the total declared for the batch (register_batch, the first call, or a write of total_images by another writer); recount_batch brings total_images back to it.';
COMMENT ON COLUMN batch_executions.totals_stale IS
    'Version 4: true when a writer other than the loader changed the counters or the rows they count (trigger loader_note_outside_write); the next merge recounts the batch from its rows instead of adding to the stored counters, and clears it.';
COMMENT ON COLUMN chain_executions.position IS
    'Version 4: the position in the batch of the input that stored this image (a file''s line number, position_offset + index in a call): an input''s identity. NULL for chains other writers made, until an input of the loader at a free position claims the image.';
COMMENT ON COLUMN ocr_executions.model_version IS
    'Version 4: which OCR model produced this result, when the input said so; a re-OCR (save_batch(replace=True)) replaces it with the result.';
COMMENT ON COLUMN load_rejects.position IS
    'Position of the input in its batch (0-based: a file''s line number, position_offset + index in a call), as chain_executions.position for stored images.';
COMMENT ON COLUMN load_rejects.resolved_at IS
    'When a repair call fixed this input (a line at the same position stored, or refused again and recorded as a newer reject); NULL while the reject is open. Only open rejects count in failed_images; resolved ones stay for the audit trail.';

CREATE TABLE IF NOT EXISTS loader_calls (
    batch_id       text        NOT NULL REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    digest         bytea       NOT NULL CHECK (length(digest) = 32),
    first_position integer     CHECK (first_position >= 0),
    inputs         integer     NOT NULL CHECK (inputs >= 0),
    committed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, digest)
);
COMMENT ON TABLE loader_calls IS
    'Version 4: the calls each batch committed, so a redelivered call is recognised in one probe and changes nothing (at a fraction of a save''s cost). Deleted with the batch.';
COMMENT ON COLUMN loader_calls.digest IS
    'SHA-256 of the call: its kind (plain, repair, replace), and every input with its position, byte for byte.';
COMMENT ON COLUMN loader_calls.first_position IS 'Position of the call''s first input (NULL for a call with none).';

CREATE OR REPLACE FUNCTION loader_note_batch_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.declared_images := coalesce(NEW.declared_images, NEW.total_images);
        NEW.totals_stale := NEW.totals_stale OR NEW.completed_images <> 0 OR NEW.failed_images <> 0;
    ELSE
        -- Another writer setting total_images declares the batch's size.
        IF NEW.total_images IS DISTINCT FROM OLD.total_images THEN
            NEW.declared_images := NEW.total_images;
        END IF;
        IF (NEW.completed_images, NEW.failed_images) IS DISTINCT FROM (OLD.completed_images, OLD.failed_images) THEN
            NEW.totals_stale := true;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER batch_executions_written_outside BEFORE INSERT OR UPDATE ON batch_executions
    FOR EACH ROW WHEN (current_setting('loader.keeping_totals', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION loader_note_batch_write();

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
    WHERE batch_id = ANY (touched) AND NOT totals_stale;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER ocr_executions_written_outside
    AFTER INSERT OR DELETE OR UPDATE OF status, chain_id ON ocr_executions
    FOR EACH ROW WHEN (current_setting('loader.keeping_totals', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION loader_note_outside_write();
CREATE OR REPLACE TRIGGER chain_executions_written_outside
    AFTER INSERT OR DELETE OR UPDATE OF batch_id ON chain_executions
    FOR EACH ROW WHEN (current_setting('loader.keeping_totals', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION loader_note_outside_write();
CREATE OR REPLACE TRIGGER load_rejects_written_outside
    AFTER INSERT OR DELETE OR UPDATE OF batch_id, resolved_at ON load_rejects
    FOR EACH ROW WHEN (current_setting('loader.keeping_totals', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION loader_note_outside_write();

-- The one recount of a batch from its rows (merge of a stale batch,
-- recount_batch, adopt, migrations): images by OCR status, and open rejects.
CREATE OR REPLACE FUNCTION loader_recount(batch text)
RETURNS TABLE (completed bigint, failed bigint, rejected bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*) FILTER (WHERE o.status = 'success'),
           count(*) FILTER (WHERE o.status = 'failed'),
           (SELECT count(*) FROM load_rejects r WHERE r.batch_id = batch AND r.resolved_at IS NULL)
    FROM chain_executions c
    JOIN ocr_executions o ON o.chain_id = c.chain_id
    WHERE c.batch_id = batch
$$;
COMMENT ON FUNCTION loader_recount(text) IS
    'A batch''s images counted from its rows: completed (OCR success), failed (OCR failed) and rejected (open rejects); failed_images = failed + rejected.';

GRANT SELECT, INSERT ON loader_calls TO loader_writer;
GRANT DELETE ON ocr_text_boxes TO loader_writer;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loader_admin') THEN
        CREATE ROLE loader_admin NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object THEN NULL;
END
$$;
DO $$
BEGIN
    -- Roles are cluster-wide: another database's deployment may have granted it already.
    IF NOT pg_has_role('loader_admin', 'loader_writer', 'MEMBER') THEN
        GRANT loader_writer TO loader_admin;
    END IF;
END
$$;
GRANT DELETE ON batch_executions, chain_executions, task_logs, ocr_executions,
    ocr_text_boxes, load_rejects, loader_calls TO loader_admin;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO loader_writer', current_database());
END
$$;

INSERT INTO loader_schema_version (version, description)
VALUES (4, 'one identity per input (chain_executions.position), call ledger, model_version, counters kept by the loader (declared_images, totals_stale, loader_recount), loader_admin deletes batches');

COMMIT;

-- =============================================================================
-- loader schema (its version: loader.schema_version, set below)
--
-- The contract between the loader and the DBA. Deploy with:
--
--     psql -v ON_ERROR_STOP=1 -f schema.sql "$DSN"
--
-- * All or nothing: the whole file is one transaction; any error rolls it all back.
-- * Safe to run twice: every object is created only when missing, so re-running
--   the file on a database of its version changes nothing.
-- * Refuses to run on a database holding another schema version (it raises and
--   rolls back). An older one is upgraded in place by the numbered migrations
--   in loader/schema/migrations/ (`loader schema upgrade`), never by this file; a
--   database the OCR application's ORM created is converted by `loader schema adopt`.
-- * A fresh install is created at its version directly and records every version
--   from 1, exactly as a version-1 database upgraded by the migrations.
-- * The application's own SQLAlchemy models (loader.orm) read and write these
--   tables; docs/application.md lists every difference from its original
--   models and why none of them breaks what those models read and write.
-- * Plain SQL only (no psql meta-commands) so `loader schema apply` can run the
--   very same file through psycopg.
-- =============================================================================

BEGIN;

-- "already exists, skipping" notices on a re-run are expected, not news.
SET LOCAL client_min_messages = warning;

-- The version this file builds: the newest migration's in loader/schema/migrations (the
-- loader's SCHEMA_VERSION is derived from them; a test holds the two equal).
-- Read below by current_setting; written here only.
SET LOCAL loader.schema_version = 5;

-- Serialise concurrent deployments of this file (e.g. two test runs or two pods
-- starting at once): the second waits and then finds everything in place.
-- The key is an arbitrary constant that identifies "loader schema deployment".
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7423011001); END $$;

-- -----------------------------------------------------------------------------
-- Schema version
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS loader_schema_version (
    version     integer     PRIMARY KEY CHECK (version > 0),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    description text        NOT NULL
);
COMMENT ON TABLE loader_schema_version IS
    'One row per applied schema version; the loader refuses to write unless max(version) equals the version it was built for.';

DO $$
DECLARE
    deployed integer;
    release CONSTANT integer := current_setting('loader.schema_version')::integer;
BEGIN
    SELECT max(version) INTO deployed FROM loader_schema_version;
    IF deployed < release THEN
        RAISE EXCEPTION 'loader schema.sql is version % but this database holds schema version %', release, deployed
            USING HINT = 'Upgrade it in place with `loader schema upgrade` (or apply loader/schema/migrations/*.sql in order with psql); this file does not upgrade.';
    ELSIF deployed > release THEN
        RAISE EXCEPTION 'loader schema.sql is version % but this database holds the newer schema version %', release, deployed
            USING HINT = 'Use the schema.sql of the loader release that matches the database.';
    END IF;
END
$$;

-- -----------------------------------------------------------------------------
-- Enums
-- -----------------------------------------------------------------------------

DO $$
BEGIN
    -- Celery's task states, spelled as Celery spells them.
    IF to_regtype('process_status') IS NULL THEN
        CREATE TYPE process_status AS ENUM
            ('PENDING', 'STARTED', 'SUCCESS', 'RUNNING', 'FAILURE', 'RETRY', 'REVOKED');
    END IF;
    -- Outcome of OCR for one image (lower case, as the OCR stage reports it).
    IF to_regtype('ocr_status') IS NULL THEN
        CREATE TYPE ocr_status AS ENUM ('success', 'failed');
    END IF;
END
$$;

-- -----------------------------------------------------------------------------
-- updated_at is kept by the database, not by clients
-- -----------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION loader_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- -----------------------------------------------------------------------------
-- A batch's status, from its totals
-- -----------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION loader_batch_status(
    declared bigint, completed bigint, failed bigint, current process_status
) RETURNS process_status
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        -- Nothing received yet: PENDING, unless the application marked the
        -- batch STARTED (BatchExecution.start_execution()).
        WHEN completed + failed = 0 AND declared > 0 AND current = 'STARTED' THEN 'STARTED'
        WHEN completed + failed = 0 AND declared > 0 THEN 'PENDING'
        WHEN completed + failed < declared THEN 'STARTED'
        WHEN completed = 0 AND failed > 0 THEN 'FAILURE'
        ELSE 'SUCCESS'
    END::process_status
$$;
COMMENT ON FUNCTION loader_batch_status(bigint, bigint, bigint, process_status) IS
    'A batch''s status from its declared total, completed and failed images and its current status: the one rule of the merge, recount_batch and `loader schema adopt` (loader.orm.batch_status in Python).';

-- -----------------------------------------------------------------------------
-- Tables
--
-- Ids are identities GENERATED BY DEFAULT (not ALWAYS): the application's ORM,
-- and databases adopted from its SERIAL columns, may still set an id
-- explicitly, as they could on SERIAL; the loader never does.
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS batch_executions (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    batch_id         text           NOT NULL UNIQUE
                                    CHECK (batch_id <> '' AND length(batch_id) <= 255),
    status           process_status NOT NULL DEFAULT 'PENDING',
    total_images     integer        NOT NULL CHECK (total_images >= 0),
    completed_images integer        NOT NULL DEFAULT 0 CHECK (completed_images >= 0),
    failed_images    integer        NOT NULL DEFAULT 0 CHECK (failed_images >= 0),
    created_at       timestamptz    NOT NULL DEFAULT now(),
    updated_at       timestamptz    NOT NULL DEFAULT now(),
    declared_images  integer        CHECK (declared_images >= 0),
    totals_stale     boolean        NOT NULL DEFAULT false
);
COMMENT ON TABLE batch_executions IS 'One OCR batch: a set of images processed together.';
COMMENT ON COLUMN batch_executions.batch_id IS 'The pipeline''s batch identifier (natural key; the API addresses batches by it).';
COMMENT ON COLUMN batch_executions.status IS
    'PENDING until the first image arrives (or the application marks the batch STARTED); STARTED while images are outstanding; SUCCESS when all total_images are accounted for; FAILURE if every one of them failed.';
COMMENT ON COLUMN batch_executions.total_images IS
    'Images the batch holds: declared_images, or more when more inputs were accounted for than declared (so completed + failed never exceeds it).';
COMMENT ON COLUMN batch_executions.completed_images IS
    'Images stored with OCR status success. Kept by the loader (each merge adds its own changes under the batch''s lock); a write by anyone else marks totals_stale and the next merge recounts.';
COMMENT ON COLUMN batch_executions.failed_images IS 'Images stored with OCR status failed plus open rejects in load_rejects, so completed + failed = inputs accounted for.';
COMMENT ON COLUMN batch_executions.declared_images IS
    'Version 4: the total declared for the batch (register_batch, the first call, or a write of total_images by another writer); recount_batch brings total_images back to it.';
COMMENT ON COLUMN batch_executions.totals_stale IS
    'Version 4: true when a writer other than the loader changed the counters or the rows they count (trigger loader_note_outside_write); the next merge recounts the batch from its rows instead of adding to the stored counters, and clears it.';

CREATE TABLE IF NOT EXISTS chain_executions (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    chain_id        text           NOT NULL UNIQUE CHECK (chain_id <> ''),
    batch_id        text           NOT NULL
                                   REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    status          process_status NOT NULL DEFAULT 'PENDING',
    total_tasks     integer        NOT NULL DEFAULT 0 CHECK (total_tasks >= 0),
    completed_tasks integer        NOT NULL DEFAULT 0 CHECK (completed_tasks >= 0),
    failed_tasks    integer        NOT NULL DEFAULT 0 CHECK (failed_tasks >= 0),
    created_at      timestamptz    NOT NULL DEFAULT now(),
    updated_at      timestamptz    NOT NULL DEFAULT now(),
    position        integer        CHECK (position >= 0),
    -- Version 4: one input per position of a batch (NULLs, positions unknown, never collide).
    CONSTRAINT chain_executions_position_once UNIQUE (batch_id, position)
);
COMMENT ON TABLE chain_executions IS 'One Celery chain per image of a batch.';
COMMENT ON COLUMN chain_executions.chain_id IS
    'Celery chain id. The loader derives it deterministically (UUIDv5 of batch_id and image_path) so a redelivered batch maps onto the same chains.';
COMMENT ON COLUMN chain_executions.position IS
    'Version 4: the position in the batch of the input that stored this image (a file''s line number, position_offset + index in a call): an input''s identity. NULL for chains other writers made, until an input of the loader at a free position claims the image.';
COMMENT ON COLUMN chain_executions.total_tasks IS 'Tasks in the chain; the loader records the OCR task, so 1 for chains it creates.';

CREATE TABLE IF NOT EXISTS task_logs (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    task_id     text           NOT NULL UNIQUE CHECK (task_id <> ''),
    task_name   text,
    chain_execution_id bigint  REFERENCES chain_executions (id) ON DELETE CASCADE,
    status      process_status NOT NULL DEFAULT 'PENDING',
    retries     integer        NOT NULL DEFAULT 0 CHECK (retries >= 0),
    error       text,
    started_at  timestamptz,
    finished_at timestamptz,
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now()
);
COMMENT ON TABLE task_logs IS 'Celery task log, one row per task id, kept by signal handlers in the workers.';
COMMENT ON COLUMN task_logs.chain_execution_id IS
    'The chain the task belongs to (chain_executions.id, as the application''s TaskLog model links it); the Celery task log resolves a task''s chain_id header to it. NULL for stand-alone tasks.';
COMMENT ON COLUMN task_logs.retries IS 'How many times the task was retried (Celery request.retries at the last update).';
COMMENT ON COLUMN task_logs.error IS 'Exception text of the last failure or retry; NULL while the task has not failed.';

CREATE TABLE IF NOT EXISTS ocr_executions (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    chain_id    text        NOT NULL UNIQUE
                            REFERENCES chain_executions (chain_id) ON DELETE CASCADE,
    image_path  text        NOT NULL UNIQUE CHECK (image_path <> ''),
    public_path text        UNIQUE CHECK (public_path <> ''),
    status      ocr_status  NOT NULL,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    model_version text      CHECK (model_version <> '' AND length(model_version) <= 255),
    -- A failed image always says why; a successful one carries no error.
    CONSTRAINT ocr_executions_error_iff_failed CHECK ((status = 'failed') = (error IS NOT NULL))
);
COMMENT ON TABLE ocr_executions IS 'OCR result of one image.';
COMMENT ON COLUMN ocr_executions.image_path IS 'Where the image was read from; unique across all batches (an image belongs to one batch).';
COMMENT ON COLUMN ocr_executions.public_path IS 'Public URL/path of the image, if any; unique when present.';
COMMENT ON COLUMN ocr_executions.model_version IS
    'Version 4: which OCR model produced this result, when the input said so; a re-OCR (save_batch(replace=True)) replaces it with the result.';
COMMENT ON COLUMN ocr_executions.error IS
    'Why the image failed: the upstream OCR error, or the loader''s validation message (e.g. confidence out of range). NULL on success.';

CREATE TABLE IF NOT EXISTS ocr_text_boxes (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ocr_execution_id bigint           NOT NULL
                                      REFERENCES ocr_executions (id) ON DELETE CASCADE,
    position         integer          NOT NULL CHECK (position >= 0),
    text             text             NOT NULL,
    -- NaN compares greater than every number in PostgreSQL, so this also rejects NaN.
    confidence       double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    bbox             jsonb            NOT NULL CHECK (jsonb_typeof(bbox) = 'array'),
    created_at       timestamptz      NOT NULL DEFAULT now(),
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT ocr_text_boxes_reading_order UNIQUE (ocr_execution_id, position)
);
COMMENT ON TABLE ocr_text_boxes IS 'Text boxes recognised in one image.';
COMMENT ON COLUMN ocr_text_boxes.position IS 'Reading order: the box''s 0-based index within its image as the OCR stage reported it. ORDER BY position to read the text.';
COMMENT ON COLUMN ocr_text_boxes.bbox IS 'Polygon as a JSON array of [x, y] points, e.g. [[0,0],[10,0],[10,5],[0,5]].';

CREATE TABLE IF NOT EXISTS load_rejects (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    batch_id    text        NOT NULL REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    position    integer     NOT NULL CHECK (position >= 0),
    image_path  text,
    reason      text        NOT NULL,
    raw         bytea       NOT NULL,
    raw_sha256  bytea       NOT NULL CHECK (length(raw_sha256) = 32),
    resolved_at timestamptz,
    resolved_by bigint      REFERENCES ocr_executions (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The same input at the same place of the same batch is recorded once, so a
    -- redelivered call adds nothing.
    CONSTRAINT load_rejects_once UNIQUE (batch_id, position, raw_sha256),
    -- Only a resolved reject names what resolved it.
    CONSTRAINT load_rejects_resolved_by_needs_resolved_at CHECK (resolved_by IS NULL OR resolved_at IS NOT NULL)
);
COMMENT ON TABLE load_rejects IS 'Inputs that could not be stored at all (no usable image_path, duplicates, paths owned by another batch, lines that are not JSON objects). Counted in batch_executions.failed_images.';
COMMENT ON COLUMN load_rejects.position IS
    'Position of the input in its batch (0-based: a file''s line number, position_offset + index in a call), as chain_executions.position for stored images.';
COMMENT ON COLUMN load_rejects.image_path IS 'The image_path the input claimed, when it had a usable one.';
COMMENT ON COLUMN load_rejects.raw IS 'The input exactly as received (bytes of the JSONL line, or the JSON encoding of an in-memory object); NUL bytes included, hence bytea.';
COMMENT ON COLUMN load_rejects.raw_sha256 IS 'SHA-256 of raw; part of the idempotency key.';
COMMENT ON COLUMN load_rejects.resolved_at IS
    'When a repair call fixed this input (a line at the same position stored, or refused again and recorded as a newer reject); NULL while the reject is open. Only open rejects count in failed_images; resolved ones stay for the audit trail.';
COMMENT ON COLUMN load_rejects.resolved_by IS
    'The ocr_executions row whose storing resolved this reject (NULL if that row was deleted since).';

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
-- Its grants are given below, once the roles exist (a fresh cluster has none yet).

-- -----------------------------------------------------------------------------
-- Triggers
-- -----------------------------------------------------------------------------

CREATE OR REPLACE TRIGGER batch_executions_touch BEFORE UPDATE ON batch_executions
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();
CREATE OR REPLACE TRIGGER chain_executions_touch BEFORE UPDATE ON chain_executions
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();
CREATE OR REPLACE TRIGGER task_logs_touch BEFORE UPDATE ON task_logs
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();
CREATE OR REPLACE TRIGGER ocr_executions_touch BEFORE UPDATE ON ocr_executions
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();
CREATE OR REPLACE TRIGGER ocr_text_boxes_touch BEFORE UPDATE ON ocr_text_boxes
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();
CREATE OR REPLACE TRIGGER load_rejects_touch BEFORE UPDATE ON load_rejects
    FOR EACH ROW EXECUTE FUNCTION loader_touch_updated_at();

-- Writers that predate these columns (the application's original ORM models
-- have no ocr_executions.error and no ocr_text_boxes.position) keep working:
-- the gaps are filled before the constraints are checked. The WHEN clauses are
-- evaluated without calling the function, so the loader's own bulk inserts,
-- which always set both, pay nothing per row.

-- A failed OCR row written without a reason gets a stated placeholder; a row
-- set to success drops the error it carried as failed.
CREATE OR REPLACE FUNCTION loader_ocr_error_consistent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'failed' THEN
        NEW.error := 'failed (no error recorded by the writer)';
    ELSE
        NEW.error := NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER ocr_executions_error_consistent BEFORE INSERT OR UPDATE ON ocr_executions
    FOR EACH ROW
    WHEN ((NEW.status = 'failed' AND NEW.error IS NULL) OR (NEW.status = 'success' AND NEW.error IS NOT NULL))
    EXECUTE FUNCTION loader_ocr_error_consistent();

-- A box written without a position goes after the image's last box, so
-- ORDER BY position keeps insertion order for such writers.
CREATE OR REPLACE FUNCTION loader_box_next_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT coalesce(max(b.position) + 1, 0) INTO NEW.position
    FROM ocr_text_boxes b
    WHERE b.ocr_execution_id = NEW.ocr_execution_id;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER ocr_text_boxes_next_position BEFORE INSERT ON ocr_text_boxes
    FOR EACH ROW WHEN (NEW.position IS NULL)
    EXECUTE FUNCTION loader_box_next_position();

-- Version 4: the batch counters are the loader's. Its own statements run with
-- the transaction setting loader.keeping_totals = 'on' (set_config(..., true))
-- and keep them exact from their changes; a write by anyone else (the
-- application's models, a hand-written UPDATE) to the counters or to the rows
-- they count only marks the batch totals_stale, and the next merge (or
-- recount_batch) recounts it from its rows. The setting is a guard against
-- accidents, not a privilege: any session may set it.
-- Version 5: the status and the total are the
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
CREATE OR REPLACE TRIGGER batch_executions_written_outside BEFORE INSERT OR UPDATE ON batch_executions
    FOR EACH ROW WHEN (current_setting('loader.keeping_totals', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION loader_note_batch_write();

-- Version 5: the batch row is written even when
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

-- [v5 triggers: counters and replays]

-- Version 5: a merge never clears what it did not see. Every write by another
-- writer to a batch or to the rows it counts bumps outside_writes (the
-- triggers above, even when the batch is already stale); a merge or
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

-- -----------------------------------------------------------------------------
-- Indexes (UNIQUE constraints above already index batch_id, chain_id, task_id,
-- image_path, public_path, ocr_executions.chain_id, boxes by (ocr_execution_id,
-- position) and rejects by (batch_id, position, raw_sha256))
-- -----------------------------------------------------------------------------

-- FK chain -> batch and every per-batch read of the chains: the unique
-- chain_executions_position_once (batch_id, position), below the v5 plans marker.
-- FK task log -> chain (and the cascade when a chain is deleted).
CREATE INDEX IF NOT EXISTS task_logs_chain_execution_id_idx ON task_logs (chain_execution_id);
-- Operators listing stuck or failed tasks.
CREATE INDEX IF NOT EXISTS task_logs_status_updated_idx ON task_logs (status, updated_at);
-- `loader status` without an id lists the most recent batches.
CREATE INDEX IF NOT EXISTS batch_executions_created_at_idx ON batch_executions (created_at);
-- Version 2: unfinished batches by age (`loader status --unfinished`, alerts on
-- stuck backfills), however much finished history the table holds. The
-- predicate must match the query's word for word (loader/sql/cli.sql).
CREATE INDEX IF NOT EXISTS batch_executions_unfinished_idx ON batch_executions (created_at, id)
    WHERE status IN ('PENDING', 'STARTED');
COMMENT ON INDEX batch_executions_unfinished_idx IS
    'Unfinished batches by age (`loader status --unfinished`); the predicate must match the query''s word for word.';
-- Version 3: open rejects, by the image_path or the (batch, position) a later
-- input resolves them through (the merge), and counted in failed_images.
-- A hash index: a reject keeps whatever image_path it claimed, however long,
-- and a btree entry holds at most 2704 bytes.
CREATE INDEX IF NOT EXISTS load_rejects_open_by_path_idx ON load_rejects USING hash (image_path)
    WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS load_rejects_open_by_position_idx ON load_rejects (batch_id, position)
    WHERE resolved_at IS NULL;
-- FK reject -> the OCR row that resolved it (ON DELETE SET NULL looks it up).
CREATE INDEX IF NOT EXISTS load_rejects_resolved_by_idx ON load_rejects (resolved_by)
    WHERE resolved_by IS NOT NULL;

-- [v5 indexes: plans]
-- Version 5: a probe has one index that fits it, so no statistics can flip its plan.
-- A batch that grew since the last ANALYZE looks like a handful of rows; the
-- planner then took any index led by batch_id, and with (batch_id, status) it read
-- the whole batch and filtered on position once per staged input (O(batch) per
-- input, O(n^2) per batch). Every read of a batch's chains (the merge's position
-- probe, the FK from batch_executions, recount, delete) goes through
-- chain_executions_position_once (batch_id, position); only the failures keep an
-- index of their own, partial, which no probe without status = 'FAILURE' can use.
CREATE INDEX IF NOT EXISTS chain_executions_failed_idx ON chain_executions (batch_id)
    WHERE status = 'FAILURE';
COMMENT ON INDEX chain_executions_failed_idx IS
    'A batch''s failed chains (`loader status` failure counts and reasons) without reading its successes; partial so that no probe of a batch''s chains by position can take it instead of chain_executions_position_once.';
-- Retention (finished_batches_before): finished batches by age, read in order and
-- cut by LIMIT, however many batches the table holds. The predicate must match the
-- query's word for word (loader/sql/lifecycle.sql).
CREATE INDEX IF NOT EXISTS batch_executions_finished_idx ON batch_executions (updated_at, id)
    WHERE status IN ('SUCCESS', 'FAILURE') AND NOT totals_stale;
COMMENT ON INDEX batch_executions_finished_idx IS
    'Finished batches the loader counted, by age (retention, finished_batches_before); stale ones are in batch_executions_stale_idx. The predicate must match the query''s word for word.';
-- Stale batches by age: retention judges them by their rows, whatever status
-- another writer stored (finished_batches_before, loader/sql/lifecycle.sql).
CREATE INDEX IF NOT EXISTS batch_executions_stale_idx ON batch_executions (updated_at, id)
    WHERE totals_stale;

-- -----------------------------------------------------------------------------
-- Grants: least privilege for the loader
--
-- loader_writer is a NOLOGIN group role holding exactly what the loader needs:
-- read and insert rows, update in place only the tables whose rows change
-- (batch totals, task log, and an image's OCR row and chain when a re-OCR or a
-- repair replaces its result) and, of a reject, only whether it was resolved;
-- DELETE only of text boxes (a replaced result's), no DDL, and TEMP on the
-- database for its staging tables. Grant it to the login role the workers use:
--     CREATE ROLE ocr_worker LOGIN PASSWORD '...' IN ROLE loader_writer;
-- -----------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loader_writer') THEN
        CREATE ROLE loader_writer NOLOGIN;
    END IF;
EXCEPTION
    -- Another deployment created it in the meantime (roles are cluster-wide).
    WHEN duplicate_object THEN NULL;
END
$$;

GRANT SELECT ON loader_schema_version TO loader_writer;
GRANT SELECT, INSERT ON batch_executions, chain_executions, task_logs,
    ocr_executions, ocr_text_boxes, load_rejects, loader_calls TO loader_writer;
GRANT UPDATE ON batch_executions, chain_executions, task_logs, ocr_executions TO loader_writer;
GRANT UPDATE (resolved_at, resolved_by) ON load_rejects TO loader_writer;
-- Version 5: a lower position taking a duplicated image renames the image's
-- other duplicates ("first at position P"), so reason too.
GRANT UPDATE (reason) ON load_rejects TO loader_writer;
-- Version 4: a re-OCR (replace=True) or a repaired failure replaces an image's
-- boxes; the only rows the worker role may delete.
GRANT DELETE ON ocr_text_boxes TO loader_writer;

-- loader_admin: loader_writer plus deleting whole batches (`loader delete`,
-- delete_batch, retention). Give it to operators, not to the workers:
--     CREATE ROLE ocr_janitor LOGIN PASSWORD '...' IN ROLE loader_admin;
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
    -- Roles are cluster-wide: a later deployment (by a database owner without the
    -- right to grant role membership) finds the membership in place.
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

-- Version 5, result history (ocr_result_history, created with the tables):
-- the merge inserts the results it replaces; only loader_admin deletes them (retention).
GRANT SELECT, INSERT ON ocr_result_history TO loader_writer;
GRANT DELETE ON ocr_result_history TO loader_admin;

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

-- -----------------------------------------------------------------------------
-- Record the version (last, so a failure above leaves no version row behind)
-- -----------------------------------------------------------------------------

-- A fresh install records every version, as an upgraded database does.
INSERT INTO loader_schema_version (version, description)
VALUES (1, 'initial schema: batches, chains, task logs, OCR executions, text boxes, load rejects'),
       (2, 'index the unfinished batches (PENDING or STARTED) by age; loader_writer may not update text boxes or rejects'),
       (3, 'fit the application''s models: task_logs.chain_execution_id, identities by default, defaults for writers without error/position; rejects resolved by later inputs'),
       (4, 'one identity per input (chain_executions.position), call ledger, model_version, counters kept by the loader (declared_images, totals_stale, loader_recount), loader_admin deletes batches'),
       (5, 'exact under overlap: replays confirmed by rows, counters only the loader sets, retention under the batch lock; plans that cannot flip; result history')
ON CONFLICT (version) DO NOTHING;

-- Every version up to this file's is recorded, and none past it.
DO $$
BEGIN
    IF (SELECT max(version) FROM loader_schema_version) <> current_setting('loader.schema_version')::integer THEN
        RAISE EXCEPTION 'loader schema.sql records versions up to % but sets loader.schema_version to %',
            (SELECT max(version) FROM loader_schema_version), current_setting('loader.schema_version');
    END IF;
END
$$;

COMMIT;

-- =============================================================================
-- loader schema, version 1
--
-- The contract between the loader and the DBA. Deploy with:
--
--     psql -v ON_ERROR_STOP=1 -f schema.sql "$DSN"
--
-- * All or nothing: the whole file is one transaction; any error rolls it all back.
-- * Safe to run twice: every object is created only when missing, so re-running
--   the file on a version-1 database changes nothing.
-- * Refuses to run on a database holding another schema version (it raises and
--   rolls back); upgrades go through numbered migration files instead.
-- * Plain SQL only (no psql meta-commands) so `loader schema apply` can run the
--   very same file through psycopg.
-- =============================================================================

BEGIN;

-- "already exists, skipping" notices on a re-run are expected, not news.
SET LOCAL client_min_messages = warning;

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
BEGIN
    SELECT max(version) INTO deployed FROM loader_schema_version;
    IF deployed IS NOT NULL AND deployed <> 1 THEN
        RAISE EXCEPTION 'loader schema.sql is version 1 but this database holds schema version %', deployed
            USING HINT = 'Apply the numbered migrations instead, or use the schema.sql of the matching loader release.';
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
-- Tables
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS batch_executions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id         text           NOT NULL UNIQUE
                                    CHECK (batch_id <> '' AND length(batch_id) <= 255),
    status           process_status NOT NULL DEFAULT 'PENDING',
    total_images     integer        NOT NULL CHECK (total_images >= 0),
    completed_images integer        NOT NULL DEFAULT 0 CHECK (completed_images >= 0),
    failed_images    integer        NOT NULL DEFAULT 0 CHECK (failed_images >= 0),
    created_at       timestamptz    NOT NULL DEFAULT now(),
    updated_at       timestamptz    NOT NULL DEFAULT now()
);
COMMENT ON TABLE batch_executions IS 'One OCR batch: a set of images processed together.';
COMMENT ON COLUMN batch_executions.batch_id IS 'The pipeline''s batch identifier (natural key; the API addresses batches by it).';
COMMENT ON COLUMN batch_executions.status IS
    'PENDING until the first image arrives; STARTED while images are outstanding; SUCCESS when all total_images are accounted for; FAILURE if every one of them failed.';
COMMENT ON COLUMN batch_executions.total_images IS 'Images the batch is expected to hold (declared by register_batch, or the size of the first save).';
COMMENT ON COLUMN batch_executions.completed_images IS 'Images stored with OCR status success. Recomputed by the loader''s merge, never incremented by clients.';
COMMENT ON COLUMN batch_executions.failed_images IS 'Images stored with OCR status failed plus inputs rejected into load_rejects, so completed + failed = images received.';

CREATE TABLE IF NOT EXISTS chain_executions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id        text           NOT NULL UNIQUE CHECK (chain_id <> ''),
    batch_id        text           NOT NULL
                                   REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    status          process_status NOT NULL DEFAULT 'PENDING',
    total_tasks     integer        NOT NULL DEFAULT 0 CHECK (total_tasks >= 0),
    completed_tasks integer        NOT NULL DEFAULT 0 CHECK (completed_tasks >= 0),
    failed_tasks    integer        NOT NULL DEFAULT 0 CHECK (failed_tasks >= 0),
    created_at      timestamptz    NOT NULL DEFAULT now(),
    updated_at      timestamptz    NOT NULL DEFAULT now()
);
COMMENT ON TABLE chain_executions IS 'One Celery chain per image of a batch.';
COMMENT ON COLUMN chain_executions.chain_id IS
    'Celery chain id. The loader derives it deterministically (UUIDv5 of batch_id and image_path) so a redelivered batch maps onto the same chains.';
COMMENT ON COLUMN chain_executions.total_tasks IS 'Tasks in the chain; the loader records the OCR task, so 1 for chains it creates.';

CREATE TABLE IF NOT EXISTS task_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     text           NOT NULL UNIQUE CHECK (task_id <> ''),
    task_name   text,
    chain_id    text           REFERENCES chain_executions (chain_id) ON DELETE CASCADE,
    status      process_status NOT NULL DEFAULT 'PENDING',
    retries     integer        NOT NULL DEFAULT 0 CHECK (retries >= 0),
    error       text,
    started_at  timestamptz,
    finished_at timestamptz,
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now()
);
COMMENT ON TABLE task_logs IS 'Celery task log, one row per task id, kept by signal handlers in the workers.';
COMMENT ON COLUMN task_logs.chain_id IS 'The chain the task belongs to, when the task carries one; NULL for stand-alone tasks.';
COMMENT ON COLUMN task_logs.retries IS 'How many times the task was retried (Celery request.retries at the last update).';
COMMENT ON COLUMN task_logs.error IS 'Exception text of the last failure or retry; NULL while the task has not failed.';

CREATE TABLE IF NOT EXISTS ocr_executions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id    text        NOT NULL UNIQUE
                            REFERENCES chain_executions (chain_id) ON DELETE CASCADE,
    image_path  text        NOT NULL UNIQUE CHECK (image_path <> ''),
    public_path text        UNIQUE CHECK (public_path <> ''),
    status      ocr_status  NOT NULL,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- A failed image always says why; a successful one carries no error.
    CONSTRAINT ocr_executions_error_iff_failed CHECK ((status = 'failed') = (error IS NOT NULL))
);
COMMENT ON TABLE ocr_executions IS 'OCR result of one image.';
COMMENT ON COLUMN ocr_executions.image_path IS 'Where the image was read from; unique across all batches (an image belongs to one batch).';
COMMENT ON COLUMN ocr_executions.public_path IS 'Public URL/path of the image, if any; unique when present.';
COMMENT ON COLUMN ocr_executions.error IS
    'Why the image failed: the upstream OCR error, or the loader''s validation message (e.g. confidence out of range). NULL on success.';

CREATE TABLE IF NOT EXISTS ocr_text_boxes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id    text        NOT NULL REFERENCES batch_executions (batch_id) ON DELETE CASCADE,
    position    integer     NOT NULL CHECK (position >= 0),
    image_path  text,
    reason      text        NOT NULL,
    raw         bytea       NOT NULL,
    raw_sha256  bytea       NOT NULL CHECK (length(raw_sha256) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The same input at the same place of the same batch is recorded once, so a
    -- redelivered call adds nothing.
    CONSTRAINT load_rejects_once UNIQUE (batch_id, position, raw_sha256)
);
COMMENT ON TABLE load_rejects IS 'Inputs that could not be stored at all (no usable image_path, duplicates, paths owned by another batch, lines that are not JSON objects). Counted in batch_executions.failed_images.';
COMMENT ON COLUMN load_rejects.position IS 'Position of the input in the call (0-based), or its line number offset when loaded from a file.';
COMMENT ON COLUMN load_rejects.image_path IS 'The image_path the input claimed, when it had a usable one.';
COMMENT ON COLUMN load_rejects.raw IS 'The input exactly as received (bytes of the JSONL line, or the JSON encoding of an in-memory object); NUL bytes included, hence bytea.';
COMMENT ON COLUMN load_rejects.raw_sha256 IS 'SHA-256 of raw; part of the idempotency key.';

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

-- -----------------------------------------------------------------------------
-- Indexes (UNIQUE constraints above already index batch_id, chain_id, task_id,
-- image_path, public_path, ocr_executions.chain_id, boxes by (ocr_execution_id,
-- position) and rejects by (batch_id, position, raw_sha256))
-- -----------------------------------------------------------------------------

-- FK chain -> batch, and the merge's per-batch recount of totals.
CREATE INDEX IF NOT EXISTS chain_executions_batch_id_status_idx ON chain_executions (batch_id, status);
-- FK task log -> chain.
CREATE INDEX IF NOT EXISTS task_logs_chain_id_idx ON task_logs (chain_id);
-- Operators listing stuck or failed tasks.
CREATE INDEX IF NOT EXISTS task_logs_status_updated_idx ON task_logs (status, updated_at);
-- `loader status` without an id lists the most recent batches.
CREATE INDEX IF NOT EXISTS batch_executions_created_at_idx ON batch_executions (created_at);

-- -----------------------------------------------------------------------------
-- Grants: least privilege for the loader
--
-- loader_writer is a NOLOGIN group role holding exactly what the loader needs:
-- read and write rows (no DELETE, no DDL), and TEMP on the database for its
-- staging tables. Grant it to the login role the workers use:
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
GRANT SELECT, INSERT, UPDATE ON batch_executions, chain_executions, task_logs,
    ocr_executions, ocr_text_boxes, load_rejects TO loader_writer;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO loader_writer', current_database());
END
$$;

-- -----------------------------------------------------------------------------
-- Record the version (last, so a failure above leaves no version row behind)
-- -----------------------------------------------------------------------------

INSERT INTO loader_schema_version (version, description)
VALUES (1, 'initial schema: batches, chains, task logs, OCR executions, text boxes, load rejects')
ON CONFLICT (version) DO NOTHING;

COMMIT;

-- Queries about the deployment and the batches, outside the save path.

-- name: schema_version
-- The schema version deployed in this database (NULL when the version table is empty).
SELECT max(version) AS version FROM loader_schema_version;

-- name: register_batch
-- Declare a batch that will arrive in chunks; a no-op when it exists with the same total.
-- The total compared is the declared one: the stored total grows past it when
-- more inputs than declared were accounted for.
WITH created AS (
    INSERT INTO batch_executions (batch_id, total_images, declared_images)
    VALUES (%(batch_id)s, %(total_images)s, %(total_images)s)
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING declared_images
)
SELECT declared_images, true AS created FROM created
UNION ALL
SELECT coalesce(declared_images, total_images), false FROM batch_executions
WHERE batch_id = %(batch_id)s AND NOT EXISTS (SELECT FROM created);

-- name: batch_progress
-- One batch's totals: as stored, or as a recount of its rows gives them while another writer left them stale.
-- A stale batch (schema.sql, totals_stale) reads as its next merge or
-- recount_batch will store it, so the figures read are always the rows'.
WITH be AS (
    SELECT b.*, coalesce(b.declared_images, b.total_images) AS declared,
           (SELECT count(*) FROM load_rejects r
            WHERE r.batch_id = %(batch_id)s AND r.resolved_at IS NULL) AS rejected_images
    FROM batch_executions b
    WHERE b.batch_id = %(batch_id)s
),
figures AS (
    -- The recount sits in the CASE branches, so only a stale batch pays for it (a
    -- LATERAL join on totals_stale would run it for every read, filtered afterwards).
    -- It names the batch by the parameter: planned for this very value, it seeks
    -- the batch through its index (schema.sql, "v5 indexes: plans").
    SELECT be.*,
           CASE WHEN be.totals_stale THEN (SELECT rc.completed FROM loader_recount(%(batch_id)s) rc)
                ELSE be.completed_images END AS completed,
           CASE WHEN be.totals_stale THEN (SELECT rc.failed + rc.rejected FROM loader_recount(%(batch_id)s) rc)
                ELSE be.failed_images END AS failed
    FROM be
)
SELECT batch_id,
       (CASE WHEN totals_stale THEN loader_batch_status(declared, completed, failed, status)
             ELSE status END)::text AS status,
       CASE WHEN totals_stale THEN greatest(declared, completed + failed) ELSE total_images END AS total_images,
       completed AS completed_images, failed AS failed_images, rejected_images,
       created_at, updated_at
FROM figures;

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
-- schema.sql, loader_progress: a stale batch (totals_stale) reads as its next
-- merge or recount_batch will store it, its status included, so the figures
-- read are always the rows'. A replayed call's report reads the same function.
SELECT batch_id, status, total_images, completed_images, failed_images, rejected_images, created_at, updated_at
FROM loader_progress(%(batch_id)s);

-- Queries about the deployment and the batches, outside the save path.

-- name: schema_version
-- The schema version deployed in this database (NULL when the version table is empty).
SELECT max(version) AS version FROM loader_schema_version;

-- name: register_batch
-- Declare a batch that will arrive in chunks; a no-op when it exists with the same total.
WITH created AS (
    INSERT INTO batch_executions (batch_id, total_images)
    VALUES (%(batch_id)s, %(total_images)s)
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING total_images
)
SELECT total_images, true AS created FROM created
UNION ALL
SELECT total_images, false FROM batch_executions
WHERE batch_id = %(batch_id)s AND NOT EXISTS (SELECT FROM created);

-- name: batch_progress
-- The stored totals of one batch.
SELECT batch_id, status::text AS status, total_images, completed_images, failed_images,
       created_at, updated_at
FROM batch_executions
WHERE batch_id = %(batch_id)s;

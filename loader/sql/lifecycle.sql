-- The end of a batch's life: deleting it, and retention (loader/lifecycle/delete.py).
--
-- Retention lists candidates without locks, then judges each one again under
-- the batch's lock (batch_lock, the lock every save takes), in the delete's own
-- transaction, from its rows: the status a recount gives a stale batch, and the
-- latest updated_at of the batch and every row under it. A batch that changed
-- after the cut-off, or that its rows do not say is finished, is skipped.

-- name: delete_batch
-- Delete a batch and everything under it (chains, OCR rows, boxes, task logs, rejects, ledger), children first; run after batch_lock.
-- One statement, children first, so no cascade runs row by row; what is
-- left for the foreign keys to check is already gone. Nothing outside the
-- batch is touched: an OCR row belongs to the batch of its chain.
WITH keeping AS (
    SELECT set_config('loader.keeping_totals', 'on', true)
),
chains AS (
    SELECT c.id, c.chain_id FROM chain_executions c, keeping WHERE c.batch_id = %(batch_id)s
),
ocr AS (
    SELECT o.id FROM ocr_executions o JOIN chains c ON c.chain_id = o.chain_id
),
boxes AS (
    DELETE FROM ocr_text_boxes b USING ocr o WHERE b.ocr_execution_id = o.id RETURNING 1
),
rejects AS (
    DELETE FROM load_rejects r USING keeping WHERE r.batch_id = %(batch_id)s RETURNING 1
),
unresolved AS (
    -- Another batch's reject resolved by one of these rows loses its link, as ON DELETE SET NULL would.
    UPDATE load_rejects r SET resolved_by = NULL
    FROM ocr o WHERE r.resolved_by = o.id AND r.batch_id <> %(batch_id)s
    RETURNING 1
),
logs AS (
    DELETE FROM task_logs t USING chains c WHERE t.chain_execution_id = c.id RETURNING 1
),
ocr_rows AS (
    DELETE FROM ocr_executions o USING ocr x
    WHERE o.id = x.id AND (SELECT count(*) FROM boxes) >= 0 AND (SELECT count(*) FROM unresolved) >= 0
    RETURNING 1
),
chain_rows AS (
    DELETE FROM chain_executions c USING chains x
    WHERE c.id = x.id AND (SELECT count(*) FROM ocr_rows) >= 0 AND (SELECT count(*) FROM logs) >= 0
    RETURNING 1
),
calls AS (
    DELETE FROM loader_calls l USING keeping WHERE l.batch_id = %(batch_id)s RETURNING 1
),
batch AS (
    DELETE FROM batch_executions be
    WHERE be.batch_id = %(batch_id)s AND (SELECT count(*) FROM chain_rows) >= 0
      AND (SELECT count(*) FROM rejects) >= 0 AND (SELECT count(*) FROM calls) >= 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS batches, (SELECT count(*) FROM chain_rows) AS chains,
       (SELECT count(*) FROM ocr_rows) AS images, (SELECT count(*) FROM boxes) AS boxes,
       (SELECT count(*) FROM logs) AS task_logs, (SELECT count(*) FROM rejects) AS rejects;

-- name: finished_batches_before
-- Candidates for retention: batches finished (SUCCESS or FAILURE), or stale (judged by their rows under their lock), whose row last changed before a time, oldest first, after a keyset.
-- Only a candidate list: retention_verdict judges each again under its lock.
-- Keyset pagination on (updated_at, id): a batch skipped (changed meanwhile,
-- or refused) is never listed again by the same pass, so no batch can stop a
-- pass or make it loop.
-- Two ordered index scans, one per partial index, each cut by LIMIT and merged
-- (an OR of the two predicates matches neither index, and read every old
-- batch): finished batches the loader counted (batch_executions_finished_idx),
-- and stale ones, whatever status another writer stored (batch_executions_stale_idx;
-- every batch upgraded from version 3 is one until it is recounted). Nothing is
-- recounted here: retention_verdict recounts each candidate under its lock and
-- skips one its rows do not call finished (a filter here, after the LIMIT,
-- could return an empty page with candidates after it).
WITH listed AS (
    (SELECT b.id, b.batch_id, b.status, b.total_images, b.updated_at, b.totals_stale,
            coalesce(b.declared_images, b.total_images) AS declared
     FROM batch_executions b
     WHERE b.status IN ('SUCCESS', 'FAILURE') AND NOT b.totals_stale
       AND b.updated_at < %(before)s
       AND (b.updated_at, b.id) > (%(after_updated_at)s, %(after_id)s)
     ORDER BY b.updated_at, b.id
     LIMIT %(limit)s)
    UNION ALL
    (SELECT b.id, b.batch_id, b.status, b.total_images, b.updated_at, b.totals_stale,
            coalesce(b.declared_images, b.total_images) AS declared
     FROM batch_executions b
     WHERE b.totals_stale
       AND b.updated_at < %(before)s
       AND (b.updated_at, b.id) > (%(after_updated_at)s, %(after_id)s)
     ORDER BY b.updated_at, b.id
     LIMIT %(limit)s)
)
SELECT id, batch_id, status::text AS status, total_images, updated_at
FROM listed
ORDER BY updated_at, id
LIMIT %(limit)s;

-- name: retention_verdict
-- Under the batch's lock: the batch's status by a recount of its rows and its last change (the latest updated_at of the batch and of every row under it); locks the batch row.
-- Run after batch_lock, in the transaction that then deletes the batch. A
-- save of the batch waits for the advisory lock; a writer that takes no
-- advisory lock (the application) waits for the row lock when it touches the
-- batch row (the stale mark of its triggers), and a write it committed before
-- is seen here. Costs one scan of the batch's rows, as the delete does.
WITH b AS (
    SELECT b.id, b.batch_id, b.status, b.totals_stale, b.updated_at,
           coalesce(b.declared_images, b.total_images) AS declared
    FROM batch_executions b
    WHERE b.batch_id = %(batch_id)s
    FOR UPDATE
),
rc AS (
    SELECT rc.* FROM b, loader_recount(b.batch_id) rc
),
last_rows AS (
    -- One aggregate per table (joins the planner may hash), NULLs ignored by greatest.
    SELECT greatest(
        (SELECT max(greatest(c.updated_at, o.updated_at))
         FROM chain_executions c LEFT JOIN ocr_executions o ON o.chain_id = c.chain_id
         WHERE c.batch_id = %(batch_id)s),
        (SELECT max(x.updated_at)
         FROM chain_executions c
         JOIN ocr_executions o ON o.chain_id = c.chain_id
         JOIN ocr_text_boxes x ON x.ocr_execution_id = o.id
         WHERE c.batch_id = %(batch_id)s),
        (SELECT max(t.updated_at)
         FROM chain_executions c JOIN task_logs t ON t.chain_execution_id = c.id
         WHERE c.batch_id = %(batch_id)s),
        (SELECT max(r.updated_at) FROM load_rejects r WHERE r.batch_id = %(batch_id)s),
        (SELECT max(l.committed_at) FROM loader_calls l WHERE l.batch_id = %(batch_id)s)
    ) AS changed_at
)
SELECT b.batch_id,
       -- Always the recount: the stored status is not believed here, stale or not.
       loader_batch_status(b.declared, rc.completed, rc.failed + rc.rejected, b.status)::text AS status,
       b.totals_stale AS stale,
       greatest(b.updated_at, lr.changed_at) AS changed_at
FROM b, rc, last_rows lr;

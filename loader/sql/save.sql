-- The save path: one call of save_batch() runs, in one transaction,
-- lock_batch, create_staging, two COPYs into the staging tables, then merge.

-- name: lock_batch
-- Check the schema version, serialise calls for one batch, create it if unknown, tune this transaction, and say which of the call's paths other batches own.
-- The schema version is checked here, in the call's first statement, rather than
-- in a statement of its own, so a call costs the same on a fresh connection.
-- The advisory lock is transaction-scoped: a concurrent call for the same batch
-- waits here until this one commits, so its merge sees this call's rows.
-- Paths owned by other batches are reported here, before COPY, so the client can
-- keep their raw input in load_rejects. A path claimed by another batch after
-- this point is caught by the merge (ON CONFLICT) and the call is retried.
WITH tuned AS (
    -- Statistics of the fresh staging tables are unknown; without this the
    -- planner overestimates them and spends a fifth of the merge compiling JIT.
    SELECT set_config('jit', 'off', true),
           set_config('work_mem', %(work_mem)s, true),
           set_config('statement_timeout', %(statement_timeout)s, true),
           set_config('lock_timeout', %(lock_timeout)s, true),
           set_config('client_min_messages', 'warning', true)
),
locked AS (
    -- Read from tuned so the settings are in force before the wait: then
    -- lock_timeout bounds it (statement_timeout only applies from the next
    -- statement on). Evaluated the other way round, a call queued behind a
    -- stuck call of the same batch waited forever.
    SELECT pg_advisory_xact_lock(hashtextextended('loader.batch:' || %(batch_id)s, 0)) FROM tuned
),
deployed AS (
    SELECT max(version) AS version FROM loader_schema_version
),
created AS (
    INSERT INTO batch_executions (batch_id, total_images)
    SELECT %(batch_id)s, %(total_images)s
    FROM locked, tuned, deployed
    WHERE deployed.version = %(schema_version)s
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING total_images
),
owned AS (
    -- 1-based ordinals into the arrays the client sent. They come as JSON text,
    -- not text[]: psycopg encodes a list as an array element by element in
    -- Python (25 ms for a 10,000-image call), json.dumps in C (5 ms).
    SELECT array_agg(p.ord ORDER BY p.ord) AS ords,
           array_agg(p.kind ORDER BY p.ord) AS kinds,
           array_agg(c.batch_id ORDER BY p.ord) AS owners
    FROM (
        -- An image_path stored by another batch.
        SELECT i.ord, 'image_path' AS kind, o.chain_id
        FROM json_array_elements_text(%(image_paths)s::json) WITH ORDINALITY AS i (path, ord)
        JOIN ocr_executions o ON o.image_path = i.path
        UNION ALL
        -- A public_path stored for a different image (in any batch), unless
        -- this batch already stored the image itself: then it is a replay and
        -- the merge keeps the first write.
        SELECT u.ord, 'public_path', o.chain_id
        FROM ROWS FROM (json_array_elements_text(%(image_paths)s::json),
                        json_array_elements_text(%(public_paths)s::json))
             WITH ORDINALITY AS u (image_path, path, ord)
        JOIN ocr_executions o ON o.public_path = u.path AND o.image_path <> u.image_path
        WHERE NOT EXISTS (
            SELECT FROM ocr_executions mine
            JOIN chain_executions mc ON mc.chain_id = mine.chain_id
            WHERE mine.image_path = u.image_path AND mc.batch_id = %(batch_id)s
        )
    ) AS p
    JOIN chain_executions c ON c.chain_id = p.chain_id
    WHERE p.kind = 'public_path' OR c.batch_id <> %(batch_id)s
)
SELECT coalesce((SELECT total_images FROM created),
                (SELECT total_images FROM batch_executions WHERE batch_id = %(batch_id)s)) AS total_images,
       EXISTS (SELECT FROM created) AS created,
       owned.ords, owned.kinds, owned.owners,
       deployed.version AS schema_version
FROM owned, locked, tuned, deployed;

-- name: create_staging
-- Create the session's staging tables once; emptied at every commit or rollback.
-- Session-lived rather than per-transaction so busy workers do not churn the
-- system catalogs. Suffixed with the schema version so a layout change never
-- meets an old table. Two statements in one round trip.
CREATE TEMP TABLE IF NOT EXISTS loader_stage_images_v1 (
    pos          integer NOT NULL,
    chain_id     text,
    image_path   text,
    public_path  text,
    status       text,
    error        text,
    reject       text,
    raw          bytea,
    raw_sha256   bytea
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS loader_stage_boxes_v1 (
    pos          integer NOT NULL,
    box          integer NOT NULL,
    text         text    NOT NULL,
    confidence   double precision NOT NULL,
    bbox         text    NOT NULL
) ON COMMIT DELETE ROWS;

-- name: merge
-- Move the staged call into the final tables and recompute the batch's totals and status; returns one row per staged input.
-- Everything is one statement, so it sees one snapshot taken after lock_batch
-- got the batch's lock: rows of earlier calls for this batch are visible.
-- Foreign keys are checked at the end of the statement, which is why an OCR row
-- may be inserted before the chain it points to: the chain is only created for
-- OCR rows that actually went in.
WITH
stage AS (
    -- Already stored by this batch: probed per staged path through the unique
    -- index on image_path (LATERAL + LIMIT keeps it a probe). Joining the
    -- batch's stored images instead read all of them on every call: 59,000
    -- rows, 120 ms, for the 60th chunk of a 1,000-image-chunk load.
    SELECT s.*,
           mine.id IS NOT NULL AS already_stored,
           mine.id AS stored_id,
           -- A failed image that arrives again as a success (re-run OCR, or a
           -- fixed input) replaces its failure; a success is never replaced.
           coalesce(mine.status = 'failed' AND s.status = 'success', false) AS upgrade
    FROM loader_stage_images_v1 s
    LEFT JOIN LATERAL (
        SELECT o.id, o.status
        FROM ocr_executions o
        JOIN chain_executions c ON c.chain_id = o.chain_id
        WHERE s.reject IS NULL AND o.image_path = s.image_path AND c.batch_id = %(batch_id)s
        LIMIT 1
    ) AS mine ON true
),
new_ocr AS (
    -- Inserted in image_path order so that concurrent calls of different
    -- batches touching the same paths take their index locks in one order and
    -- cannot deadlock. ON CONFLICT: a path claimed by another batch since
    -- lock_batch looked is skipped here and reported as lost below.
    INSERT INTO ocr_executions (chain_id, image_path, public_path, status, error)
    SELECT chain_id, image_path, public_path, status::ocr_status, error
    FROM stage
    WHERE reject IS NULL AND NOT already_stored
    ORDER BY image_path
    ON CONFLICT DO NOTHING
    RETURNING id, chain_id, status
),
new_chains AS (
    INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks)
    SELECT chain_id, %(batch_id)s,
           CASE status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
           1,
           (status = 'success')::integer,
           (status = 'failed')::integer
    FROM new_ocr
    RETURNING chain_id, status
),
upgraded_ocr AS (
    UPDATE ocr_executions o
    SET status = 'success', error = NULL
    FROM stage s
    WHERE s.upgrade AND o.id = s.stored_id
    RETURNING o.id, o.chain_id
),
upgraded_chains AS (
    UPDATE chain_executions c
    SET status = 'SUCCESS', completed_tasks = 1, failed_tasks = 0
    FROM upgraded_ocr u
    WHERE c.chain_id = u.chain_id AND c.status = 'FAILURE'
    RETURNING c.chain_id
),
new_boxes AS (
    -- Stored failures never have boxes, so an upgraded image takes its boxes
    -- without meeting old ones.
    INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)
    SELECT o.id, b.box, b.text, b.confidence, b.bbox::jsonb
    FROM (
        SELECT n.id, s.pos FROM new_ocr n JOIN stage s ON s.chain_id = n.chain_id
        UNION ALL
        SELECT u.id, s.pos FROM upgraded_ocr u JOIN stage s ON s.stored_id = u.id
    ) AS o
    JOIN loader_stage_boxes_v1 b ON b.pos = o.pos
    ORDER BY o.id, b.box
    RETURNING 1
),
new_rejects AS (
    INSERT INTO load_rejects (batch_id, position, image_path, reason, raw, raw_sha256)
    SELECT %(batch_id)s, pos, image_path, reject, raw, raw_sha256
    FROM stage
    WHERE reject IS NOT NULL
    ORDER BY pos
    ON CONFLICT (batch_id, position, raw_sha256) DO NOTHING
    RETURNING position, raw_sha256
),
outcome AS (
    SELECT s.pos,
           CASE
               WHEN s.reject IS NOT NULL AND r.position IS NOT NULL THEN 'rejected'
               WHEN s.reject IS NOT NULL THEN 'unchanged'
               WHEN u.id IS NOT NULL THEN 'replaced'
               WHEN s.already_stored THEN 'unchanged'
               WHEN n.chain_id IS NOT NULL THEN 'stored'
               ELSE 'lost'
           END AS outcome
    FROM stage s
    LEFT JOIN new_ocr n ON n.chain_id = s.chain_id AND s.reject IS NULL
    LEFT JOIN upgraded_ocr u ON u.id = s.stored_id
    LEFT JOIN new_rejects r ON r.position = s.pos AND r.raw_sha256 = s.raw_sha256
),
-- Totals: this statement's snapshot does not see its own inserts, so the stored
-- rows are counted as (rows before this call, read through the batch index)
-- plus (rows this call inserted). Never incremented from the client.
totals AS (
    SELECT be.total_images, be.created_at, be.updated_at, t.completed, t.failed,
           CASE
               WHEN t.completed + t.failed = 0 AND be.total_images > 0 THEN 'PENDING'
               WHEN t.completed + t.failed < be.total_images THEN 'STARTED'
               WHEN t.completed = 0 AND t.failed > 0 THEN 'FAILURE'
               ELSE 'SUCCESS'
           END::process_status AS status
    FROM batch_executions be,
         LATERAL (
             SELECT (SELECT count(*) FROM chain_executions
                     WHERE batch_id = be.batch_id AND status = 'SUCCESS')
                    + (SELECT count(*) FROM new_chains WHERE status = 'SUCCESS')
                    + (SELECT count(*) FROM upgraded_chains) AS completed,
                    (SELECT count(*) FROM chain_executions
                     WHERE batch_id = be.batch_id AND status = 'FAILURE')
                    + (SELECT count(*) FROM new_chains WHERE status = 'FAILURE')
                    - (SELECT count(*) FROM upgraded_chains)
                    + (SELECT count(*) FROM load_rejects WHERE batch_id = be.batch_id)
                    + (SELECT count(*) FROM new_rejects) AS failed
             -- OFFSET 0 keeps this subquery from being pulled up into the CASE
             -- below, which then ran each count once per mention (four times).
             OFFSET 0
         ) AS t
    WHERE be.batch_id = %(batch_id)s
),
batch AS (
    UPDATE batch_executions AS be
    SET completed_images = t.completed, failed_images = t.failed, status = t.status
    FROM totals t
    WHERE be.batch_id = %(batch_id)s
      -- A call that lost a race is rolled back and retried: write nothing.
      AND NOT EXISTS (SELECT FROM outcome WHERE outcome = 'lost')
      -- A replay changes nothing, so the row (and its updated_at) stays as is.
      AND (be.completed_images, be.failed_images, be.status) IS DISTINCT FROM
          (t.completed, t.failed, t.status)
    RETURNING be.updated_at
)
-- One row per staged input; at least one row (pos NULL) so the totals always come back.
SELECT o.pos, o.outcome,
       t.total_images, t.completed, t.failed, t.status::text AS status,
       t.created_at, coalesce((SELECT updated_at FROM batch), t.updated_at) AS updated_at
FROM totals t
LEFT JOIN outcome o ON true
ORDER BY o.pos;

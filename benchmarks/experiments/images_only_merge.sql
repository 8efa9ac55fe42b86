-- The images-only merge of benchmarks/experiments/prototypes.py (BoxesDirect):
-- main's merge (loader/sql/save.sql) with the OCR ids reserved by the client
-- (exp_stage_images.ocr_id), without the boxes (COPYed into ocr_text_boxes
-- afterwards), returning the OCR id of every image it stored or replaced.
-- Generated from main's merge at the time of the experiment; not package code.
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
    FROM exp_stage_images s
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
    INSERT INTO ocr_executions (id, chain_id, image_path, public_path, status, error)
    SELECT ocr_id, chain_id, image_path, public_path, status::ocr_status, error
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
    SELECT s.pos, coalesce(u.id, n.id) AS ocr_id,
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
SELECT o.pos, o.outcome, o.ocr_id,
       t.total_images, t.completed, t.failed, t.status::text AS status,
       t.created_at, coalesce((SELECT updated_at FROM batch), t.updated_at) AS updated_at
FROM totals t
LEFT JOIN outcome o ON true
ORDER BY o.pos;

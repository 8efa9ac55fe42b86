-- Result history (docs/history.md): the results a re-OCR, a repair or a rollback
-- replaced, kept by the merge (save.sql, kept_results) in ocr_result_history,
-- read, compared, restored and pruned here. A kept result's boxes are three
-- arrays (texts, confidences, bboxes); read, they come as one JSON array of
-- {"text", "confidence", "bbox"} in reading order, as a current result's do.

-- name: image_versions
-- Every result of one image, newest first: the current one (current true, from ocr_executions) and the kept ones.
WITH image AS (
    SELECT o.id, o.image_path, c.batch_id, c.position, o.result_version, o.model_version, o.status,
           o.error, o.public_path, o.updated_at
    FROM ocr_executions o
    JOIN chain_executions c ON c.chain_id = o.chain_id
    WHERE o.image_path = %(image_path)s
)
SELECT i.image_path, i.batch_id, i.position, i.result_version AS version, true AS current, i.model_version,
       i.status::text AS status, i.error, i.public_path,
       coalesce((SELECT jsonb_agg(jsonb_build_object('text', b.text, 'confidence', b.confidence, 'bbox', b.bbox)
                                  ORDER BY b.position)
                 FROM ocr_text_boxes b WHERE b.ocr_execution_id = i.id), '[]'::jsonb) AS boxes,
       i.updated_at AS stored_at, NULL::timestamptz AS replaced_at, NULL::bytea AS replaced_by,
       NULL::text AS replaced_in
FROM image i
UNION ALL
SELECT i.image_path, i.batch_id, i.position, h.version, false, h.model_version, h.status::text, h.error,
       h.public_path,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('text', u.t, 'confidence', u.c, 'bbox', u.b) ORDER BY u.n), '[]'::jsonb)
        FROM unnest(h.texts, h.confidences, h.bboxes) WITH ORDINALITY AS u (t, c, b, n)),
       h.stored_at, h.replaced_at, h.replaced_by, h.replaced_in
FROM image i
JOIN ocr_result_history h ON h.ocr_execution_id = i.id
ORDER BY version DESC;

-- name: batch_versions
-- A batch's results by model version: how many images hold one now, how many earlier results of it are kept, and when.
WITH results AS (
    SELECT o.model_version, 1 AS current_image, 0 AS kept_result, NULL::bigint AS kept_image,
           o.updated_at AS stored_at, NULL::timestamptz AS replaced_at
    FROM chain_executions c
    JOIN ocr_executions o ON o.chain_id = c.chain_id
    WHERE c.batch_id = %(batch_id)s
    UNION ALL
    SELECT h.model_version, 0, 1, h.ocr_execution_id, h.stored_at, h.replaced_at
    FROM ocr_result_history h
    WHERE h.batch_id = %(batch_id)s
)
SELECT model_version, sum(current_image) AS current_images, sum(kept_result) AS kept_results,
       count(DISTINCT kept_image) AS kept_images, max(stored_at) AS last_stored, max(replaced_at) AS last_replaced
FROM results
GROUP BY model_version
ORDER BY last_stored DESC, model_version NULLS LAST;

-- name: compare_versions
-- Compare two results of each image of a batch (by model version; by default the current one and the one it replaced): the counts, and the images that changed most.
-- The "to" side of an image is its newest result of model %(to)s (default: its
-- current result); the "from" side its newest result of model %(from)s older
-- than that (default: the result just before it). Images with both sides are
-- compared. A box changed when its text at the same reading position differs
-- (or one side has no box there); confidence means are weighted by boxes.
WITH sides AS (
    -- Per image, two index probes (LATERAL + LIMIT 1): no join of derived sets,
    -- whose sizes the planner cannot know (it guessed 200 rows and nested-looped
    -- 100,000 x 100,000). The boxes come as arrays in reading order: kept ones
    -- carry theirs; a current one (only ever the "to" side) is aggregated.
    SELECT o.id, o.image_path, f.version AS from_version, t.version AS to_version,
           f.model_version AS from_model, t.model_version AS to_model,
           f.status::text AS from_status, t.status::text AS to_status,
           f.error IS NOT DISTINCT FROM t.error AS same_error,
           f.texts AS ft, f.confidences AS fc, f.bboxes AS fb, t.texts AS tt, t.confidences AS tc, t.bboxes AS tb
    FROM chain_executions c
    JOIN ocr_executions o ON o.chain_id = c.chain_id
    CROSS JOIN LATERAL (
        SELECT *
        FROM (
            SELECT o.result_version AS version, o.model_version, o.status, o.error,
                   coalesce(array_agg(b.text ORDER BY b.position), '{}') AS texts,
                   coalesce(array_agg(b.confidence ORDER BY b.position), '{}') AS confidences,
                   coalesce(array_agg(b.bbox ORDER BY b.position), '{}') AS bboxes
            FROM ocr_text_boxes b
            WHERE b.ocr_execution_id = o.id AND (%(to)s::text IS NULL OR o.model_version = %(to)s::text)
            HAVING %(to)s::text IS NULL OR o.model_version = %(to)s::text
            UNION ALL
            SELECT h.version, h.model_version, h.status, h.error, h.texts, h.confidences, h.bboxes
            FROM ocr_result_history h
            WHERE %(to)s::text IS NOT NULL AND h.ocr_execution_id = o.id AND h.model_version = %(to)s::text
        ) AS candidates
        ORDER BY version DESC
        LIMIT 1
    ) AS t
    CROSS JOIN LATERAL (
        SELECT h.version, h.model_version, h.status, h.error, h.texts, h.confidences, h.bboxes
        FROM ocr_result_history h
        WHERE h.ocr_execution_id = o.id AND h.version < t.version
          AND (%(from)s::text IS NULL OR h.model_version = %(from)s::text)
        ORDER BY h.version DESC
        LIMIT 1
    ) AS f
    WHERE c.batch_id = %(batch_id)s
),
pairs AS MATERIALIZED (
    SELECT s.id, s.image_path, s.from_version, s.to_version, s.from_model, s.to_model, s.from_status,
           s.to_status, cardinality(s.ft) AS nf, cardinality(s.tt) AS nt,
           s.from_status = s.to_status AND s.same_error AND s.ft = s.tt AND s.fc = s.tc AND s.fb = s.tb AS same,
           s.from_status = 'success' AND s.to_status = 'success' AND s.ft <> s.tt AS text_changed,
           (SELECT coalesce(sum(c), 0) FROM unnest(s.fc) AS c) AS from_conf,
           (SELECT coalesce(sum(c), 0) FROM unnest(s.tc) AS c) AS to_conf,
           -- unnest of two arrays pads the shorter with NULLs: a box only one side has differs.
           (SELECT count(*) FROM unnest(s.ft, s.tt) AS u (a, b) WHERE a IS DISTINCT FROM b) AS changed_boxes
    FROM sides s
),
top AS (
    SELECT p.image_path, p.from_version, p.to_version, p.from_model, p.to_model, p.from_status, p.to_status,
           p.nf AS from_boxes, p.nt AS to_boxes, p.changed_boxes,
           p.to_conf / nullif(p.nt, 0) - p.from_conf / nullif(p.nf, 0) AS confidence_change
    FROM pairs p
    WHERE NOT p.same
    ORDER BY p.changed_boxes DESC, p.from_status <> p.to_status DESC,
             abs(coalesce(p.to_conf / nullif(p.nt, 0), 0) - coalesce(p.from_conf / nullif(p.nf, 0), 0)) DESC,
             p.image_path
    LIMIT %(top)s
)
SELECT (SELECT count(*) FROM chain_executions c JOIN ocr_executions o ON o.chain_id = c.chain_id
        WHERE c.batch_id = %(batch_id)s) AS batch_images,
       count(*) AS compared,
       count(*) FILTER (WHERE same) AS unchanged,
       count(*) FILTER (WHERE from_status = 'success' AND to_status = 'failed') AS success_to_failed,
       count(*) FILTER (WHERE from_status = 'failed' AND to_status = 'success') AS failed_to_success,
       count(*) FILTER (WHERE text_changed) AS text_changed,
       coalesce(sum(greatest(nt - nf, 0)), 0) AS boxes_added,
       coalesce(sum(greatest(nf - nt, 0)), 0) AS boxes_removed,
       sum(from_conf) / nullif(sum(nf), 0) AS from_mean_confidence,
       sum(to_conf) / nullif(sum(nt), 0) AS to_mean_confidence,
       coalesce(array_agg(DISTINCT from_model), '{}') AS from_models,
       coalesce(array_agg(DISTINCT to_model), '{}') AS to_models,
       coalesce((SELECT jsonb_agg(to_jsonb(t)) FROM top t), '[]'::jsonb) AS most_changed
FROM pairs;

-- name: rollback_targets
-- For each image of a batch with kept results: the result to restore (the newest kept one, or the newest of model %(to)s while the current one is another model), with its position.
SELECT DISTINCT ON (h.ocr_execution_id)
       o.image_path, c.position, o.result_version AS current_version, o.model_version AS current_model,
       h.version, h.model_version,
       -- Every column of the kept result but its boxes: the fields a rollback restores.
       to_jsonb(h) - ARRAY['texts', 'confidences', 'bboxes'] AS kept,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('text', u.t, 'confidence', u.c, 'bbox', u.b) ORDER BY u.n), '[]'::jsonb)
        FROM unnest(h.texts, h.confidences, h.bboxes) WITH ORDINALITY AS u (t, c, b, n)) AS boxes
FROM ocr_result_history h
JOIN ocr_executions o ON o.id = h.ocr_execution_id
JOIN chain_executions c ON c.chain_id = o.chain_id AND c.batch_id = h.batch_id
WHERE h.batch_id = %(batch_id)s
  AND (%(to)s::text IS NULL OR (h.model_version = %(to)s::text AND o.model_version IS DISTINCT FROM %(to)s::text))
ORDER BY h.ocr_execution_id, h.version DESC;

-- name: prune_history
-- Retention of kept results: delete those beyond an image's newest %(keep)s and/or replaced before %(before)s (both given: only those both select), in one batch or all; current results are never touched.
WITH ranked AS (
    SELECT h.ocr_execution_id, h.version, h.replaced_at,
           row_number() OVER (PARTITION BY h.ocr_execution_id ORDER BY h.version DESC) AS newest
    FROM ocr_result_history h
    WHERE %(batch_id)s::text IS NULL OR h.batch_id = %(batch_id)s::text
),
doomed AS (
    SELECT r.ocr_execution_id, r.version
    FROM ranked r
    WHERE (%(keep)s::integer IS NULL OR r.newest > %(keep)s::integer)
      AND (%(before)s::timestamptz IS NULL OR r.replaced_at < %(before)s::timestamptz)
)
DELETE FROM ocr_result_history h
USING doomed d
WHERE h.ocr_execution_id = d.ocr_execution_id AND h.version = d.version
RETURNING h.batch_id;

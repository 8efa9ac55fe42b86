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
    -- A timeout the role or session sets stricter (not 0, and shorter) than the
    -- loader's stays in force: the loader may tighten a DBA's bound, never loosen it.
    SELECT set_config('jit', 'off', true),
           set_config('work_mem', %(work_mem)s, true),
           set_config('statement_timeout', CASE WHEN own.statement THEN current_setting('statement_timeout')
                                                ELSE %(statement_timeout)s END, true),
           set_config('lock_timeout', CASE WHEN own.lock THEN current_setting('lock_timeout')
                                           ELSE %(lock_timeout)s END, true),
           set_config('client_min_messages', 'warning', true)
    FROM (
        SELECT bool_or(s.name = 'statement_timeout' AND s.stricter) AS statement,
               bool_or(s.name = 'lock_timeout' AND s.stricter) AS lock
        FROM (
            -- Compared as intervals: current_setting shows a value with its unit ('5s',
            -- '1500ms') or 0; ours is a GUC value ('60s', '500ms', or a bare number,
            -- which a GUC reads as milliseconds).
            SELECT v.name, o.own > interval '0' AND (o.ours = interval '0' OR o.own < o.ours) AS stricter
            FROM (VALUES ('statement_timeout', %(statement_timeout)s::text),
                         ('lock_timeout', %(lock_timeout)s::text)) AS v (name, ours)
            CROSS JOIN LATERAL (
                SELECT current_setting(v.name)::interval AS own,
                       (CASE WHEN v.ours ~ '^\s*[0-9.]+\s*$' THEN v.ours || 'ms' ELSE v.ours END)::interval AS ours
            ) AS o
        ) AS s
    ) AS own
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
       -- Inputs accounted for so far: a batch whose total grew past the one
       -- declared (see merge) is full, and still takes calls that declare it.
       coalesce((SELECT completed_images + failed_images FROM batch_executions
                 WHERE batch_id = %(batch_id)s), 0) AS accounted,
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
-- Move the staged call into the final tables, resolve the rejects it repairs, update the batch's totals from this call's changes and announce them; returns one row per staged input.
-- Everything is one statement, so it sees one snapshot taken after lock_batch
-- got the batch's lock: rows of earlier calls for this batch are visible, and
-- so are the batch's totals they left. Foreign keys are checked at the end of
-- the statement, which is why an OCR row may be inserted before the chain it
-- points to: the chain is only created for OCR rows that actually went in.
-- Parameters: batch_id, and by_position (a repair call: an image stored at
-- position P also resolves the batch's open reject at position P).
WITH
stage AS (
    -- Already stored by this batch: probed per staged path through the unique
    -- index on image_path (LATERAL + LIMIT keeps it a probe). Joining the
    -- batch's stored images instead read all of them on every call: 59,000
    -- rows, 120 ms, for the 60th chunk of a 1,000-image-chunk load. Probed for
    -- rejects too: a reject of an image the batch already stored is recorded
    -- as resolved by it.
    SELECT s.*,
           mine.id IS NOT NULL AS already_stored,
           mine.id AS stored_id,
           -- A failed image that arrives again as a success (re-run OCR, or a
           -- fixed input) replaces its failure; a success is never replaced.
           coalesce(s.reject IS NULL AND mine.status = 'failed' AND s.status = 'success', false) AS upgrade
    FROM loader_stage_images_v1 s
    LEFT JOIN LATERAL (
        SELECT o.id, o.status
        FROM ocr_executions o
        JOIN chain_executions c ON c.chain_id = o.chain_id
        WHERE o.image_path = s.image_path AND c.batch_id = %(batch_id)s
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
    RETURNING id, chain_id, image_path, status
),
new_chains AS (
    INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks)
    SELECT chain_id, %(batch_id)s,
           CASE status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
           1,
           (status = 'success')::integer,
           (status = 'failed')::integer
    FROM new_ocr
    RETURNING chain_id
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
        SELECT u.id, s.pos FROM upgraded_ocr u JOIN stage s ON s.upgrade AND s.stored_id = u.id
    ) AS o
    JOIN loader_stage_boxes_v1 b ON b.pos = o.pos
    ORDER BY o.id, b.box
    RETURNING 1
),
-- Repairs. An image this call newly stored takes the place of one open reject
-- of the batch: the one at its position (repair calls only), else one claiming
-- its image_path. One each way, so the batch's count of inputs never drops:
-- the image counts where the reject did. A replaced failure resolves nothing:
-- it adds no input, and the only open rejects naming a stored image are
-- duplicates within the call that stored it, which stay open.
claims AS (
    SELECT r.id AS reject_id, n.id AS ocr_id, 0 AS preference
    FROM new_ocr n
    JOIN stage s ON s.chain_id = n.chain_id
    JOIN load_rejects r ON r.batch_id = %(batch_id)s AND r.position = s.pos AND r.resolved_at IS NULL
    WHERE %(by_position)s
      -- Evaluated once: a batch without open rejects skips the probes.
      AND EXISTS (SELECT FROM load_rejects WHERE batch_id = %(batch_id)s AND resolved_at IS NULL)
    UNION ALL
    SELECT r.id, n.id, 1
    FROM new_ocr n
    JOIN load_rejects r ON r.batch_id = %(batch_id)s AND r.image_path = n.image_path AND r.resolved_at IS NULL
    WHERE EXISTS (SELECT FROM load_rejects WHERE batch_id = %(batch_id)s AND resolved_at IS NULL)
),
matched AS (
    SELECT DISTINCT ON (ocr_id) reject_id, ocr_id
    FROM (
        SELECT DISTINCT ON (reject_id) reject_id, ocr_id, preference
        FROM claims
        ORDER BY reject_id, preference, ocr_id
    ) AS per_reject
    ORDER BY ocr_id, preference, reject_id
),
resolved AS (
    UPDATE load_rejects r
    SET resolved_at = now(), resolved_by = m.ocr_id
    FROM matched m
    WHERE r.id = m.reject_id
    RETURNING r.id, m.ocr_id
),
new_rejects AS (
    -- A reject of an image this batch stored before this call (say the
    -- original bad input redelivered after its fix) is resolved from the start.
    INSERT INTO load_rejects (batch_id, position, image_path, reason, raw, raw_sha256, resolved_at, resolved_by)
    SELECT %(batch_id)s, pos, image_path, reject, raw, raw_sha256,
           CASE WHEN stored_id IS NOT NULL THEN now() END, stored_id
    FROM stage
    WHERE reject IS NOT NULL
    ORDER BY pos
    ON CONFLICT (batch_id, position, raw_sha256) DO NOTHING
    RETURNING position, raw_sha256, resolved_at
),
superseded AS (
    -- A repair line refused again takes the place of the open reject it was
    -- meant to fix (resolved, by no OCR row), so the position counts once.
    UPDATE load_rejects r
    SET resolved_at = now()
    FROM new_rejects n
    WHERE %(by_position)s AND n.resolved_at IS NULL
      AND r.batch_id = %(batch_id)s AND r.position = n.position AND r.resolved_at IS NULL
      AND r.id NOT IN (SELECT reject_id FROM matched)
    RETURNING r.id
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
           END AS outcome,
           x.id IS NOT NULL AS resolved
    FROM stage s
    LEFT JOIN new_ocr n ON n.chain_id = s.chain_id AND s.reject IS NULL
    LEFT JOIN upgraded_ocr u ON u.id = s.stored_id AND s.upgrade
    LEFT JOIN new_rejects r ON r.position = s.pos AND r.raw_sha256 = s.raw_sha256
    LEFT JOIN resolved x ON x.ocr_id = n.id
),
-- Totals: the batch's stored totals (kept exact by every call under the
-- batch's lock) plus what this call changed, never a recount of the batch:
-- that read every chain and reject of the batch, 7 ms a call at 59,000 images
-- and growing. OCR statuses are counted, as tests/checks.py::recount does.
-- MATERIALIZED: evaluated once, not once per mention in the CASE below.
delta AS MATERIALIZED (
    SELECT (SELECT count(*) FROM new_ocr WHERE status = 'success')
           + (SELECT count(*) FROM upgraded_ocr) AS completed,
           (SELECT count(*) FROM new_ocr WHERE status = 'failed')
           - (SELECT count(*) FROM upgraded_ocr)
           + (SELECT count(*) FROM new_rejects WHERE resolved_at IS NULL)
           - (SELECT count(*) FROM resolved)
           - (SELECT count(*) FROM superseded) AS failed
),
counted AS (
    SELECT be.total_images AS declared, be.created_at, be.updated_at, be.status AS current,
           be.completed_images + d.completed AS completed,
           be.failed_images + d.failed AS failed
    FROM batch_executions be, delta d
    WHERE be.batch_id = %(batch_id)s
),
totals AS (
    -- More inputs accounted for than declared (more distinct images than the
    -- batch was registered with): the total grows to match, so completed +
    -- failed never exceeds it and the percentage needs no cap.
    SELECT c.*, greatest(c.declared, c.completed + c.failed) AS total_images,
           loader_batch_status(c.declared, c.completed, c.failed, c.current) AS status
    FROM counted c
),
batch AS (
    -- Written even when some input was lost to a concurrent batch: what this
    -- statement stored is counted now, and reject_lost adds the rest in the
    -- same transaction. A replay changes nothing, so the row (and its
    -- updated_at) stays as is and nothing is announced.
    UPDATE batch_executions AS be
    SET total_images = t.total_images, completed_images = t.completed, failed_images = t.failed,
        status = t.status
    FROM totals t
    WHERE be.batch_id = %(batch_id)s
      AND (be.total_images, be.completed_images, be.failed_images, be.status) IS DISTINCT FROM
          (t.total_images, t.completed, t.failed, t.status)
    RETURNING be.batch_id, be.total_images, be.completed_images, be.failed_images, be.status, be.updated_at
),
announced AS (
    -- Delivered to LISTEN loader_progress sessions when the call commits, never
    -- if it rolls back (loader/progress.py follow_progress). batch_id is at
    -- most 255 characters, so the payload stays far below the 8000-byte limit.
    SELECT pg_notify('loader_progress', json_build_object(
               'batch_id', b.batch_id, 'completed', b.completed_images, 'failed', b.failed_images,
               'total', b.total_images, 'status', b.status)::text)
    FROM batch b
)
-- One row per staged input; at least one row (pos NULL) so the totals always come back.
SELECT o.pos, o.outcome, o.resolved,
       t.total_images, t.completed, t.failed, t.status::text AS status,
       t.created_at, coalesce((SELECT updated_at FROM batch), t.updated_at) AS updated_at,
       (SELECT count(*) FROM announced) AS announced
FROM totals t
LEFT JOIN outcome o ON true
ORDER BY o.pos;

-- name: batch_lock
-- Take the batch's advisory lock for this transaction (what lock_batch takes), so no call of the batch runs meanwhile.
SELECT pg_advisory_xact_lock(hashtextextended('loader.batch:' || %(batch_id)s, 0));

-- name: recount_batch
-- Recount a batch's totals from its stored rows and store them (announced like a merge's); run after batch_lock, in its transaction.
-- For batches whose totals no merge kept: written by the application's old
-- save path or by other writers. The merge itself never recounts.
WITH counted AS (
    SELECT be.batch_id, be.total_images AS declared, be.status AS current,
           (SELECT count(*) FROM ocr_executions o JOIN chain_executions c ON c.chain_id = o.chain_id
            WHERE c.batch_id = be.batch_id AND o.status = 'success') AS completed,
           (SELECT count(*) FROM ocr_executions o JOIN chain_executions c ON c.chain_id = o.chain_id
            WHERE c.batch_id = be.batch_id AND o.status = 'failed')
           + (SELECT count(*) FROM load_rejects r
              WHERE r.batch_id = be.batch_id AND r.resolved_at IS NULL) AS failed
    FROM batch_executions be
    WHERE be.batch_id = %(batch_id)s
),
totals AS (
    -- The same rules as the merge's.
    SELECT c.*, greatest(c.declared, c.completed + c.failed) AS total_images,
           loader_batch_status(c.declared, c.completed, c.failed, c.current) AS status
    FROM counted c
),
batch AS (
    UPDATE batch_executions AS be
    SET total_images = t.total_images, completed_images = t.completed, failed_images = t.failed,
        status = t.status
    FROM totals t
    WHERE be.batch_id = t.batch_id
      AND (be.total_images, be.completed_images, be.failed_images, be.status) IS DISTINCT FROM
          (t.total_images, t.completed, t.failed, t.status)
    RETURNING be.batch_id, be.total_images, be.completed_images, be.failed_images, be.status
),
announced AS (
    SELECT pg_notify('loader_progress', json_build_object(
               'batch_id', b.batch_id, 'completed', b.completed_images, 'failed', b.failed_images,
               'total', b.total_images, 'status', b.status)::text)
    FROM batch b
)
SELECT (SELECT count(*) FROM batch) AS changed, (SELECT count(*) FROM announced) AS announced;

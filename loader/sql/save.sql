-- The save path: one call of save_batch() runs, in one transaction,
-- lock_batch, the staging tables' CREATE (loader/copy.py), two COPYs into them,
-- then merge. {stage_images} / {stage_boxes} are the staging tables' names,
-- filled in from their declaration in loader/copy.py.

-- name: lock_batch
-- Check the schema version, serialise calls for one batch, create it if unknown, tune this transaction, and say whether this very call was committed before.
-- The schema version is checked here, in the call's first statement, rather than
-- in a statement of its own, so a call costs the same on a fresh connection.
-- The advisory lock is transaction-scoped: a concurrent call for the same batch
-- waits here until this one commits, so its merge sees this call's rows.
-- A call whose digest the batch's ledger (loader_calls) holds is a redelivery:
-- the client then commits at once, without judging, staging or merging.
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
           set_config('client_min_messages', 'warning', true),
           -- The batch counters are written by the loader in this transaction
           -- (schema.sql, "the batch counters are the loader's").
           set_config('loader.keeping_totals', 'on', true)
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
    INSERT INTO batch_executions (batch_id, total_images, declared_images)
    SELECT %(batch_id)s, %(total_images)s, %(total_images)s
    FROM locked, tuned, deployed
    WHERE deployed.version = %(schema_version)s
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id, total_images, declared_images, completed_images, failed_images, status,
              created_at, updated_at
),
batch AS (
    SELECT * FROM created
    UNION ALL
    SELECT be.batch_id, be.total_images, coalesce(be.declared_images, be.total_images), be.completed_images,
           be.failed_images, be.status, be.created_at, be.updated_at
    FROM batch_executions be, locked
    WHERE be.batch_id = %(batch_id)s AND NOT EXISTS (SELECT FROM created)
)
SELECT deployed.version AS schema_version,
       EXISTS (SELECT FROM created) AS created,
       b.total_images, b.declared_images, b.completed_images, b.failed_images,
       b.status::text AS status, b.created_at, b.updated_at,
       (SELECT count(*) FROM load_rejects r
        WHERE r.batch_id = %(batch_id)s AND r.resolved_at IS NULL) AS rejected_images,
       EXISTS (SELECT FROM loader_calls l, locked
               WHERE l.batch_id = %(batch_id)s AND l.digest = %(digest)s) AS replayed
FROM deployed, tuned
LEFT JOIN batch b ON true;

-- name: merge
-- Move the staged call into the final tables by the identity rule, update the batch's totals from this call's changes and announce them; returns one row per staged input.
-- Everything is one statement, so it sees one snapshot taken after lock_batch
-- got the batch's lock: rows of earlier calls for this batch are visible, and
-- so are the batch's totals they left. Foreign keys are checked at the end of
-- the statement, which is why an OCR row may be inserted before the chain it
-- points to: the chain is only created for OCR rows that actually went in.
-- The identity rule (README, "Guarantees"): an input is its position in the
-- batch. Parameters: batch_id, mode ('plain', 'repair' or 'replace'), and the
-- call's digest, first_position and inputs for the ledger.
WITH
flags AS (
    SELECT EXISTS (SELECT FROM load_rejects
                   WHERE batch_id = %(batch_id)s AND resolved_at IS NULL) AS any_open_reject
),
stage AS (
    -- Each probe is an index lookup per staged input (LATERAL + LIMIT keeps it
    -- one): what the batch holds at this position (a stored image, or an open
    -- reject), where this image_path is stored (any batch), and who else uses
    -- this public_path.
    SELECT s.*,
           here.id AS here_id, here.image_path AS here_path, here.status AS here_status,
           hrej.id AS hrej_id, hrej.image_path AS hrej_path,
           mine.id AS mine_id, mine.status AS mine_status, mine.batch_id AS mine_batch,
           mine.position AS mine_pos, mine.chain_pk AS mine_chain,
           pub.batch_id AS pub_batch
    FROM {stage_images} s
    LEFT JOIN LATERAL (
        SELECT o.id, o.image_path, o.status
        FROM chain_executions c
        JOIN ocr_executions o ON o.chain_id = c.chain_id
        WHERE c.batch_id = %(batch_id)s AND c.position = s.pos
        LIMIT 1
    ) AS here ON true
    LEFT JOIN LATERAL (
        SELECT r.id, r.image_path
        FROM load_rejects r
        WHERE r.batch_id = %(batch_id)s AND r.position = s.pos AND r.resolved_at IS NULL
        ORDER BY r.id
        LIMIT 1
    ) AS hrej ON (SELECT any_open_reject FROM flags)
    LEFT JOIN LATERAL (
        SELECT o.id, o.status, c.batch_id, c.position, c.id AS chain_pk
        FROM ocr_executions o
        JOIN chain_executions c ON c.chain_id = o.chain_id
        WHERE o.image_path = s.image_path
        LIMIT 1
    ) AS mine ON true
    LEFT JOIN LATERAL (
        SELECT c.batch_id
        FROM ocr_executions o
        JOIN chain_executions c ON c.chain_id = o.chain_id
        WHERE o.public_path = s.public_path AND o.image_path IS DISTINCT FROM s.image_path
        LIMIT 1
    ) AS pub ON s.public_path IS NOT NULL
),
seen AS (
    -- This position received this very input before: the image it stores, or
    -- a reject (open, or resolved by a repair) of the same bytes (seen_bytes)
    -- or, for a plain call, of the same image_path. A repair line for the image
    -- an open reject claims is that reject's fix, not a replay.
    SELECT st.*,
           (st.here_path IS NOT DISTINCT FROM st.image_path AND st.here_id IS NOT NULL)
           OR EXISTS (
               SELECT FROM load_rejects r
               WHERE r.batch_id = %(batch_id)s AND r.position = st.pos
                 AND (r.raw_sha256 = st.raw_sha256 OR (r.image_path = st.image_path AND %(mode)s <> 'repair'))
           ) AS seen_here
    FROM stage st
),
judged AS (
    SELECT st.*,
           CASE
               -- Re-OCR: a result for an image this batch stores replaces it.
               WHEN %(mode)s = 'replace' AND st.reject IS NULL AND st.mine_batch = %(batch_id)s THEN
                   CASE WHEN st.pub_batch IS NULL THEN 'replace' ELSE 'refused' END
               -- A repair says what each input fixes; it never adds an input.
               WHEN %(mode)s = 'repair' THEN
                   CASE
                       WHEN st.reject IS NULL AND st.here_path = st.image_path AND st.here_status = 'failed'
                           THEN 'replace'
                       WHEN st.seen_here THEN 'unchanged'
                       WHEN st.hrej_id IS NOT NULL AND st.reject IS NOT NULL THEN 'supersede'
                       WHEN st.hrej_id IS NOT NULL AND (st.mine_id IS NOT NULL OR st.pub_batch IS NOT NULL)
                           THEN 'elsewhere'
                       WHEN st.hrej_id IS NOT NULL THEN 'fix'
                       WHEN st.reject IS NULL AND st.mine_batch = %(batch_id)s AND st.mine_status = 'failed'
                           THEN 'replace'
                       ELSE 'refused'
                   END
               WHEN st.seen_here THEN 'unchanged'
               WHEN st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL THEN 'conflict'
               WHEN st.reject IS NOT NULL THEN 'reject'
               -- Stored in this batch by another writer, at no position: this input claims it.
               WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NULL THEN 'claim'
               WHEN st.mine_id IS NOT NULL OR st.pub_batch IS NOT NULL THEN 'elsewhere'
               ELSE 'new'
           END AS verdict,
           -- The reason of a reject the merge words itself, so it reads the
           -- same wherever the chunk boundaries fell.
           CASE
               WHEN st.duplicate = 'image_path' AND st.mine_batch IS DISTINCT FROM %(batch_id)s
                    AND st.mine_batch IS NOT NULL
                   THEN format('image_path already stored by another batch (%%L)', st.mine_batch)
               WHEN st.duplicate = 'image_path'
                   THEN format('duplicate image_path (first at position %%s)',
                               coalesce(st.mine_pos, st.dup_of))
               WHEN st.duplicate = 'public_path'
                   THEN format('public_path already used by another image (batch %%L)',
                               coalesce(st.pub_batch, %(batch_id)s))
               WHEN st.reject IS NOT NULL THEN st.reject
               WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NOT NULL
                   THEN format('duplicate image_path (first at position %%s)', st.mine_pos)
               WHEN st.mine_batch IS NOT NULL AND st.mine_batch <> %(batch_id)s
                   THEN format('image_path already stored by another batch (%%L)', st.mine_batch)
               WHEN st.pub_batch IS NOT NULL
                   THEN format('public_path already used by another image (batch %%L)', st.pub_batch)
           END AS reason
    FROM seen st
),
new_ocr AS (
    -- Inserted in image_path order so that concurrent calls of different
    -- batches touching the same paths take their index locks in one order and
    -- cannot deadlock. ON CONFLICT: a path claimed by another batch since
    -- this statement's snapshot is skipped here and reported as lost below.
    INSERT INTO ocr_executions (chain_id, image_path, public_path, status, error, model_version)
    SELECT chain_id, image_path, public_path, status::ocr_status, error, model_version
    FROM judged
    WHERE verdict IN ('new', 'fix')
    ORDER BY image_path
    ON CONFLICT DO NOTHING
    RETURNING id, chain_id, image_path, status
),
new_chains AS (
    INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks, position)
    SELECT n.chain_id, %(batch_id)s,
           CASE n.status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
           1,
           (n.status = 'success')::integer,
           (n.status = 'failed')::integer,
           j.pos
    FROM new_ocr n
    JOIN judged j ON j.chain_id = n.chain_id AND j.verdict IN ('new', 'fix')
    RETURNING chain_id
),
claimed AS (
    UPDATE chain_executions c
    SET position = j.pos
    FROM judged j
    WHERE j.verdict = 'claim' AND c.id = j.mine_chain
    RETURNING c.id
),
replaced_ocr AS (
    -- The OCR row keeps its id; everything the result says is replaced.
    UPDATE ocr_executions o
    SET status = j.status::ocr_status, error = j.error, public_path = j.public_path,
        model_version = j.model_version
    FROM judged j
    WHERE j.verdict = 'replace' AND o.id = j.mine_id
    RETURNING o.id, o.chain_id, j.pos, j.mine_status::text AS old_status, o.status::text AS new_status
),
replaced_chains AS (
    UPDATE chain_executions c
    SET status = CASE r.new_status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
        completed_tasks = (r.new_status = 'success')::integer,
        failed_tasks = (r.new_status = 'failed')::integer
    FROM replaced_ocr r
    WHERE c.chain_id = r.chain_id
    RETURNING c.id
),
dropped_boxes AS (
    -- Whatever boxes a replaced row held (another writer may have given a
    -- failed row some) go; the new result's boxes take their places.
    DELETE FROM ocr_text_boxes b
    USING replaced_ocr r
    WHERE b.ocr_execution_id = r.id
    RETURNING b.id
),
new_boxes AS (
    -- Reads dropped_boxes' count, so the old boxes are gone before the new
    -- ones take their (ocr_execution_id, position) keys.
    INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)
    SELECT o.id, b.box, b.text, b.confidence, b.bbox::jsonb
    FROM (
        SELECT n.id, j.pos FROM new_ocr n JOIN judged j ON j.chain_id = n.chain_id AND j.verdict IN ('new', 'fix')
        UNION ALL
        SELECT r.id, r.pos FROM replaced_ocr r
    ) AS o
    JOIN {stage_boxes} b ON b.pos = o.pos
    WHERE (SELECT count(*) FROM dropped_boxes) >= 0
    ORDER BY o.id, b.box
    RETURNING 1
),
resolved AS (
    -- A repair line stored at a rejected position resolves that reject.
    UPDATE load_rejects r
    SET resolved_at = now(), resolved_by = n.id
    FROM judged j
    JOIN new_ocr n ON n.chain_id = j.chain_id
    WHERE j.verdict = 'fix' AND r.id = j.hrej_id
    RETURNING r.id, n.id AS ocr_id
),
new_rejects AS (
    INSERT INTO load_rejects (batch_id, position, image_path, reason, raw, raw_sha256)
    SELECT %(batch_id)s, pos, image_path, reason, raw, raw_sha256
    FROM judged
    WHERE verdict IN ('reject', 'supersede')
    ORDER BY pos
    ON CONFLICT (batch_id, position, raw_sha256) DO NOTHING
    RETURNING position, raw_sha256
),
superseded AS (
    -- A repair line refused again takes the place of the open reject it was
    -- meant to fix (resolved, by no OCR row), so the position counts once.
    UPDATE load_rejects r
    SET resolved_at = now()
    FROM judged j
    WHERE j.verdict = 'supersede' AND r.id = j.hrej_id
    RETURNING r.id
),
ledger AS (
    INSERT INTO loader_calls (batch_id, digest, first_position, inputs)
    VALUES (%(batch_id)s, %(digest)s, %(first_position)s, %(inputs)s)
    ON CONFLICT (batch_id, digest) DO NOTHING
    RETURNING 1
),
outcome AS (
    SELECT j.pos,
           CASE
               WHEN j.verdict IN ('new', 'fix') AND n.chain_id IS NOT NULL THEN 'stored'
               WHEN j.verdict IN ('new', 'fix') THEN 'lost'
               WHEN j.verdict = 'replace' THEN 'replaced'
               WHEN j.verdict IN ('unchanged', 'claim') THEN 'unchanged'
               WHEN j.verdict IN ('reject', 'supersede') AND r.position IS NOT NULL THEN 'rejected'
               WHEN j.verdict IN ('reject', 'supersede') THEN 'unchanged'
               WHEN j.verdict = 'elsewhere' THEN 'lost'
               ELSE j.verdict
           END AS outcome,
           CASE
               WHEN j.verdict = 'conflict' THEN coalesce(j.here_path, j.hrej_path)
               WHEN j.verdict = 'refused' AND j.reason IS NOT NULL THEN j.reason
               WHEN j.verdict = 'refused' AND %(mode)s = 'repair'
                   THEN 'fixes nothing: this position holds no open reject, and the image is not a failure stored by this batch'
               WHEN j.verdict IN ('elsewhere', 'reject', 'supersede') THEN j.reason
           END AS reason,
           x.id IS NOT NULL AS resolved
    FROM judged j
    LEFT JOIN new_ocr n ON n.chain_id = j.chain_id AND j.verdict IN ('new', 'fix')
    LEFT JOIN new_rejects r ON r.position = j.pos AND r.raw_sha256 = j.raw_sha256
    LEFT JOIN resolved x ON x.ocr_id = n.id
),
-- Totals: the batch's stored totals (kept exact by every call under the
-- batch's lock) plus what this call changed, never a recount of the batch
-- (that grows with the batch) unless another writer made them stale.
-- MATERIALIZED: evaluated once, not once per mention below.
delta AS MATERIALIZED (
    SELECT (SELECT count(*) FROM new_ocr WHERE status = 'success')
           + (SELECT count(*) FROM replaced_ocr WHERE new_status = 'success' AND old_status = 'failed')
           - (SELECT count(*) FROM replaced_ocr WHERE new_status = 'failed' AND old_status = 'success')
           AS completed,
           (SELECT count(*) FROM new_ocr WHERE status = 'failed')
           - (SELECT count(*) FROM replaced_ocr WHERE new_status = 'success' AND old_status = 'failed')
           + (SELECT count(*) FROM replaced_ocr WHERE new_status = 'failed' AND old_status = 'success')
           AS failed,
           (SELECT count(*) FROM new_rejects)
           - (SELECT count(*) FROM resolved)
           - (SELECT count(*) FROM superseded) AS rejected,
           (SELECT count(*) FROM ledger) AS recorded
),
base AS (
    -- A batch another writer touched (totals_stale) is recounted from its rows,
    -- once: the statement's snapshot holds them as they were before this call.
    -- Its reads name the batch by the parameter, not be.batch_id: planned for
    -- this very value, they seek the batch through its index (schema.sql, "v5
    -- indexes: plans"), not what an average batch would cost.
    SELECT be.batch_id, coalesce(be.declared_images, be.total_images) AS declared, be.created_at,
           be.updated_at, be.status AS current,
           CASE WHEN be.totals_stale THEN (SELECT rc.completed FROM loader_recount(%(batch_id)s) rc)
                ELSE be.completed_images END AS completed,
           CASE WHEN be.totals_stale THEN (SELECT rc.failed + rc.rejected FROM loader_recount(%(batch_id)s) rc)
                ELSE be.failed_images END AS failed,
           (SELECT count(*) FROM load_rejects r
            WHERE r.batch_id = %(batch_id)s AND r.resolved_at IS NULL) AS rejected
    FROM batch_executions be
    WHERE be.batch_id = %(batch_id)s
),
counted AS (
    SELECT b.declared, b.created_at, b.updated_at, b.current,
           b.completed + d.completed AS completed,
           b.failed + d.failed + d.rejected AS failed,
           b.rejected + d.rejected AS rejected
    FROM base b, delta d
),
totals AS (
    -- More inputs accounted for than declared: the total grows to match, so
    -- completed + failed never exceeds it and the percentage needs no cap.
    SELECT c.*, greatest(c.declared, c.completed + c.failed) AS total_images,
           loader_batch_status(c.declared, c.completed, c.failed, c.current) AS status
    FROM counted c
),
batch AS (
    -- A replay changes nothing, so the row (and its updated_at) stays as is
    -- and nothing is announced.
    UPDATE batch_executions AS be
    SET total_images = t.total_images, completed_images = t.completed, failed_images = t.failed,
        status = t.status, totals_stale = false
    FROM totals t
    WHERE be.batch_id = %(batch_id)s
      AND (be.total_images, be.completed_images, be.failed_images, be.status, be.totals_stale)
          IS DISTINCT FROM (t.total_images, t.completed, t.failed, t.status, false)
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
SELECT o.pos, o.outcome, o.reason, coalesce(o.resolved, false) AS resolved,
       t.total_images, t.completed AS completed_images, t.failed AS failed_images,
       t.rejected AS rejected_images, t.status::text AS status,
       t.created_at, coalesce((SELECT updated_at FROM batch), t.updated_at) AS updated_at,
       (SELECT count(*) FROM announced) AS announced,
       (SELECT recorded FROM delta) AS recorded
FROM totals t
LEFT JOIN outcome o ON true
ORDER BY o.pos;

-- name: batch_lock
-- Take the batch's advisory lock for this transaction (what lock_batch takes), so no call of the batch runs meanwhile.
SELECT pg_advisory_xact_lock(hashtextextended('loader.batch:' || %(batch_id)s, 0));

-- name: recount_batch
-- Recount a batch's totals from its stored rows and store them (announced like a merge's); run after batch_lock, in its transaction.
-- For batches whose totals another writer touched (the merge itself recounts
-- only those, marked totals_stale). The total goes back to the declared one
-- unless more inputs than that are accounted for.
WITH keeping AS (
    SELECT set_config('loader.keeping_totals', 'on', true)
),
counted AS (
    SELECT be.batch_id, coalesce(be.declared_images, be.total_images) AS declared, be.status AS current,
           rc.completed, rc.failed + rc.rejected AS failed
    -- loader_recount of the parameter, not of be.batch_id: planned for this very
    -- value, it seeks the batch through its index (schema.sql, "v5 indexes: plans").
    FROM batch_executions be, keeping, loader_recount(%(batch_id)s) rc
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
        status = t.status, totals_stale = false
    FROM totals t
    WHERE be.batch_id = t.batch_id
      AND (be.total_images, be.completed_images, be.failed_images, be.status, be.totals_stale)
          IS DISTINCT FROM (t.total_images, t.completed, t.failed, t.status, false)
    RETURNING be.batch_id, be.total_images, be.completed_images, be.failed_images, be.status
),
announced AS (
    SELECT pg_notify('loader_progress', json_build_object(
               'batch_id', b.batch_id, 'completed', b.completed_images, 'failed', b.failed_images,
               'total', b.total_images, 'status', b.status)::text)
    FROM batch b
)
SELECT (SELECT count(*) FROM batch) AS changed, (SELECT count(*) FROM announced) AS announced;

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
-- Batches finished (SUCCESS or FAILURE) and last changed before a time, oldest first: candidates for retention.
SELECT batch_id, status::text AS status, total_images, updated_at
FROM batch_executions
WHERE status IN ('SUCCESS', 'FAILURE') AND updated_at < %(before)s
ORDER BY updated_at, id
LIMIT %(limit)s;

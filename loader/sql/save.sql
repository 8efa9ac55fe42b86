-- The save path: one call of save_batch() runs, in one transaction,
-- lock_batch, the staging tables' CREATE (loader/copy.py), two COPYs into them,
-- then merge. {stage_images} / {stage_boxes} are the staging tables' names,
-- filled in from their declaration in loader/copy.py; {result_columns} and the
-- other lists name an OCR result's fields as loader/fields.py declares them
-- (fields.sql_lists says which list is which).

-- name: lock_batch
-- Check the schema version, serialise calls for one batch, create it if unknown, tune this transaction, and say whether this very call was committed before.
-- The schema version is checked here, in the call's first statement, rather than
-- in a statement of its own, so a call costs the same on a fresh connection.
-- The advisory lock is transaction-scoped: a concurrent call for the same batch
-- waits here until this one commits, so its merge sees this call's rows.
-- A call whose digest the batch's ledger (loader_calls) holds, and whose
-- positions the rows confirm (loader_locked_call), is a redelivery: the client
-- then commits at once, without judging, staging or merging.
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
    -- A NULL total: the call is a chunk, which never creates its batch (save.py).
    WHERE deployed.version = %(schema_version)s AND %(total_images)s::integer IS NOT NULL
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id, total_images, declared_images, completed_images, failed_images, status,
              created_at, updated_at
),
seen AS (
    -- Evaluated for locked's row, so only once the lock is granted; and
    -- loader_locked_call (schema.sql) is VOLATILE, so under READ COMMITTED its
    -- query reads the ledger, the rows and the batch in a snapshot of its own,
    -- newer than the lock. This statement's snapshot predates the wait: a
    -- delete committed meanwhile is invisible to it, and a replay judged from it
    -- would acknowledge a call whose rows are gone. A function rather than one
    -- more statement keeps a call at 8 statements and a replay at 3.
    -- A re-OCR call is never taken for a replay here: its rows cannot confirm it
    -- (it replaces images wherever they are stored), so the merge judges it again
    -- (merge: sent.again).
    SELECT loader_locked_call(%(batch_id)s, CASE WHEN %(mode)s <> 'replace' THEN %(digest)s::bytea END,
                              %(first_position)s, %(last_position)s, %(inputs)s) AS v
    FROM locked, deployed
    WHERE deployed.version = %(schema_version)s
),
batch AS (
    SELECT c.total_images::bigint AS total_images, c.declared_images, c.completed_images::bigint AS completed_images,
           c.failed_images::bigint AS failed_images, 0::bigint AS rejected_images, c.status::text AS status,
           c.created_at, c.updated_at, false AS replayed
    FROM created c
    UNION ALL
    SELECT (s.v).total_images, (s.v).declared_images, (s.v).completed_images, (s.v).failed_images,
           (s.v).rejected_images, (s.v).status, (s.v).created_at, (s.v).updated_at, (s.v).replayed
    FROM seen s
    WHERE NOT EXISTS (SELECT FROM created) AND (s.v).status IS NOT NULL
)
SELECT deployed.version AS schema_version,
       EXISTS (SELECT FROM created) AS created,
       b.total_images, b.declared_images, b.completed_images, b.failed_images,
       b.status, b.created_at, b.updated_at, coalesce(b.rejected_images, 0) AS rejected_images,
       coalesce(b.replayed, false) AS replayed
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
-- stage: each probe is an index lookup per staged input (LATERAL + LIMIT keeps
-- it one): what the batch holds at this position (a stored image, a chain
-- without an OCR row: an unfilled slot, or an open reject), where this
-- image_path is stored (any batch), who else uses this public_path, and a
-- version-3 reject of this very input at its call-relative position (migration
-- 0005 marks those rejects; flags.any_legacy probes only while the batch holds any).
-- Comments inside the statement stay short before stage's FROM: pg_stat_activity
-- shows a query's first 1024 bytes, and tests find the merge by that FROM.
WITH
flags AS (
    SELECT EXISTS (SELECT FROM load_rejects
                   WHERE batch_id = %(batch_id)s AND resolved_at IS NULL) AS any_open_reject,
           coalesce(%(first_position)s::integer > 0, false)
           AND EXISTS (SELECT FROM load_rejects
                       WHERE batch_id = %(batch_id)s AND legacy_position AND resolved_at IS NULL) AS any_legacy
),
stage AS (
    SELECT s.*,
           here.id AS here_id, here.image_path AS here_path, here.status AS here_status,
           CASE WHEN here.id IS NULL THEN here.chain_id END AS slot_chain,
           hrej.id AS hrej_id, hrej.image_path AS hrej_path,
           mine.id AS mine_id, mine.status AS mine_status, mine.batch_id AS mine_batch,
           mine.position AS mine_pos, mine.chain_pk AS mine_chain,
           pub.batch_id AS pub_batch,
           legacy.id AS legacy_id,
           taken.id IS NOT NULL AS chain_taken
    FROM {stage_images} s
    LEFT JOIN LATERAL (
        SELECT c.chain_id, o.id, o.image_path, o.status
        FROM chain_executions c
        LEFT JOIN ocr_executions o ON o.chain_id = c.chain_id
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
    LEFT JOIN LATERAL (
        SELECT r.id
        FROM load_rejects r
        WHERE r.batch_id = %(batch_id)s AND r.position = s.pos - %(first_position)s
          AND r.legacy_position AND r.resolved_at IS NULL
          AND (r.raw_sha256 = s.raw_sha256 OR r.image_path = s.image_path)
        ORDER BY r.id
        LIMIT 1
    ) AS legacy ON (SELECT any_legacy FROM flags)
    -- An input that creates a chain (no chain here, its image stored nowhere): its
    -- derived chain id may already name one, whose OCR row the application deleted
    -- or that another image filled; judged.new_chain then takes another id. The
    -- conditions on outer columns gate the probe (a one-time filter per row).
    LEFT JOIN LATERAL (
        SELECT c.id FROM chain_executions c
        WHERE s.reject IS NULL AND here.chain_id IS NULL AND mine.id IS NULL AND c.chain_id = s.chain_id
        LIMIT 1
    ) AS taken ON true
),
sent AS (
    -- A re-OCR call the ledger holds: sent again (README, re-OCR: it takes effect once).
    SELECT %(mode)s = 'replace' AND EXISTS (SELECT FROM loader_calls
                                            WHERE batch_id = %(batch_id)s AND digest = %(digest)s) AS again
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
           ) AS seen_here,
           -- The lowest position holds a duplicated image (README, "One identity for
           -- every input"): this input comes before the position storing it.
           (st.mine_batch = %(batch_id)s AND st.mine_pos > st.pos AND st.pub_batch IS NULL
            AND st.slot_chain IS NULL) AS lower
    FROM stage st
),
judged AS (
    SELECT st.*,
           CASE
               -- Re-OCR: a result for an image this batch stores replaces it, once: the
               -- same call sent again (the ledger holds it) leaves the image as it is,
               -- whatever was written since (README, re-OCR).
               WHEN %(mode)s = 'replace' AND st.reject IS NULL AND st.mine_batch = %(batch_id)s THEN
                   CASE WHEN (SELECT again FROM sent) THEN 'unchanged'
                        WHEN st.pub_batch IS NULL THEN 'replace' ELSE 'refused' END
               -- ... and never takes another batch's image; a line that cannot be
               -- read replaces nothing (refused alone, never a conflict of the call).
               WHEN %(mode)s = 'replace' AND st.reject IS NULL AND st.mine_batch IS NOT NULL THEN 'refused'
               WHEN %(mode)s = 'replace' AND st.reject IS NOT NULL AND NOT st.seen_here
                    AND (st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL) THEN 'refused'
               -- A repair says what each input fixes; it never adds an input.
               WHEN %(mode)s = 'repair' THEN
                   CASE
                       WHEN st.reject IS NULL AND st.here_path = st.image_path AND st.here_status = 'failed'
                           THEN 'replace'
                       WHEN st.seen_here THEN 'unchanged'
                       WHEN st.hrej_id IS NOT NULL AND st.reject IS NOT NULL THEN 'supersede'
                       WHEN st.hrej_id IS NOT NULL AND st.reject IS NULL AND st.lower THEN 'take'
                       WHEN st.hrej_id IS NOT NULL AND (st.mine_id IS NOT NULL OR st.pub_batch IS NOT NULL)
                           THEN 'elsewhere'
                       WHEN st.hrej_id IS NOT NULL THEN 'fix'
                       WHEN st.reject IS NULL AND st.mine_batch = %(batch_id)s AND st.mine_status = 'failed'
                           THEN 'replace'
                       WHEN st.slot_chain IS NOT NULL AND st.reject IS NULL AND st.mine_id IS NULL
                            AND st.pub_batch IS NULL THEN 'fill'
                       ELSE 'refused'
                   END
               WHEN st.seen_here THEN 'unchanged'
               WHEN st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL THEN 'conflict'
               WHEN st.reject IS NOT NULL THEN 'reject'
               -- Stored in this batch by another writer, at no position: this input claims it.
               WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NULL THEN 'claim'
               -- Stored at a higher position: this input takes the image, that position
               -- becomes the duplicate (the same rows whatever the arrival order).
               WHEN st.reject IS NULL AND st.lower THEN 'take'
               WHEN st.mine_id IS NOT NULL OR st.pub_batch IS NOT NULL THEN 'elsewhere'
               -- A chain at this position without an OCR row (an application's
               -- in-flight chain, or one whose OCR row was deleted): this input fills it.
               WHEN st.slot_chain IS NOT NULL THEN 'fill'
               ELSE 'new'
           END AS verdict,
           -- The reason of a reject the merge words itself, so it reads the
           -- same wherever the chunk boundaries fell: a duplicate's is worded
           -- here only (the client stages a placeholder, validate.WORDED_BY_THE_MERGE).
           CASE
               WHEN %(mode)s = 'replace' AND st.reject IS NULL AND st.mine_batch = %(batch_id)s
                    AND st.pub_batch IS NOT NULL
                   THEN format('public_path already used by another image (batch %%L)', st.pub_batch)
               WHEN %(mode)s = 'replace' AND st.reject IS NULL AND st.mine_batch <> %(batch_id)s
                   THEN format('image_path already stored by another batch (%%L): a re-OCR replaces only '
                               'this batch''s images', st.mine_batch)
               WHEN %(mode)s = 'replace' AND st.reject IS NOT NULL AND st.duplicate IS NULL
                    AND (st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL)
                   THEN format('%%s: a re-OCR line that cannot be read replaces nothing', st.reject)
               WHEN st.duplicate = 'image_path' AND st.mine_batch IS DISTINCT FROM %(batch_id)s
                    AND st.mine_batch IS NOT NULL
                   THEN format('image_path already stored by another batch (%%L)', st.mine_batch)
               -- least() skips NULLs: the lower of the call's first input of the image
               -- and the position the batch stores it at.
               WHEN st.duplicate = 'image_path'
                   THEN format('duplicate image_path (first at position %%s)', least(st.mine_pos, st.dup_of))
               WHEN st.duplicate = 'public_path'
                   THEN format('public_path already used by another image (batch %%L)',
                               coalesce(st.pub_batch, %(batch_id)s))
               WHEN st.reject IS NOT NULL THEN st.reject
               -- A lower input that cannot take its image: its public_path is another's.
               WHEN st.pub_batch IS NOT NULL AND st.mine_batch = %(batch_id)s AND st.mine_pos > st.pos
                   THEN format('public_path already used by another image (batch %%L)', st.pub_batch)
               WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NOT NULL
                   THEN format('duplicate image_path (first at position %%s)', st.mine_pos)
               WHEN st.mine_batch IS NOT NULL AND st.mine_batch <> %(batch_id)s
                   THEN format('image_path already stored by another batch (%%L)', st.mine_batch)
               WHEN st.pub_batch IS NOT NULL
                   THEN format('public_path already used by another image (batch %%L)', st.pub_batch)
           END AS reason,
           -- The chain an input stored at a free position creates: the derived id
           -- (validate.chain_id_for), or a random one, as the application's own chains
           -- have, where the derived id is taken (else a unique violation, 23505).
           CASE WHEN st.chain_taken THEN gen_random_uuid()::text ELSE st.chain_id END AS new_chain
    FROM seen st
),
new_ocr AS (
    -- Inserted in image_path order so that concurrent calls of different
    -- batches touching the same paths take their index locks in one order and
    -- cannot deadlock. ON CONFLICT: a path claimed by another batch since
    -- this statement's snapshot is skipped here and reported as lost below.
    -- An input filling a slot joins the chain already there.
    INSERT INTO ocr_executions (chain_id, {result_columns})
    SELECT coalesce(slot_chain, new_chain), {result_values}
    FROM judged
    WHERE verdict IN ('new', 'fix', 'fill')
    ORDER BY image_path
    ON CONFLICT DO NOTHING
    RETURNING id, chain_id, image_path, status
),
placed AS (
    -- Each OCR row inserted, with the input it came from.
    SELECT n.id, n.chain_id, n.status, j.pos, j.verdict, j.hrej_id
    FROM new_ocr n
    JOIN judged j ON coalesce(j.slot_chain, j.new_chain) = n.chain_id AND j.verdict IN ('new', 'fix', 'fill')
),
new_chains AS (
    INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks, position)
    SELECT p.chain_id, %(batch_id)s,
           CASE p.status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
           1,
           (p.status = 'success')::integer,
           (p.status = 'failed')::integer,
           p.pos
    FROM placed p
    WHERE p.verdict IN ('new', 'fix')
    RETURNING chain_id
),
filled AS (
    -- The slot's chain keeps its id and position; it now records the OCR task.
    UPDATE chain_executions c
    SET status = CASE p.status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
        total_tasks = greatest(c.total_tasks, 1),
        completed_tasks = (p.status = 'success')::integer,
        failed_tasks = (p.status = 'failed')::integer
    FROM placed p
    WHERE p.verdict = 'fill' AND c.chain_id = p.chain_id
    RETURNING c.id
),
claimed AS (
    UPDATE chain_executions c
    SET position = j.pos
    FROM judged j
    WHERE j.verdict = 'claim' AND c.id = j.mine_chain
    RETURNING c.id
),
replaced_ocr AS (
    -- The OCR row keeps its id; everything the result says is replaced. A
    -- re-OCR's result_version counts one more (the old result goes to
    -- kept_results); a lower position taking a duplicated image ('take') is
    -- no new OCR run of the image: its version stays, and the result it
    -- displaces is kept as the duplicate reject's raw (displaced).
    UPDATE ocr_executions o
    SET {replaced_set},
        result_version = o.result_version + (j.verdict = 'replace')::integer
    FROM judged j
    WHERE j.verdict IN ('replace', 'take') AND o.id = j.mine_id
    RETURNING o.id, o.chain_id, j.pos, j.mine_status::text AS old_status, o.status::text AS new_status,
              j.verdict = 'take' AS moved
),
replaced_chains AS (
    -- A replace is one more OCR run of the chain: counted on top of whatever
    -- the chain's counters hold (the application's increments included), never
    -- reset, so completed + failed = total stays true wherever it was. A take
    -- makes the chain the lower input's: its one run, at its position, as if
    -- that input had arrived first (rows the same for every arrival order).
    UPDATE chain_executions c
    SET status = CASE r.new_status WHEN 'success' THEN 'SUCCESS' ELSE 'FAILURE' END::process_status,
        total_tasks = c.total_tasks + (NOT r.moved)::integer,
        completed_tasks = CASE WHEN r.moved THEN 0 ELSE c.completed_tasks END + (r.new_status = 'success')::integer,
        failed_tasks = CASE WHEN r.moved THEN 0 ELSE c.failed_tasks END + (r.new_status = 'failed')::integer,
        position = CASE WHEN r.moved THEN r.pos ELSE c.position END
    FROM replaced_ocr r
    WHERE c.chain_id = r.chain_id
    RETURNING c.id
),
dropped_boxes AS (
    -- Whatever boxes a replaced row held (another writer may have given a
    -- failed row some) go; the new result's boxes take their places. What
    -- they were is returned for kept_results.
    DELETE FROM ocr_text_boxes b
    USING replaced_ocr r
    WHERE b.ocr_execution_id = r.id
    RETURNING b.ocr_execution_id, b.position, b.text, b.confidence, b.bbox
),
kept_results AS (
    -- Result history (docs/history.md): every replaced result, as it was. The
    -- statement's snapshot predates replaced_ocr's update, so ocr_executions
    -- still reads the old result here, and dropped_boxes returns its boxes.
    -- Nothing is read or written when the call replaces nothing.
    -- Boxes as arrays (texts, confidences, bboxes): array_agg copies the values,
    -- where building JSON of them cost five times as much.
    INSERT INTO ocr_result_history (batch_id, ocr_execution_id, version, {kept_columns},
                                    texts, confidences, bboxes, stored_at, replaced_by, replaced_in)
    SELECT %(batch_id)s, o.id, o.result_version, {kept_values},
           coalesce(b.texts, ARRAY[]::text[]), coalesce(b.confidences, ARRAY[]::float8[]),
           coalesce(b.bboxes, ARRAY[]::jsonb[]),
           o.updated_at, %(digest)s, %(mode)s
    FROM replaced_ocr r
    JOIN ocr_executions o ON o.id = r.id AND NOT r.moved
    LEFT JOIN (
        SELECT d.ocr_execution_id, array_agg(d.text ORDER BY d.position) AS texts,
               array_agg(d.confidence ORDER BY d.position) AS confidences,
               array_agg(d.bbox ORDER BY d.position) AS bboxes
        FROM dropped_boxes d
        GROUP BY d.ocr_execution_id
    ) AS b ON b.ocr_execution_id = r.id
    ORDER BY o.id
    RETURNING 1
),
new_boxes AS (
    -- Reads dropped_boxes' count, so the old boxes are gone before the new
    -- ones take their (ocr_execution_id, position) keys.
    INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)
    SELECT o.id, b.box, b.text, b.confidence, b.bbox::jsonb
    FROM (
        SELECT p.id, p.pos FROM placed p
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
    SET resolved_at = now(), resolved_by = x.ocr_id
    FROM (
        SELECT p.hrej_id, p.id AS ocr_id FROM placed p WHERE p.verdict = 'fix'
        UNION ALL
        SELECT j.hrej_id, j.mine_id FROM judged j WHERE j.verdict = 'take' AND j.hrej_id IS NOT NULL
    ) AS x
    WHERE r.id = x.hrej_id
    RETURNING r.id, x.ocr_id
),
displaced AS (
    -- The position a lower input took an image from becomes that image's
    -- duplicate. Its raw bytes were never kept (an input stored is kept as rows),
    -- so raw is the stored result re-encoded: PostgreSQL's jsonb text of its
    -- fields and its text_boxes in reading order, as the snapshot holds them
    -- before this statement.
    SELECT j.mine_pos AS pos, j.image_path,
           format('duplicate image_path (first at position %%s)', j.pos) AS reason,
           convert_to(jsonb_build_object(
               {raw_fields},
               'text_boxes', coalesce((
                   SELECT jsonb_agg(jsonb_build_object('text', b.text, 'confidence', b.confidence,
                                                       'bbox', b.bbox) ORDER BY b.position)
                   FROM ocr_text_boxes b WHERE b.ocr_execution_id = o.id), '[]'::jsonb))::text, 'UTF8') AS raw
    FROM judged j
    JOIN ocr_executions o ON o.id = j.mine_id
    WHERE j.verdict = 'take'
),
renamed AS (
    -- The image's other duplicates name its new first position.
    UPDATE load_rejects r
    SET reason = format('duplicate image_path (first at position %%s)', j.pos)
    FROM judged j
    WHERE j.verdict = 'take' AND r.batch_id = %(batch_id)s AND r.image_path = j.image_path
      AND r.resolved_at IS NULL AND NOT r.legacy_position AND r.position <> j.pos
      AND r.reason LIKE 'duplicate image_path (first at position %%'
      AND r.reason <> format('duplicate image_path (first at position %%s)', j.pos)
    RETURNING r.id
),
new_rejects AS (
    INSERT INTO load_rejects (batch_id, position, image_path, reason, raw, raw_sha256)
    SELECT %(batch_id)s, x.pos, x.image_path, x.reason, x.raw, x.raw_sha256
    FROM (
        SELECT pos, image_path, reason, raw, raw_sha256
        FROM judged
        WHERE verdict IN ('reject', 'supersede')
        UNION ALL
        SELECT pos, image_path, reason, raw, sha256(raw) FROM displaced
    ) AS x
    ORDER BY x.pos
    ON CONFLICT (batch_id, position, raw_sha256) DO NOTHING
    RETURNING position, raw_sha256
),
superseded AS (
    -- A repair line refused again takes the place of the open reject it was
    -- meant to fix (resolved, by no OCR row), so the position counts once;
    -- so does a version-3 reject of an input now judged at its batch position.
    -- The ids as one array: a primary-key probe each, whatever the planner
    -- guesses of the staged rows (as a join it read the table whole).
    UPDATE load_rejects r
    SET resolved_at = now()
    WHERE r.id = ANY (ARRAY(
              SELECT hrej_id FROM judged WHERE verdict = 'supersede'
              UNION
              SELECT legacy_id FROM judged WHERE legacy_id IS NOT NULL))
      AND (SELECT count(*) FROM renamed) >= 0
    RETURNING r.id
),
wrote AS MATERIALIZED (
    -- Whether this call wrote rows: a change to the batch even when its totals
    -- stay (a re-OCR whose results stay successes), which moves the batch's
    -- updated_at (retention reads it), is announced, and is recorded in the ledger.
    SELECT EXISTS (SELECT FROM new_ocr) OR EXISTS (SELECT FROM replaced_ocr) OR EXISTS (SELECT FROM claimed)
           OR EXISTS (SELECT FROM new_rejects) OR EXISTS (SELECT FROM resolved)
           OR EXISTS (SELECT FROM superseded) OR EXISTS (SELECT FROM renamed) AS rows
),
ledger AS (
    -- Only a call that wrote rows is recorded. One that wrote none (every input
    -- refused, or received before) left nothing at its positions to confirm it:
    -- sent again, it is judged again, and then finds what changed since (a repair
    -- that fixed nothing finds the reject a later call put at its position).
    INSERT INTO loader_calls (batch_id, digest, first_position, inputs)
    SELECT %(batch_id)s, %(digest)s, %(first_position)s, %(inputs)s
    FROM wrote
    WHERE wrote.rows
    ON CONFLICT (batch_id, digest) DO NOTHING
    RETURNING 1
),
outcome AS (
    SELECT j.pos,
           CASE
               WHEN j.verdict IN ('new', 'fix', 'fill') AND n.chain_id IS NOT NULL THEN 'stored'
               WHEN j.verdict IN ('new', 'fix', 'fill') THEN 'lost'
               WHEN j.verdict = 'take' THEN 'stored'
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
               WHEN j.verdict = 'unchanged' AND %(mode)s = 'replace' AND j.reject IS NULL
                   THEN 'a re-OCR call replaces a result once: this very call was committed before'
           END AS reason,
           x.id IS NOT NULL AS resolved
    FROM judged j
    LEFT JOIN placed n ON n.pos = j.pos
    LEFT JOIN new_rejects r ON r.position = j.pos AND r.raw_sha256 = j.raw_sha256
    LEFT JOIN resolved x ON x.ocr_id = coalesce(n.id, CASE WHEN j.verdict = 'take' THEN j.mine_id END)
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
           (SELECT count(*) FROM ledger) AS recorded,
           (SELECT rows FROM wrote) AS changed
),
base AS (
    -- A batch another writer touched (totals_stale) is recounted from its rows,
    -- once: the statement's snapshot holds them as they were before this call.
    -- outside_writes as counted from: the batch UPDATE below clears the mark
    -- only if no other writer has written since. Its reads name the batch by the
    -- parameter, not be.batch_id: planned for this very value, they seek the batch
    -- through its index (schema.sql, "v5 indexes: plans"), not what an average
    -- batch would cost.
    SELECT be.batch_id, coalesce(be.declared_images, be.total_images) AS declared, be.created_at,
           be.updated_at, be.status AS current, be.outside_writes,
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
    SELECT b.declared, b.created_at, b.updated_at, b.current, b.outside_writes, d.changed,
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
    -- A call that wrote no row and changes no total (a replay, another cut of
    -- stored inputs) leaves the row (and its updated_at) as is and announces
    -- nothing; any other is written and announced. The mark of another writer
    -- is cleared only when the outside_writes counted from is the row's: this
    -- UPDATE, when it waited for the row's lock, re-reads the newest version
    -- (EvalPlanQual), WHERE and SET alike, so a write committed while the merge
    -- ran (its trigger bumped outside_writes) keeps the batch stale for the
    -- next reader, and its totals are recounted then, never lost.
    UPDATE batch_executions AS be
    SET total_images = t.total_images, completed_images = t.completed, failed_images = t.failed,
        status = t.status, totals_stale = be.outside_writes IS DISTINCT FROM t.outside_writes
    FROM totals t
    WHERE be.batch_id = %(batch_id)s
      AND (t.changed
           OR (be.total_images, be.completed_images, be.failed_images, be.status, be.totals_stale)
              IS DISTINCT FROM (t.total_images, t.completed, t.failed, t.status, false))
    RETURNING be.batch_id, be.total_images, be.completed_images, be.failed_images, be.status, be.updated_at,
              be.totals_stale
),
announced AS (
    -- Delivered to LISTEN loader_progress sessions when the call commits, never
    -- if it rolls back (loader/progress/read.py follow_progress). batch_id is at
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
       (SELECT recorded FROM delta) AS recorded,
       -- Another writer wrote while this statement ran (its UPDATE re-read the
       -- batch row and kept it stale): the totals above are this statement's
       -- snapshot's, and the caller reads the batch's progress again.
       coalesce((SELECT totals_stale FROM batch), false) AS left_stale
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
           be.outside_writes, rc.completed, rc.failed + rc.rejected AS failed
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
    -- As the merge's: a write by another writer committed meanwhile keeps the mark.
    UPDATE batch_executions AS be
    SET total_images = t.total_images, completed_images = t.completed, failed_images = t.failed,
        status = t.status, totals_stale = be.outside_writes IS DISTINCT FROM t.outside_writes
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

-- name: batch_declared
-- The batch's declared total, read in a fresh snapshot under the batch's lock: lock_batch's own snapshot predates its lock wait, so a batch created meanwhile by a concurrent call is invisible to it.
SELECT coalesce(declared_images, total_images) AS declared
FROM batch_executions
WHERE batch_id = %(batch_id)s;

-- `loader schema adopt`: the application's tables, as its ORM created them, into schema.sql.
-- Every statement here runs with search_path set to the schema holding those tables.
-- Old tables are read through `::text` casts so the same text serves a status stored as
-- a native enum (processstatus, ocrstatus) or as varchar, and a bbox as json or jsonb.

-- name: catalog_namespace_of_application_tables
-- The namespace in which the application's batch_executions resolves on the search_path (an un-adopted database).
SELECT n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('batch_executions');

-- name: adopt_lock
-- Serialise with schema deployments and other adoptions (the key schema.sql takes); the counters are the loader's in this transaction.
-- loader.keeping_totals: adopt recounts every batch itself, so the triggers that
-- mark batches another writer touched (schema.sql) need not run for each row copied.
SELECT pg_advisory_xact_lock(7423011001), set_config('loader.keeping_totals', 'on', true);

-- name: adopt_lock_tables
-- Nobody reads or writes the application's tables until the conversion commits. One
-- statement, parents before children (foreign-key order), every attempt the same order.
LOCK TABLE batch_executions, chain_executions, task_logs, ocr_executions, ocr_text_boxes
    IN ACCESS EXCLUSIVE MODE;

-- name: adopt_deadlock_timeout
-- The server's deadlock_timeout in milliseconds: adopt's attempts at its locks stay below it.
SELECT setting::integer AS ms FROM pg_settings WHERE name = 'deadlock_timeout';

-- name: adopt_session
-- Who adopts, and where: the current schema (first of the search_path) and the role.
SELECT current_schema() AS namespace, current_user AS role;

-- name: adopt_loader_version_table
-- Whether the current schema holds a loader_schema_version table.
SELECT to_regclass(quote_ident(current_schema()) || '.loader_schema_version') IS NOT NULL AS present;

-- name: adopt_loader_version
-- The loader schema version recorded in the current schema (0 when the table is empty).
SELECT coalesce(max(version), 0) AS version FROM loader_schema_version;

-- name: adopt_timezone_known
-- Whether a time zone name is one the server knows (naive timestamps are read in it).
SELECT EXISTS (SELECT FROM pg_timezone_names WHERE name = %(tz)s) AS known;

-- name: adopt_tables
-- The application's tables present in the current schema, with their owner.
SELECT c.relname AS name, pg_get_userbyid(c.relowner) AS owner
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND c.relname = ANY (%(tables)s::text[]);

-- name: adopt_columns
-- Columns of the application's tables: type as printed, whether an enum (and its labels), nullability, default.
SELECT c.relname AS table_name, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       t.typtype = 'e' AS is_enum,
       CASE WHEN t.typtype = 'e' THEN
           (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
       END AS labels,
       a.attnotnull AS not_null, d.adbin IS NOT NULL OR a.attidentity <> '' AS has_default
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
ORDER BY c.relname, a.attnum;

-- name: adopt_primary_keys
-- Single-column primary keys of the application's tables.
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = con.conkey[1]
WHERE con.contype = 'p' AND cardinality(con.conkey) = 1
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[]);

-- name: adopt_unique_columns
-- Columns of the application's tables that a unique, non-partial, single-column index covers (constraint or not).
SELECT DISTINCT c.relname AS table_name, a.attname AS column_name
FROM pg_index x
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0]
WHERE x.indisunique AND x.indnatts = 1 AND x.indpred IS NULL AND x.indexprs IS NULL
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[]);

-- name: adopt_foreign_keys
-- Single-column foreign keys touching the application's tables (from or to them), as table.column -> table.column.
SELECT con.conname AS name, src.relname AS table_name, sa.attname AS column_name,
       dst.relname AS ref_table, da.attname AS ref_column,
       src.relname = ANY (%(tables)s::text[]) AND src.relnamespace = current_schema()::regnamespace AS from_app
FROM pg_constraint con
JOIN pg_class src ON src.oid = con.conrelid
JOIN pg_class dst ON dst.oid = con.confrelid
JOIN pg_attribute sa ON sa.attrelid = src.oid AND sa.attnum = con.conkey[1]
JOIN pg_attribute da ON da.attrelid = dst.oid AND da.attnum = con.confkey[1]
WHERE con.contype = 'f'
  AND ((src.relnamespace = current_schema()::regnamespace AND src.relname = ANY (%(tables)s::text[]))
       OR (dst.relnamespace = current_schema()::regnamespace AND dst.relname = ANY (%(tables)s::text[])))
ORDER BY src.relname, con.conname;

-- name: adopt_dependent_views
-- Views and materialized views that read the application's tables (dropping the tables would need them gone).
SELECT DISTINCT v.relname AS view_name, c.relname AS table_name
FROM pg_depend d
JOIN pg_rewrite r ON r.oid = d.objid
JOIN pg_class v ON v.oid = r.ev_class
JOIN pg_class c ON c.oid = d.refobjid
WHERE d.classid = 'pg_rewrite'::regclass AND v.oid <> c.oid
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[]);

-- name: adopt_user_triggers
-- Triggers someone added to the application's tables (the ORM makes none; the loader schema has its own).
SELECT c.relname AS table_name, t.tgname AS name
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
ORDER BY 1, 2;

-- name: adopt_relations_to_rename
-- Indexes, owned sequences and other constraints of the application's tables, whose names the new tables will need.
SELECT 'index' AS kind, i.relname AS name
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
UNION ALL
SELECT 'sequence', s.relname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_class c ON c.oid = d.refobjid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
UNION ALL
-- Constraint names without an index: PostgreSQL names the new tables' keys so they
-- differ from every constraint of the schema, so the old names must be out of the way.
SELECT 'constraint ' || c.relname, con.conname
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
WHERE con.contype IN ('f', 'c', 'n')  -- 'n': NOT NULL constraints, PostgreSQL 18 on
  AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
ORDER BY 1, 2;

-- name: adopt_table_grants
-- Table privileges others hold on the application's tables (not the owner's, not loader_writer's), to carry over.
SELECT c.relname AS table_name, a.privilege_type AS privilege,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.is_grantable
FROM pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])
  AND a.grantee <> c.relowner
  AND a.grantee IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = 'loader_writer')
ORDER BY 1, 3, 2;

-- name: adopt_unused_old_enums
-- The application's enum types that no column outside its tables uses (dropped with them).
SELECT t.typname AS name
FROM pg_type t
WHERE t.typnamespace = current_schema()::regnamespace AND t.typtype = 'e'
  AND t.typname = ANY (%(enums)s::text[])
  AND NOT EXISTS (
      SELECT FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      WHERE a.atttypid IN (t.oid, t.typarray) AND NOT a.attisdropped
        AND NOT (c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(tables)s::text[])))
  AND NOT EXISTS (
      SELECT FROM pg_depend d
      WHERE d.refobjid = t.oid AND d.classid NOT IN ('pg_type'::regclass, 'pg_class'::regclass));

-- name: adopt_dirty_rows
-- Old rows that would break a constraint (or an invariant) of schema.sql: one row per (rule, offending row).
-- Details are built with || rather than format(): a %s here would be taken for a
-- query parameter by psycopg (the report printed $1 instead of values).
WITH first_ocr AS (
    SELECT DISTINCT ON (chain_id) chain_id, id, status::text AS status
    FROM ocr_executions
    WHERE chain_id IS NOT NULL
    ORDER BY chain_id, id
)
SELECT 'batch_executions.batch_id NOT NULL' AS rule, 'batch_executions' AS table_name, id, NULL AS detail
FROM batch_executions WHERE batch_id IS NULL
UNION ALL
SELECT 'batch_executions.batch_id CHECK (batch_id <> '''' AND length(batch_id) <= 255)', 'batch_executions', id,
       'batch_id ' || quote_literal(left(batch_id, 40))
FROM batch_executions WHERE batch_id = '' OR length(batch_id) > 255
UNION ALL
SELECT 'chain_executions.chain_id NOT NULL CHECK (chain_id <> '''')', 'chain_executions', id,
       'chain_id ' || coalesce(quote_literal(chain_id), 'NULL')
FROM chain_executions WHERE chain_id IS NULL OR chain_id = ''
UNION ALL
SELECT 'chain_executions.batch_id NOT NULL', 'chain_executions', id, NULL
FROM chain_executions WHERE batch_id IS NULL
UNION ALL
SELECT 'chain_executions.status NOT NULL, a process_status label', 'chain_executions', id,
       'status ' || coalesce(quote_literal(status::text), 'NULL')
FROM chain_executions
WHERE status IS NULL
   OR status::text NOT IN ('PENDING', 'STARTED', 'SUCCESS', 'RUNNING', 'FAILURE', 'RETRY', 'REVOKED')
UNION ALL
SELECT 'chain_executions task counters NOT NULL CHECK (>= 0)', 'chain_executions', id,
       'total ' || coalesce(total_tasks::text, 'NULL') || ', completed ' || coalesce(completed_tasks::text, 'NULL')
       || ', failed ' || coalesce(failed_tasks::text, 'NULL')
FROM chain_executions
WHERE NOT (total_tasks >= 0 AND completed_tasks >= 0 AND failed_tasks >= 0)
   OR total_tasks IS NULL OR completed_tasks IS NULL OR failed_tasks IS NULL
UNION ALL
-- The merge counts a batch's images by its chains' status, so a chain must say what its OCR row says.
SELECT 'chain_executions.status agrees with its OCR row (SUCCESS/FAILURE only with a success/failed OCR row)',
       'chain_executions', c.id,
       'chain ' || c.chain_id || ' is ' || coalesce(c.status::text, 'NULL') || ', its OCR row '
       || coalesce('is ' || lower(o.status), 'is missing')
FROM chain_executions c
LEFT JOIN first_ocr o ON o.chain_id = c.chain_id
WHERE CASE lower(o.status)
          WHEN 'success' THEN c.status::text IS DISTINCT FROM 'SUCCESS'
          WHEN 'failed' THEN c.status::text IS DISTINCT FROM 'FAILURE'
          ELSE c.status::text IN ('SUCCESS', 'FAILURE')
      END
UNION ALL
SELECT 'task_logs.task_id NOT NULL CHECK (task_id <> '''')', 'task_logs', id,
       'task_id ' || coalesce(quote_literal(task_id), 'NULL')
FROM task_logs WHERE task_id IS NULL OR task_id = ''
UNION ALL
SELECT 'task_logs.status NOT NULL, a process_status label', 'task_logs', id,
       'status ' || coalesce(quote_literal(status::text), 'NULL')
FROM task_logs
WHERE status IS NULL
   OR status::text NOT IN ('PENDING', 'STARTED', 'SUCCESS', 'RUNNING', 'FAILURE', 'RETRY', 'REVOKED')
UNION ALL
SELECT 'ocr_executions.chain_id NOT NULL', 'ocr_executions', id, 'image_path ' || coalesce(quote_literal(image_path), 'NULL')
FROM ocr_executions WHERE chain_id IS NULL
UNION ALL
SELECT 'ocr_executions.chain_id UNIQUE (one OCR row per chain)', 'ocr_executions', o.id,
       'chain ' || o.chain_id || ' already holds OCR row ' || f.id
FROM ocr_executions o JOIN first_ocr f ON f.chain_id = o.chain_id AND f.id <> o.id
UNION ALL
-- The loader refuses a path that is empty or only whitespace (Python's str.isspace: the
-- characters listed, not the regex class \s, whose reach beyond ASCII depends on the locale).
SELECT 'ocr_executions.image_path NOT NULL, not empty or only whitespace', 'ocr_executions', id,
       'image_path ' || coalesce(quote_literal(image_path), 'NULL')
FROM ocr_executions
WHERE image_path IS NULL
   OR image_path ~ '^[\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$'
UNION ALL
SELECT 'ocr_executions.public_path CHECK (public_path <> '''')', 'ocr_executions', id,
       'image_path ' || quote_literal(image_path)
FROM ocr_executions WHERE public_path = ''
UNION ALL
SELECT 'ocr_executions.status NOT NULL, success or failed', 'ocr_executions', id,
       'status ' || coalesce(quote_literal(status::text), 'NULL')
FROM ocr_executions WHERE status IS NULL OR lower(status::text) NOT IN ('success', 'failed')
UNION ALL
SELECT 'ocr_text_boxes.ocr_execution_id NOT NULL', 'ocr_text_boxes', id, NULL
FROM ocr_text_boxes WHERE ocr_execution_id IS NULL
UNION ALL
SELECT 'ocr_text_boxes.text NOT NULL', 'ocr_text_boxes', id, NULL
FROM ocr_text_boxes WHERE text IS NULL
UNION ALL
SELECT 'ocr_text_boxes.confidence NOT NULL CHECK (confidence >= 0 AND confidence <= 1)', 'ocr_text_boxes', id,
       'confidence ' || coalesce(confidence::text, 'NULL')
       || CASE WHEN confidence > 1 AND confidence <= 100 THEN ' (a 0-100 scale?)' ELSE '' END
FROM ocr_text_boxes WHERE confidence IS NULL OR NOT (confidence >= 0 AND confidence <= 1)
UNION ALL
-- jsonb cannot hold what json keeps as escapes: the NUL character \u0000, and a
-- surrogate escape that is not half of a pair (\ud800 alone, \udc00 alone); the cast
-- would fail naming no row. An even number of backslashes before the escape would
-- make it literal text instead.
SELECT 'ocr_text_boxes.bbox jsonb (no \u0000, no unpaired surrogate escape)', 'ocr_text_boxes', id,
       left(bbox::text, 60)
FROM ocr_text_boxes
WHERE bbox::text ~ '(^|[^\\])(\\\\)*\\u0000'
   OR bbox::text ~* '(^|[^\\])(\\\\)*\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})'
   OR bbox::text ~* '(^|[^\\])(\\\\)*(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}'
UNION ALL
SELECT 'ocr_text_boxes.bbox NOT NULL CHECK (jsonb_typeof(bbox) = ''array'')', 'ocr_text_boxes', id,
       coalesce(left(bbox::text, 60), 'NULL')
FROM ocr_text_boxes WHERE bbox IS NULL OR json_typeof(bbox::text::json) <> 'array'
UNION ALL
SELECT t.table_name || '.' || v.column_name || ' NOT NULL', t.table_name, t.id, NULL
FROM (
    SELECT 'batch_executions' AS table_name, id, created_at IS NULL AS no_created, updated_at IS NULL AS no_updated
    FROM batch_executions WHERE created_at IS NULL OR updated_at IS NULL
    UNION ALL
    SELECT 'chain_executions', id, created_at IS NULL, updated_at IS NULL
    FROM chain_executions WHERE created_at IS NULL OR updated_at IS NULL
    UNION ALL
    SELECT 'task_logs', id, created_at IS NULL, updated_at IS NULL
    FROM task_logs WHERE created_at IS NULL OR updated_at IS NULL
    UNION ALL
    SELECT 'ocr_executions', id, created_at IS NULL, updated_at IS NULL
    FROM ocr_executions WHERE created_at IS NULL OR updated_at IS NULL
    UNION ALL
    SELECT 'ocr_text_boxes', id, created_at IS NULL, updated_at IS NULL
    FROM ocr_text_boxes WHERE created_at IS NULL OR updated_at IS NULL
) AS t
CROSS JOIN LATERAL (VALUES ('created_at', t.no_created), ('updated_at', t.no_updated)) AS v (column_name, missing)
WHERE v.missing
ORDER BY 1, 3;

-- name: adopt_set_aside_table
-- Where --set-aside moves old rows that break a constraint: the row as it was (json, which unlike jsonb keeps \u0000) and why.
CREATE TABLE IF NOT EXISTS loader_adopt_set_aside (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    table_name   text        NOT NULL,
    row_id       bigint      NOT NULL,
    row          json        NOT NULL,
    reasons      text        NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE loader_adopt_set_aside IS
    'Old rows `loader schema adopt --set-aside` kept out of the loader schema because they broke one of its constraints (or hung on such a row). Not part of the loader schema: drop it once dealt with.';

-- name: adopt_aside_temp
-- The rows to set aside, by table and id, with a reason each (dropped at commit).
CREATE TEMP TABLE loader_adopt_aside (table_name text NOT NULL, id bigint NOT NULL, reason text NOT NULL)
ON COMMIT DROP;

-- name: adopt_aside_chains_of_batches
-- A batch set aside takes its chains with it.
INSERT INTO pg_temp.loader_adopt_aside (table_name, id, reason)
SELECT 'chain_executions', c.id, 'its batch (id ' || b.id || ') was set aside'
FROM chain_executions c
JOIN batch_executions b ON b.batch_id = c.batch_id
WHERE b.id IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'batch_executions');

-- name: adopt_aside_ocr_of_chains
-- A chain set aside takes its OCR rows with it.
INSERT INTO pg_temp.loader_adopt_aside (table_name, id, reason)
SELECT 'ocr_executions', o.id, 'its chain (id ' || c.id || ') was set aside'
FROM ocr_executions o
JOIN chain_executions c ON c.chain_id = o.chain_id
WHERE c.id IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'chain_executions');

-- name: adopt_aside_chains_left_without_ocr
-- A chain whose only OCR rows were set aside goes with them (it would claim an image the batch no longer holds).
INSERT INTO pg_temp.loader_adopt_aside (table_name, id, reason)
SELECT DISTINCT 'chain_executions', c.id, 'its OCR row (id ' || o.id || ') was set aside'
FROM chain_executions c
JOIN ocr_executions o ON o.chain_id = c.chain_id
WHERE o.id IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'ocr_executions')
  AND c.id NOT IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'chain_executions')
  AND NOT EXISTS (
      SELECT FROM ocr_executions k
      WHERE k.chain_id = c.chain_id
        AND k.id NOT IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'ocr_executions'));

-- name: adopt_aside_task_logs_of_chains
-- A chain set aside takes its task logs with it.
INSERT INTO pg_temp.loader_adopt_aside (table_name, id, reason)
SELECT 'task_logs', t.id, 'its chain (id ' || t.chain_execution_id || ') was set aside'
FROM task_logs t
WHERE t.chain_execution_id IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'chain_executions');

-- name: adopt_aside_boxes_of_ocr
-- An OCR row set aside takes its boxes with it.
INSERT INTO pg_temp.loader_adopt_aside (table_name, id, reason)
SELECT 'ocr_text_boxes', b.id, 'its OCR row (id ' || b.ocr_execution_id || ') was set aside'
FROM ocr_text_boxes b
WHERE b.ocr_execution_id IN (SELECT id FROM pg_temp.loader_adopt_aside WHERE table_name = 'ocr_executions');

-- name: adopt_aside_counts
-- Rows set aside per table.
SELECT table_name, count(DISTINCT id) AS n FROM pg_temp.loader_adopt_aside GROUP BY table_name ORDER BY 1;

-- name: adopt_move_aside
-- Move one old table's rows marked to set aside into loader_adopt_set_aside ({table} and {label} name the table).
WITH marked AS (
    SELECT id, string_agg(DISTINCT reason, '; ') AS reasons
    FROM pg_temp.loader_adopt_aside
    WHERE table_name = {label}
    GROUP BY id
),
moved AS (
    DELETE FROM {table} AS t USING marked m
    WHERE t.id = m.id
    RETURNING t.id, row_to_json(t) AS row, m.reasons
)
INSERT INTO loader_adopt_set_aside (table_name, row_id, row, reasons)
SELECT {label}, id, row, reasons FROM moved ORDER BY id;

-- name: adopt_copy_batches
-- Batches with their totals and status recomputed from their chains, as the merge counts them (loader/sql/save.sql, totals).
INSERT INTO batch_executions (id, batch_id, status, total_images, completed_images, failed_images, created_at, updated_at)
SELECT o.id, o.batch_id, s.status, n.total_images, n.completed, n.failed, {created_at}, {updated_at}
FROM loader_adopt_old_batch_executions o
LEFT JOIN (
    -- Images by their OCR rows, as loader_recount counts them: a chain the old
    -- path left without an OCR row (it crashed, or the task is still running),
    -- whatever status it says, is an image not received yet, never a completed one.
    SELECT c.batch_id,
           count(*) FILTER (WHERE lower(x.status::text) = 'success') AS completed,
           count(*) FILTER (WHERE lower(x.status::text) = 'failed') AS failed
    FROM loader_adopt_old_chain_executions c
    JOIN loader_adopt_old_ocr_executions x ON x.chain_id = c.chain_id
    GROUP BY c.batch_id
) AS c ON c.batch_id = o.batch_id
-- The declared total stays unless fewer images than were stored, so completed + failed <= total.
CROSS JOIN LATERAL (
    SELECT coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed,
           greatest(coalesce(o.total_images, 0), coalesce(c.completed, 0) + coalesce(c.failed, 0)) AS total_images
) AS n
CROSS JOIN LATERAL (
    SELECT loader_batch_status(n.total_images, n.completed, n.failed, o.status::text::process_status) AS status
) AS s
ORDER BY o.id;

-- name: adopt_copy_chains
-- Chains as they were (chain_id, uuid4 in the old path, kept), statuses relabelled to process_status.
-- Positions: the order the old path wrote a batch's images in (its rows' ids), so
-- the batch sent again in that order is recognised input by input. A chain without
-- an OCR row keeps its place too: an unfilled slot, which the merge fills with the
-- valid input at that position (the chain keeps its id and task logs), never a trap.
INSERT INTO chain_executions (id, chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks,
                              created_at, updated_at, position)
SELECT o.id, o.chain_id, o.batch_id, o.status::text::process_status, o.total_tasks, o.completed_tasks,
       o.failed_tasks, {created_at}, {updated_at},
       row_number() OVER (PARTITION BY o.batch_id ORDER BY o.id) - 1
FROM loader_adopt_old_chain_executions o
ORDER BY o.id;

-- name: adopt_copy_task_logs
-- Task logs with their chains; retries 0, no error, no start/finish time (the old table had none).
INSERT INTO task_logs (id, task_id, task_name, chain_execution_id, status, created_at, updated_at)
SELECT o.id, o.task_id, {task_name}, o.chain_execution_id, o.status::text::process_status,
       {created_at}, {updated_at}
FROM loader_adopt_old_task_logs o
ORDER BY o.id;

-- name: adopt_copy_ocr
-- OCR rows with lower-case ocr_status labels; a failed row gets the stated placeholder error.
INSERT INTO ocr_executions (id, chain_id, image_path, public_path, status, error, created_at, updated_at)
SELECT o.id, o.chain_id, o.image_path, o.public_path, lower(o.status::text)::ocr_status,
       CASE WHEN lower(o.status::text) = 'failed' THEN %(placeholder)s END,
       {created_at}, {updated_at}
FROM loader_adopt_old_ocr_executions o
ORDER BY o.id;

-- name: adopt_copy_boxes
-- Boxes in id order per image, which becomes their reading order (position 0, 1, ...).
INSERT INTO ocr_text_boxes (id, ocr_execution_id, position, text, confidence, bbox, created_at, updated_at)
SELECT o.id, o.ocr_execution_id,
       (row_number() OVER (PARTITION BY o.ocr_execution_id ORDER BY o.id) - 1)::integer,
       o.text, o.confidence, o.bbox::jsonb, {created_at}, {updated_at}
FROM loader_adopt_old_ocr_text_boxes o
ORDER BY o.ocr_execution_id, o.id;

-- name: adopt_restart_identities
-- Identities continue past the largest id each table now holds.
SELECT setval(pg_get_serial_sequence('batch_executions', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM batch_executions), false),
       setval(pg_get_serial_sequence('chain_executions', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM chain_executions), false),
       setval(pg_get_serial_sequence('task_logs', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM task_logs), false),
       setval(pg_get_serial_sequence('ocr_executions', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM ocr_executions), false),
       setval(pg_get_serial_sequence('ocr_text_boxes', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM ocr_text_boxes), false);

-- name: adopt_drop_old_tables
-- The old tables, now copied (their serial sequences go with them).
DROP TABLE loader_adopt_old_ocr_text_boxes, loader_adopt_old_ocr_executions, loader_adopt_old_task_logs,
           loader_adopt_old_chain_executions, loader_adopt_old_batch_executions;

-- name: adopt_analyze
-- Fresh statistics for the rewritten tables, so the first merges plan on real sizes.
ANALYZE batch_executions, chain_executions, task_logs, ocr_executions, ocr_text_boxes;

-- name: adopt_counts
-- Rows per table of the current schema (application or loader tables, same names).
SELECT (SELECT count(*) FROM batch_executions) AS batch_executions,
       (SELECT count(*) FROM chain_executions) AS chain_executions,
       (SELECT count(*) FROM task_logs) AS task_logs,
       (SELECT count(*) FROM ocr_executions) AS ocr_executions,
       (SELECT count(*) FROM ocr_text_boxes) AS ocr_text_boxes;

-- name: adopt_local_time_problems
-- Naive times of one column ({table}, {column}, named {table_label}, {column_label}) that
-- name no instant in %(tz)s (skipped by a daylight-saving gap) or two (repeated by an
-- overlap). A gap: read in the zone and written back, the time comes out otherwise. An
-- overlap: the zone's offsets a day before and a day after differ, and the time less
-- either offset is an instant the zone shows as that same time.
SELECT {table_label} AS table_name, {column_label} AS column_name, o.id, o.{column} AS local_time,
       CASE WHEN (i.instant AT TIME ZONE %(tz)s) <> o.{column} THEN 'gap' ELSE 'overlap' END AS problem
FROM {table} AS o
CROSS JOIN LATERAL (SELECT o.{column} AT TIME ZONE %(tz)s AS instant) AS i
CROSS JOIN LATERAL (
    SELECT (i.instant - interval '1 day') AT TIME ZONE %(tz)s
               - (i.instant - interval '1 day') AT TIME ZONE 'UTC' AS before,
           (i.instant + interval '1 day') AT TIME ZONE %(tz)s
               - (i.instant + interval '1 day') AT TIME ZONE 'UTC' AS after
) AS off
WHERE (i.instant AT TIME ZONE %(tz)s) <> o.{column}
   OR (off.before <> off.after
       AND ((o.{column} - off.before) AT TIME ZONE 'UTC') AT TIME ZONE %(tz)s = o.{column}
       AND ((o.{column} - off.after) AT TIME ZONE 'UTC') AT TIME ZONE %(tz)s = o.{column})

-- Read-only queries behind the operator commands (`loader status`, `loader rejects`).

-- name: batch_list_recent
-- The most recently created batches, newest first, each as get_progress reads it (loader_progress).
-- loader_progress is the one place a batch's figures are read: stored totals,
-- or for a batch another writer left stale (totals_stale) the recount and the
-- status the rows give. Called for the listed rows only, after the LIMIT.
SELECT p.batch_id, p.status, p.total_images, p.completed_images, p.failed_images, p.rejected_images,
       p.created_at, p.updated_at
FROM (
    SELECT b.id, b.batch_id, b.created_at
    FROM batch_executions b
    ORDER BY b.created_at DESC, b.id DESC
    LIMIT %(limit)s
) AS listed
CROSS JOIN LATERAL loader_progress(listed.batch_id) AS p
ORDER BY listed.created_at DESC, listed.id DESC;

-- name: batch_list_unfinished
-- Batches still waiting for images (PENDING or STARTED by their rows), oldest first: the stuck ones lead.
-- Two sources: the batches stored as unfinished (the predicate repeats the one
-- of batch_executions_unfinished_idx word for word, so the planner can use that
-- partial index however many finished batches exist), and the stale ones
-- (another writer touched them; few), whose status loader_progress decides from
-- their rows: a batch stored SUCCESS whose rows say otherwise is listed, and a
-- stale one stored STARTED whose rows say finished is not. One loader_progress
-- call per candidate (~0.2 ms each: 200,000 batches, 50 unfinished, 10 ms).
WITH candidates AS (
    SELECT b.id, b.batch_id, b.created_at FROM batch_executions b WHERE b.status IN ('PENDING', 'STARTED')
    UNION
    SELECT b.id, b.batch_id, b.created_at FROM batch_executions b WHERE b.totals_stale
)
SELECT p.batch_id, p.status, p.total_images, p.completed_images, p.failed_images, p.rejected_images,
       p.created_at, p.updated_at
FROM candidates c
CROSS JOIN LATERAL loader_progress(c.batch_id) AS p
WHERE p.status IN ('PENDING', 'STARTED')
ORDER BY c.created_at, c.id
LIMIT %(limit)s;

-- name: batch_failure_counts
-- How many of a batch's failed images were stored as failed and how many are open rejects.
SELECT (SELECT count(*) FROM chain_executions
        WHERE batch_id = %(batch_id)s AND status = 'FAILURE') AS stored_failed,
       (SELECT count(*) FROM load_rejects
        WHERE batch_id = %(batch_id)s AND resolved_at IS NULL) AS rejected;

-- name: batch_failure_reasons
-- A batch's failure reasons grouped by kind (values, quoted text and numbers blanked out), most frequent first, with one real example each.
-- Stored failures are found through the partial index of failed chains (chain_executions_failed_idx),
-- rejects through the (batch_id, ...) unique index of load_rejects.
WITH reasons AS (
    SELECT 'failed' AS outcome, o.error AS reason
    FROM chain_executions c
    JOIN ocr_executions o ON o.chain_id = c.chain_id
    WHERE c.batch_id = %(batch_id)s AND c.status = 'FAILURE' AND o.status = 'failed'
    UNION ALL
    SELECT 'rejected', r.reason
    FROM load_rejects r
    WHERE r.batch_id = %(batch_id)s AND r.resolved_at IS NULL
),
kinds AS (
    SELECT outcome, reason,
           regexp_replace(
               regexp_replace(
                   regexp_replace(reason, $re$\(got [^)]*\)$re$, '(got …)', 'g'),
                   $re$'[^']*'$re$, $q$'…'$q$, 'g'),
               '[0-9]+', 'N', 'g') AS kind
    FROM reasons
)
SELECT outcome, kind, count(*) AS images, min(reason) AS example,
       count(DISTINCT reason) AS variants,
       count(*) OVER () AS kinds
FROM kinds
GROUP BY outcome, kind
ORDER BY images DESC, outcome, kind
LIMIT %(limit)s;

-- name: rejects_list
-- One page of a batch's rejects (open and resolved, or open only) in input order, after a given position, with the image that resolved each.
SELECT r.position, r.image_path, r.reason, length(r.raw) AS raw_bytes, r.created_at,
       r.resolved_at, r.resolved_by, o.image_path AS resolved_image_path
FROM load_rejects r
LEFT JOIN ocr_executions o ON o.id = r.resolved_by
WHERE r.batch_id = %(batch_id)s AND r.position > %(after)s
  AND (NOT %(open_only)s OR r.resolved_at IS NULL)
ORDER BY r.position, r.id
LIMIT %(limit)s;

-- name: rejects_count
-- How many of a batch's rejects are open and how many resolved.
SELECT count(*) FILTER (WHERE resolved_at IS NULL) AS open,
       count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved
FROM load_rejects WHERE batch_id = %(batch_id)s;

-- name: rejects_raw
-- Every reject of a batch, raw input included, in input order (read through a server-side cursor): the audit export.
SELECT position, raw
FROM load_rejects
WHERE batch_id = %(batch_id)s
ORDER BY position, id;

-- name: rejects_raw_open
-- The open rejects of a batch, raw input included, in input order: the sparse export to fix and load back.
SELECT position, raw
FROM load_rejects
WHERE batch_id = %(batch_id)s AND resolved_at IS NULL
ORDER BY position, id;

-- The catalog descriptions `loader schema check` compares (loader/schema/check.py).
-- Each takes the namespace and an optional list of names to restrict to (NULL: all),
-- and is run with search_path set to that namespace, so types and references
-- print unqualified and two namespaces compare equal when they match.

-- name: catalog_namespace_of_version_table
-- The namespace in which loader_schema_version resolves on this connection's search_path (the deployed schema).
SELECT n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('loader_schema_version');

-- name: catalog_tables
-- Tables of a namespace.
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(ns)s AND c.relkind IN ('r', 'p')
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]));

-- name: catalog_columns
-- Columns of a namespace's tables: type, nullability, default, identity and generation.
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attidentity, a.attgenerated
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %(ns)s AND c.relkind IN ('r', 'p')
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]));

-- name: catalog_constraints
-- Constraints of a namespace's tables, as their definitions.
SELECT c.relname, con.conname, pg_get_constraintdef(con.oid) AS definition
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(ns)s
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]));

-- name: catalog_indexes
-- Indexes of a namespace's tables, as their definitions.
SELECT c.relname, i.relname AS index_name, pg_get_indexdef(i.oid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(ns)s
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]));

-- name: catalog_triggers
-- User-defined triggers of a namespace's tables, as their definitions.
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) AS definition
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(ns)s AND NOT t.tgisinternal
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]));

-- name: catalog_enums
-- Enum types of a namespace with their labels in order.
SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) AS labels
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE n.nspname = %(ns)s
  AND (%(names)s::text[] IS NULL OR t.typname = ANY (%(names)s::text[]))
GROUP BY t.typname;

-- name: catalog_functions
-- Functions of a namespace: signature, result, language and body.
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result, l.lanname, p.prosrc
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = %(ns)s
  AND (%(names)s::text[] IS NULL OR p.proname = ANY (%(names)s::text[]));

-- name: catalog_grants
-- Table privileges of the loader_writer role on a namespace's tables.
SELECT c.relname, string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE n.nspname = %(ns)s AND c.relkind IN ('r', 'p')
  AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = 'loader_writer')
  AND (%(names)s::text[] IS NULL OR c.relname = ANY (%(names)s::text[]))
GROUP BY c.relname;

-- name: batch_model_versions
-- How many of a batch's stored results each OCR model produced (NULL: the input named none), most first.
SELECT o.model_version, count(*) AS images
FROM chain_executions c
JOIN ocr_executions o ON o.chain_id = c.chain_id
WHERE c.batch_id = %(batch_id)s
GROUP BY o.model_version
ORDER BY images DESC, o.model_version NULLS LAST
LIMIT %(limit)s;

-- The safety net under validation (loader/save/isolate.py): statements it runs only
-- when COPY or the merge refused data that validation let through.

-- name: empty_staging
-- Empty both staging tables inside the transaction, so the next group's merge sees only its own rows.
-- TRUNCATE rather than DELETE: one statement for both tables, and undone by a
-- rollback to the group's savepoint like any other change.
TRUNCATE {stage_images}, {stage_boxes};

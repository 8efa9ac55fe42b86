"""A re-OCR call (replace=True) sent again: a Celery redelivery, a resumed load.

README, identity table: the input P already received, replace column: "replaces again
(an exact replay: unchanged)". A re-OCR call takes effect once. It replaces images
wherever the batch stores them, so the rows at the call's own positions cannot confirm
a replay (they may hold other images, or nothing): the ledger never shortcuts a re-OCR
call, and the merge judges it again. An input of a call the ledger holds leaves its
image as it is, whatever was written since (a later re-OCR, a rollback, another
writer); an image deleted since is stored again, as a plain call would. Wherever the
image is stored, the answer is the same.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount

from loader import save_batch
from loader.lifecycle.history import rollback

B = "again"
X = "/again/x.png"
Y = "/again/y.png"

# Where the re-OCR call's position is, relative to the image it re-runs (stored at 0):
# the same position, a position holding another image, a position holding nothing.
WHERE = {"at its position": 0, "at another image's position": 1, "at a free position": 2}


def result(path: str, text: str, status: str = "success") -> dict[str, Any]:
    if status == "failed":
        return {"image_path": path, "status": "failed", "error": text, "model_version": "m1"}
    return {
        "image_path": path,
        "model_version": f"m-{text}",
        "text_boxes": [
            {"text": f"{text} {k}", "confidence": 0.25 * k, "bbox": [[0, 0], [k, 1.5]]} for k in range(3)
        ],
    }


def state(db: psycopg.Connection[Any]) -> dict[str, Any]:
    """X's result, version, history and chain (runs: total, completed, failed tasks), and the batch."""
    cur = db.execute(
        "SELECT o.status::text AS status, o.error, o.model_version, o.result_version AS version,"
        " (SELECT array_agg(b.text ORDER BY b.position) FROM ocr_text_boxes b"
        "  WHERE b.ocr_execution_id = o.id) AS texts,"
        " (SELECT count(*) FROM ocr_result_history h WHERE h.ocr_execution_id = o.id) AS history,"
        " ARRAY[c.total_tasks, c.completed_tasks, c.failed_tasks] AS runs, c.position,"
        " be.completed_images AS batch_completed, be.failed_images AS batch_failed,"
        " be.updated_at AS batch_updated_at"
        " FROM ocr_executions o JOIN chain_executions c USING (chain_id)"
        " JOIN batch_executions be ON be.batch_id = c.batch_id WHERE o.image_path = %s",
        [X],
    )
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return {column.name: value for column, value in zip(cur.description, row, strict=True)}


@pytest.fixture
def batch(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Batch B of 3 positions: X at 0, Y at 1, position 2 not received yet."""
    save_batch(db, B, [result(X, "first"), result(Y, "y")], total_images=3)
    return db


@pytest.mark.parametrize("where", WHERE)
def test_a_reocr_sent_again_changes_nothing_wherever_its_image_is_stored(
    batch: psycopg.Connection[Any], where: str
) -> None:
    call = [result(X, "second")]
    first = save_batch(batch, B, call, position_offset=WHERE[where], replace=True)
    assert first.replaced == 1
    after_first = state(batch)

    again = save_batch(batch, B, call, position_offset=WHERE[where], replace=True)

    assert (again.replaced, again.unchanged, again.stored, again.rejected) == (0, 1, 0, 0)
    assert not again.replayed, "judged again: the ledger never shortcuts a re-OCR call"
    assert state(batch) == after_first, "no version, no history row, no run, updated_at kept"
    assert after_first["version"] == 2 and after_first["history"] == 1


@pytest.mark.parametrize("where", WHERE)
def test_an_earlier_reocr_sent_after_a_later_one_leaves_the_later_result_wherever_its_image_is_stored(
    batch: psycopg.Connection[Any], where: str
) -> None:
    earlier = [result(X, "second")]
    save_batch(batch, B, earlier, position_offset=WHERE[where], replace=True)
    save_batch(batch, B, [result(X, "third", "failed")], position_offset=WHERE[where], replace=True)
    after_later = state(batch)

    again = save_batch(batch, B, earlier, position_offset=WHERE[where], replace=True)

    assert (again.replaced, again.unchanged) == (0, 1)
    assert (
        again.issues[0].reason == "a re-OCR call replaces a result once: this very call was committed before"
    )
    assert state(batch) == after_later
    assert (after_later["status"], after_later["version"], after_later["history"]) == ("failed", 3, 2)
    assert_totals_match_recount(batch, B)


@pytest.mark.parametrize(
    "outside_write",
    [
        "UPDATE ocr_executions SET status = 'failed', error = 'marked failed' WHERE image_path = %s",
        "UPDATE ocr_text_boxes SET confidence = 0.75 WHERE position = 2"
        " AND ocr_execution_id = (SELECT id FROM ocr_executions WHERE image_path = %s)",
        "UPDATE ocr_executions SET model_version = 'edited' WHERE image_path = %s",
    ],
    ids=["status", "a box's confidence", "model_version"],
)
def test_a_reocr_sent_again_leaves_another_writers_later_change(
    batch: psycopg.Connection[Any], outside_write: str
) -> None:
    call = [result(X, "second")]
    save_batch(batch, B, call, position_offset=1, replace=True)
    batch.execute(outside_write, [X])
    changed = state(batch)

    again = save_batch(batch, B, call, position_offset=1, replace=True)

    assert (again.replaced, again.unchanged) == (0, 1)
    image = ("status", "error", "model_version", "version", "texts", "history", "runs", "position")
    assert {k: state(batch)[k] for k in image} == {k: changed[k] for k in image}
    assert_totals_match_recount(batch, B)  # the outside write made them stale: recounted


def test_a_reocr_sent_again_after_a_rollback_leaves_the_rollback(batch: psycopg.Connection[Any]) -> None:
    call = [result(X, "second")]
    save_batch(batch, B, call, position_offset=2, replace=True)
    done = rollback(batch, B)
    assert done.report is not None and done.report.replaced == 1
    rolled_back = state(batch)
    assert rolled_back["texts"] == ["first 0", "first 1", "first 2"]

    again = save_batch(batch, B, call, position_offset=2, replace=True)

    assert (again.replaced, again.unchanged) == (0, 1)
    assert state(batch) == rolled_back


def test_a_reocr_sent_again_after_its_image_was_deleted_stores_it_again(
    batch: psycopg.Connection[Any],
) -> None:
    call = [result(X, "second")]
    save_batch(batch, B, call, position_offset=2, replace=True)
    batch.execute("DELETE FROM ocr_executions WHERE image_path = %s", [X])  # the chain at 0 stays

    again = save_batch(batch, B, call, position_offset=2, replace=True)

    assert (again.stored, again.replaced, again.unchanged, again.attempts) == (1, 0, 0, 1), again.issues
    now = state(batch)
    assert (now["position"], now["texts"], now["version"]) == (2, ["second 0", "second 1", "second 2"], 1)
    assert_totals_match_recount(batch, B)


def test_a_failed_reocr_sent_again_changes_nothing(batch: psycopg.Connection[Any]) -> None:
    call = [result(X, "engine crashed", "failed")]
    save_batch(batch, B, call, position_offset=2, replace=True)
    after_first = state(batch)

    again = save_batch(batch, B, call, position_offset=2, replace=True)

    assert (again.replaced, again.unchanged) == (0, 1)
    assert state(batch) == after_first
    assert (after_first["batch_completed"], after_first["batch_failed"]) == (1, 1)

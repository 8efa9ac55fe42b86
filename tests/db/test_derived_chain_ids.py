"""An image's chain id is derived from its batch and path (validate.chain_id_for), so a
redelivery maps onto the same chain. That id can already name a chain of the batch
without the image's OCR row: the application deleted the row (the chain stays, a free
position), or another image filled that chain. The image arriving again at another
position must then be stored in a chain of its own, never refused by the database
(a unique violation the safety net would have stored as a reject).

Found by the random exploration of the identity rule's model (tests/db/test_model.py).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount

from loader import get_progress, save_batch
from loader.save.validate import chain_id_for

B = "derived"
X = "/chains/x.png"
Y = "/chains/y.png"


def result(path: str, text: str = "t") -> dict[str, Any]:
    return {
        "image_path": path,
        "public_path": f"{path}.pub",
        "text_boxes": [{"text": text, "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}],
    }


def chains(db: psycopg.Connection[Any]) -> list[tuple[int, str, str | None, list[str]]]:
    """(position, chain_id, image_path, box texts) of every chain of batch B."""
    rows = db.execute(
        "SELECT c.position, c.chain_id, o.image_path,"
        " (SELECT coalesce(array_agg(b.text ORDER BY b.position), '{}') FROM ocr_text_boxes b"
        "  WHERE b.ocr_execution_id = o.id)"
        " FROM chain_executions c LEFT JOIN ocr_executions o ON o.chain_id = c.chain_id"
        " WHERE c.batch_id = %s ORDER BY c.position",
        [B],
    ).fetchall()
    return [(p, chain, path, list(texts)) for p, chain, path, texts in rows]


def open_rejects(db: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    return db.execute(
        "SELECT position, reason FROM load_rejects"
        " WHERE batch_id = %s AND resolved_at IS NULL ORDER BY position",
        [B],
    ).fetchall()


def delete_ocr_row(db: psycopg.Connection[Any], path: str) -> None:
    """The application's own delete: the chain stays, its position is free."""
    db.execute("DELETE FROM ocr_executions WHERE image_path = %s", [path])


@pytest.fixture
def x_deleted_at_0(db: psycopg.Connection[Any]) -> str:
    """Batch B of 3 positions: X was stored at 0, then the application deleted its OCR row.
    Returns X's derived chain id, which the chain at 0 still holds."""
    save_batch(db, B, [result(X)], total_images=3)
    delete_ocr_row(db, X)
    derived = chain_id_for(B, X)
    assert chains(db) == [(0, derived, None, [])]
    return derived


def assert_x_stored_at(db: psycopg.Connection[Any], position: int, derived: str, text: str) -> None:
    rows = chains(db)
    assert rows[0] == (0, derived, None, []), "the chain at 0 is left as it was: free"
    (at, chain, path, texts) = next(r for r in rows if r[2] == X)
    assert (at, path, texts) == (position, X, [text])
    assert chain != derived, "a chain of its own, not the one at 0"
    assert not open_rejects(db)
    assert_totals_match_recount(db, B)


def test_an_image_whose_deleted_row_left_its_chain_is_stored_at_another_position(
    db: psycopg.Connection[Any], x_deleted_at_0: str
) -> None:
    report = save_batch(db, B, [result(X, "again")], position_offset=1)

    assert (report.stored, report.rejected, report.attempts) == (1, 0, 1), report.issues
    assert_x_stored_at(db, 1, x_deleted_at_0, "again")
    progress = get_progress(db, B)
    assert (progress.completed_images, progress.failed_images) == (1, 0)


def test_the_call_sent_again_changes_nothing(db: psycopg.Connection[Any], x_deleted_at_0: str) -> None:
    save_batch(db, B, [result(X, "again")], position_offset=1)
    before = chains(db)

    again = save_batch(db, B, [result(X, "again")], position_offset=1)

    assert (again.stored, again.unchanged, again.rejected) == (0, 1, 0)
    assert chains(db) == before


def test_a_repair_of_a_reject_with_that_image_gets_a_chain_of_its_own(db: psycopg.Connection[Any]) -> None:
    save_batch(db, B, [result(X), b"not json"], total_images=3)
    delete_ocr_row(db, X)

    report = save_batch(db, B, [result(X, "fixed")], position_offset=1, repair=True)

    assert (report.stored, report.resolved, report.attempts) == (1, 1, 1), report.issues
    assert_x_stored_at(db, 1, chain_id_for(B, X), "fixed")


def test_a_reocr_of_that_image_at_a_free_position_stores_it_in_a_chain_of_its_own(
    db: psycopg.Connection[Any], x_deleted_at_0: str
) -> None:
    report = save_batch(db, B, [result(X, "re-ocr")], position_offset=2, replace=True)

    assert (report.stored, report.replaced, report.attempts) == (1, 0, 1), report.issues
    assert_x_stored_at(db, 2, x_deleted_at_0, "re-ocr")


def test_an_image_arriving_after_another_filled_its_chain_leaves_that_image_as_it_is(
    db: psycopg.Connection[Any], x_deleted_at_0: str
) -> None:
    save_batch(db, B, [result(Y, "y")])  # position 0 is free: Y fills X's chain there
    assert chains(db) == [(0, x_deleted_at_0, Y, ["y"])]

    report = save_batch(db, B, [result(X, "x")], position_offset=1)

    assert (report.stored, report.attempts) == (1, 1), report.issues
    rows = chains(db)
    assert rows[0] == (0, x_deleted_at_0, Y, ["y"])
    assert rows[1][0] == 1 and rows[1][2:] == (X, ["x"]) and rows[1][1] != x_deleted_at_0
    assert_totals_match_recount(db, B)


def test_a_free_derived_id_is_the_chain_id(db: psycopg.Connection[Any]) -> None:
    save_batch(db, B, [result(X), result(Y)])

    assert [(p, chain) for p, chain, *_ in chains(db)] == [(0, chain_id_for(B, X)), (1, chain_id_for(B, Y))]

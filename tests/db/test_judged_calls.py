"""A judged call on the database: a replay is never judged, and a duplicate's reason is the
merge's in every mode and on the safety net's path (the client's placeholder never shows)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount

import loader.save.validate
from loader import OCRResult, TextBox, save_batch
from loader.datagen import make_batch
from loader.models import LoadReport, Outcome
from loader.save.call import STATEMENTS_PER_REPLAY
from loader.save.validate import WORDED_BY_THE_MERGE


def _reasons(db: psycopg.Connection[Any], batch_id: str) -> dict[int, str]:
    rows = db.execute(
        "SELECT position, reason FROM load_rejects WHERE batch_id = %s ORDER BY position", [batch_id]
    ).fetchall()
    return {position: reason for position, reason in rows}


def _no_placeholder(report: LoadReport, db: psycopg.Connection[Any]) -> None:
    assert not [i for i in report.issues if WORDED_BY_THE_MERGE in i.reason]
    stored = db.execute(
        "SELECT count(*) FROM load_rejects WHERE strpos(reason, %s) > 0", [WORDED_BY_THE_MERGE]
    )
    assert stored.fetchone() == (0,)


def test_a_replayed_call_is_never_judged(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    results = make_batch(20, prefix="replayed")
    first = save_batch(conn, "R", results)

    def never(*args: Any) -> None:
        raise AssertionError("a replay judged an input")

    monkeypatch.setattr(loader.save.validate._Judging, "add", never)
    again = save_batch(conn, "R", results)

    assert first.stored == 20
    assert (again.replayed, again.unchanged, again.stored, again.statements) == (
        True,
        20,
        0,
        STATEMENTS_PER_REPLAY,
    )


def test_duplicates_within_a_call_read_as_the_merge_words_them(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results: list[Any] = make_batch(4, prefix="dups")
    results.append(dict(results[1], public_path=None))  # 4: image_path of 1
    results.append(dict(results[2], image_path="/dups/else.png"))  # 5: public_path of 2

    report = save_batch(conn, "D", results)

    assert (report.stored, report.rejected) == (4, 2)
    expected = {
        4: "duplicate image_path (first at position 1)",
        5: "public_path already used by another image (batch 'D')",
    }
    assert _reasons(db, "D") == expected
    assert {i.position: i.reason for i in report.issues if i.outcome == Outcome.REJECTED} == expected
    _no_placeholder(report, db)


def test_a_re_ocr_line_duplicating_its_call_is_refused_as_the_duplicate_it_is(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results = make_batch(4, prefix="reocr")
    save_batch(conn, "E", results)
    again: list[Any] = [dict(r, model_version="v2") for r in results[:3]]
    again.append(dict(results[0], model_version="v2", public_path=None))  # position 3 holds another image

    report = save_batch(conn, "E", again, replace=True)

    assert (report.replaced, report.refused) == (3, 1)
    (refused,) = [i for i in report.issues if i.outcome == Outcome.REFUSED]
    assert (refused.position, refused.reason) == (3, "duplicate image_path (first at position 0)")
    _no_placeholder(report, db)
    assert_totals_match_recount(db, "E")


def test_a_duplicate_on_the_safety_nets_path_reads_as_the_merge_words_it(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    items: list[Any] = [OCRResult.model_validate(r) for r in make_batch(6, prefix="net")]
    # Refused by the database although validation let it through: the call is stored again, isolating it.
    items[2] = OCRResult.model_construct(
        image_path="/net/refused.png",
        public_path=None,
        status="success",
        error=None,
        text_boxes=[TextBox.model_construct(text="ok", confidence=1.5, bbox=[[0.0, 0.0]])],
    )
    items.append(items[4].model_copy(update={"public_path": None}))  # 6: image_path of 4

    report = save_batch(conn, "N", items)

    assert report.attempts == 2
    assert (report.stored, report.failed, report.rejected) == (5, 1, 1)
    assert _reasons(db, "N") == {6: "duplicate image_path (first at position 4)"}
    _no_placeholder(report, db)
    assert_totals_match_recount(db, "N")

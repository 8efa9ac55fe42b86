"""The safety net under validation: data the database refuses despite validation
fails alone (with the server's error), and the rest of the call is stored.

Validation is switched off in these tests (objects built with model_construct,
model_validate replaced, a limit raised); the database stays real.
"""

from __future__ import annotations

import json
import logging
import random
import string
import tempfile
from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount, row_counts, snapshot, stored_totals
from psycopg import pq

import loader.fields
import loader.save.validate
from loader import DatabaseError, LoadReport, OCRResult, TextBox, save_batch
from loader.datagen import make_batch


def _unvalidated(path: str, **box: Any) -> OCRResult:
    """An OCRResult built without validation, one box overridden."""
    fields = {"text": "ok", "confidence": 0.5, "bbox": [[0.0, 0.0], [1.0, 1.0]]} | box
    return OCRResult.model_construct(
        image_path=path,
        public_path=None,
        status="success",
        error=None,
        text_boxes=[TextBox.model_construct(**fields)],
    )


# Position -> (bad box fields, what the stored reason must say).
_REFUSED = {
    10: ({"text": "nul \x00 byte"}, "SQLSTATE 22021"),  # COPY: invalid byte sequence
    40: ({"confidence": 1.5}, "SQLSTATE 23514"),  # merge: CHECK on confidence
    70: ({"confidence": float("nan")}, "SQLSTATE 23514"),  # NaN > 1 in PostgreSQL
    100: ({"bbox": [[float("inf"), 0.0]]}, "SQLSTATE 22P02"),  # merge: 'Infinity' is no JSON
    130: ({"text": "lone \ud800"}, "UnicodeEncodeError"),  # refused by the encoder, client side
    160: ({"confidence": "0.5"}, "TypeError"),  # a string where COPY expects float8
    199: ({"bbox": "not a polygon"}, "SQLSTATE 23514"),  # jsonb CHECK: not an array
}


def _call_with_refusals() -> list[Any]:
    items: list[Any] = [OCRResult.model_validate(r) for r in make_batch(200, prefix="net")]
    for pos, (box, _why) in _REFUSED.items():
        items[pos] = _unvalidated(f"/net/refused/{pos}", **box)
    items.append(b"not json")  # an ordinary reject travels along
    return items


def test_inputs_the_database_refuses_fail_alone_and_the_rest_is_stored(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    items = _call_with_refusals()

    with caplog.at_level(logging.WARNING, logger="loader"):
        report = save_batch(conn, "net", items)

    good = 200 - len(_REFUSED)
    assert (report.received, report.stored, report.failed, report.rejected) == (201, good, len(_REFUSED), 1)
    assert report.boxes == good * 5
    assert report.attempts == 2
    # Honest: more than the 8 statements of a call, on this path only.
    assert report.statements > 8
    failed = dict(
        db.execute("SELECT image_path, error FROM ocr_executions WHERE status = 'failed'").fetchall()
    )
    assert set(failed) == {f"/net/refused/{pos}" for pos in _REFUSED}
    issues = {i.position: i for i in report.issues}
    for pos, (_box, why) in _REFUSED.items():
        error = failed[f"/net/refused/{pos}"]
        assert why in error, error
        assert error.startswith(("refused by the database", "could not be sent to the database"))
        assert issues[pos].outcome == "failed" and issues[pos].reason == error
    assert issues[200].outcome == "rejected"
    assert row_counts(db)["ocr_text_boxes"] == good * 5
    assert stored_totals(db, "net") == (201, good, len(_REFUSED) + 1, "SUCCESS")
    assert_totals_match_recount(db, "net")
    assert any("refused by the database" in r.getMessage() for r in caplog.records)

    # A replay changes nothing, refused inputs included.
    before = snapshot(db)
    again = save_batch(conn, "net", items)
    assert (again.stored, again.failed, again.rejected, again.unchanged) == (0, 0, 0, 201)
    assert snapshot(db) == before


def _skip_validation(data: Any, *args: Any, **kwargs: Any) -> OCRResult:
    """model_validate with every rule switched off (a loader whose validation has a hole)."""
    return OCRResult.model_construct(
        image_path=data["image_path"],
        public_path=data.get("public_path"),
        status=data.get("status", "success"),
        error=data.get("error"),
        text_boxes=[TextBox.model_construct(**box) for box in data.get("text_boxes", [])],
    )


def test_dicts_whose_validation_is_switched_off_are_caught_by_the_database(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader.save.validate.OCRResult, "model_validate", _skip_validation)
    results = make_batch(300, prefix="holes")
    results[3]["text_boxes"][2]["text"] = "NUL \x00 reaches COPY"
    results[150]["text_boxes"][0]["confidence"] = 1.7
    results[299]["text_boxes"][4]["bbox"] = "not a polygon"

    report = save_batch(conn, "holes", results)

    assert (report.stored, report.failed, report.rejected) == (297, 3, 0)
    reasons = {i.position: i.reason for i in report.issues}
    assert set(reasons) == {3, 150, 299}
    assert "0x00" in reasons[3]
    assert "ocr_text_boxes_confidence_check" in reasons[150]
    assert "bbox" in reasons[299]
    assert row_counts(db)["ocr_text_boxes"] == 297 * 5
    assert_totals_match_recount(db, "holes")


def test_a_path_the_index_cannot_hold_is_rejected_with_its_raw_input(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix the limit was 4096 characters, which let such paths through.
    monkeypatch.setattr(loader.fields, "MAX_PATH_BYTES", 1_000_000)
    rng = random.Random(5)
    long_path = "/long/" + "".join(rng.choice(string.ascii_letters) for _ in range(4000))
    results = make_batch(20, prefix="long")
    results[7] = {"image_path": long_path, "text_boxes": results[7]["text_boxes"]}

    report = save_batch(conn, "long", results)

    # Stored as failed is refused too (same path, same index): so it is rejected.
    assert (report.stored, report.failed, report.rejected) == (19, 0, 1)
    position, path, reason, raw = db.execute(
        "SELECT position, image_path, reason, raw FROM load_rejects WHERE batch_id = 'long'"
    ).fetchone()
    # The reject keeps the path it claimed: open rejects are found by path through a hash index.
    assert position == 7 and path == long_path
    assert "SQLSTATE 54000" in reason and "index row" in reason
    assert json.loads(bytes(raw)) == results[7]
    assert stored_totals(db, "long") == (20, 19, 1, "SUCCESS")
    assert_totals_match_recount(db, "long")


def test_a_constraint_added_by_the_dba_fails_only_the_rows_it_refuses(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute("ALTER TABLE ocr_executions ADD CONSTRAINT no_tmp_paths CHECK (image_path NOT LIKE '/tmp/%%')")
    results = make_batch(50, prefix="dba")
    results[10]["image_path"] = "/tmp/scratch.png"
    results[11]["image_path"] = "/tmp/other.png"

    report = save_batch(conn, "dba", results)

    assert (report.stored, report.rejected) == (48, 2)
    assert all("no_tmp_paths" in i.reason for i in report.issues)
    assert_totals_match_recount(db, "dba")


def test_when_even_a_reject_is_refused_nothing_of_the_call_is_kept(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute("ALTER TABLE load_rejects ADD CONSTRAINT few_positions CHECK (position < 1000)")
    save_batch(conn, "aborts", make_batch(5, prefix="first"), total_images=1006)
    before = snapshot(db)

    with pytest.raises(DatabaseError) as info:
        save_batch(conn, "aborts", [*make_batch(5, prefix="second"), b"not json"], position_offset=1000)

    assert not info.value.transient
    assert "few_positions" in str(info.value)
    assert snapshot(db) == before


def _statements_answered(conn: psycopg.Connection[Any], call: Any) -> int:
    """Statements the server answered during ``call()``, read from libpq's protocol trace:
    each ends in exactly one CommandComplete, or an ErrorResponse when refused."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            call()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        return sum(
            1
            for line in trace
            if line.startswith("B\t") and line.split("\t")[2] in ("CommandComplete", "ErrorResponse")
        )


def test_statements_of_the_safety_net_are_counted_honestly(dsn: str) -> None:
    reports: list[LoadReport] = []
    with psycopg.connect(dsn) as c:
        normal = _statements_answered(c, lambda: reports.append(save_batch(c, "plain", make_batch(50))))
        refused = _statements_answered(
            c, lambda: reports.append(save_batch(c, "counted", _call_with_refusals()))
        )

    assert normal == reports[0].statements == 8
    assert refused == reports[1].statements > 8

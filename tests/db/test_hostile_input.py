"""Hostile inputs: every one ends stored, stored as failed with a reason, or
rejected with its raw bytes kept exactly; and the batch's totals add up."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Any

import psycopg
import pytest
from helpers.checks import recount, snapshot, stored_totals
from helpers.hostile_corpus import Case, corpus, dict_only_cases, line_only_cases

from loader import ConfigurationError, LoadReport, save_batch
from loader.datagen import make_batch


def _stored_rows(db: psycopg.Connection[Any], batch_id: str) -> dict[str, tuple[str, str | None, list[Any]]]:
    """image_path -> (status, error, [(text, confidence, bbox)] in reading order)."""
    rows = db.execute(
        """
        SELECT o.image_path, o.status::text, o.error,
               coalesce(array_agg(ARRAY[b.text, b.confidence::text, b.bbox::text] ORDER BY b.position)
                        FILTER (WHERE b.id IS NOT NULL), '{}')
        FROM ocr_executions o
        JOIN chain_executions c ON c.chain_id = o.chain_id AND c.batch_id = %s
        LEFT JOIN ocr_text_boxes b ON b.ocr_execution_id = o.id
        GROUP BY o.id
        """,
        [batch_id],
    ).fetchall()
    return {path: (status, error, boxes) for path, status, error, boxes in rows}


def _confidence(db: psycopg.Connection[Any], batch_id: str) -> dict[tuple[str, int], float]:
    """Confidences as float8 values (the text form above loses nothing, but -0.0 deserves a check)."""
    rows = db.execute(
        """
        SELECT o.image_path, b.position, b.confidence FROM ocr_text_boxes b
        JOIN ocr_executions o ON o.id = b.ocr_execution_id
        JOIN chain_executions c ON c.chain_id = o.chain_id AND c.batch_id = %s
        """,
        [batch_id],
    ).fetchall()
    return {(path, pos): conf for path, pos, conf in rows}


def _same_json(raw: bytes, item: Any) -> bool:
    decoded = json.loads(raw.decode("utf-8", "surrogatepass"))
    return json.dumps(decoded, sort_keys=True) == json.dumps(item, sort_keys=True)


def check_every_input(
    db: psycopg.Connection[Any],
    batch_id: str,
    fed: list[tuple[Case, Any, str]],
    report: LoadReport,
) -> None:
    """Each (case, input as fed, expected outcome) at its position is exactly as expected."""
    stored = _stored_rows(db, batch_id)
    confidences = _confidence(db, batch_id)
    rejects = {
        pos: (path, reason, bytes(raw), bytes(digest))
        for pos, path, reason, raw, digest in db.execute(
            "SELECT position, image_path, reason, raw, raw_sha256 FROM load_rejects WHERE batch_id = %s",
            [batch_id],
        ).fetchall()
    }
    issues = {i.position: i for i in report.issues}
    seen_paths: set[str] = set()

    for pos, (case, item, expect) in enumerate(fed):
        label = f"{case.name} (position {pos}, {type(item).__name__})"
        why = case.why_for(item).lower()
        if expect == "rejected":
            assert pos in rejects, f"{label}: expected a reject"
            _path, reason, raw, digest = rejects[pos]
            assert reason and (why in reason.lower()), f"{label}: reason {reason!r}"
            assert digest == hashlib.sha256(raw).digest(), label
            if isinstance(item, bytes):
                assert raw == item, f"{label}: raw input not kept byte-exact"
            elif case.raw_is_json:
                assert _same_json(raw, item), f"{label}: raw {raw[:80]!r} is not the input"
            else:
                assert raw, label
            assert issues[pos].outcome == "rejected" and issues[pos].reason == reason, label
            continue

        assert pos not in rejects, f"{label}: rejected ({rejects.get(pos, ('', ''))[1]}), expected {expect}"
        data = json.loads(item) if isinstance(item, bytes) else item
        path = data["image_path"]
        assert path not in seen_paths
        seen_paths.add(path)
        assert path in stored, f"{label}: not stored"
        status, error, boxes = stored[path]
        if expect == "failed":
            assert status == "failed" and error, f"{label}: {status} {error!r}"
            assert why in error.lower(), f"{label}: reason {error[:200]!r}"
            assert boxes == [], label
            assert issues[pos].outcome == "failed" and issues[pos].reason == error, label
            continue

        assert (status, error) == ("success", None), f"{label}: {status} {error!r}"
        assert pos not in issues, label
        want = data.get("text_boxes", [])
        assert len(boxes) == len(want), label
        for n, ((text, _conf_text, bbox_text), box) in enumerate(zip(boxes, want, strict=True)):
            assert text == box["text"], f"{label}: text of box {n} did not round-trip"
            conf = confidences[(path, n)]
            assert conf == box["confidence"], label
            assert math.copysign(1, conf) == math.copysign(1, box["confidence"]), f"{label}: sign lost"
            got = [[float(c) for c in point] for point in json.loads(bbox_text)]
            assert got == [[float(c) for c in point] for point in box["bbox"]], label

    outcomes = Counter(expect for _, _, expect in fed)
    assert (report.received, report.stored, report.failed, report.rejected, report.unchanged) == (
        len(fed),
        outcomes["stored"],
        outcomes["failed"],
        outcomes["rejected"],
        0,
    )
    assert len(stored) == outcomes["stored"] + outcomes["failed"]
    assert len(rejects) == outcomes["rejected"]
    total, completed, failed, _status = stored_totals(db, batch_id)
    assert completed + failed == total == len(fed)
    assert (completed, failed) == (outcomes["stored"], outcomes["failed"] + outcomes["rejected"])
    assert (completed, failed) == recount(db, batch_id)


def _tables_intact(db: psycopg.Connection[Any]) -> None:
    names = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {
        "batch_executions",
        "chain_executions",
        "ocr_executions",
        "ocr_text_boxes",
        "load_rejects",
    } <= names


def test_every_hostile_dict_ends_stored_failed_or_rejected_exactly(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    cases = corpus("/h/d/") + dict_only_cases("/h/d/")
    fed = [(c, c.item, c.expect) for c in cases]

    report = save_batch(conn, "hostile-dicts", [item for _, item, _ in fed])

    check_every_input(db, "hostile-dicts", fed, report)
    _tables_intact(db)
    before = snapshot(db)
    again = save_batch(conn, "hostile-dicts", [item for _, item, _ in fed])
    assert (again.stored, again.failed, again.rejected, again.unchanged) == (0, 0, 0, len(fed))
    assert snapshot(db) == before


def test_every_hostile_jsonl_line_ends_stored_failed_or_rejected_exactly(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    cases = corpus("/h/l/") + line_only_cases("/h/l/")
    fed = [(c, c.as_line(), c.expect_line) for c in cases]

    report = save_batch(conn, "hostile-lines", [line for _, line, _ in fed])

    check_every_input(db, "hostile-lines", fed, report)
    _tables_intact(db)
    before = snapshot(db)
    again = save_batch(conn, "hostile-lines", [line for _, line, _ in fed])
    assert (again.stored, again.failed, again.rejected, again.unchanged) == (0, 0, 0, len(fed))
    assert snapshot(db) == before


def test_hostile_lines_as_str_keep_their_raw_text(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    lines = ["not json \x00 \ud800", '{"image_path": "/s/\\ud800"}', "", '{"image_path": "/s/ok"}']
    report = save_batch(conn, "str-lines", lines)
    assert (report.stored, report.rejected) == (1, 3)
    raw = dict(db.execute("SELECT position, raw FROM load_rejects WHERE batch_id = 'str-lines'").fetchall())
    for pos in (0, 1, 2):
        assert bytes(raw[pos]) == lines[pos].encode("utf-8", "surrogatepass")


def test_paths_differing_only_by_normalisation_or_trailing_space_are_distinct_images(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    # Split over two calls: the second call's duplicates meet the stored rows, not the call's own.
    first = [{"image_path": "/n/caf\u00e9"}, {"image_path": "/n/x"}]
    second = [{"image_path": "/n/cafe\u0301"}, {"image_path": "/n/x "}, {"image_path": "/n/x"}]
    save_batch(conn, "normalised", first, total_images=5)  # positions live inside the total
    report = save_batch(conn, "normalised", second, position_offset=2, total_images=5)
    # "/n/x" again at another position: a duplicate of position 1, counted.
    assert (report.stored, report.rejected) == (2, 1)
    paths = {r[0] for r in db.execute("SELECT image_path FROM ocr_executions")}
    assert paths == {"/n/caf\u00e9", "/n/cafe\u0301", "/n/x", "/n/x "}
    assert stored_totals(db, "normalised") == (5, 4, 1, "SUCCESS")


@pytest.mark.parametrize(
    "batch_id",
    ["", "   ", "nul\x00id", "tab\tid", "esc\x1b[2J", "sur\ud800", "x" * 256, 5, None, b"bytes"],
    ids=["empty", "blank", "nul", "tab", "escape", "surrogate", "256 chars", "int", "none", "bytes"],
)
def test_unusable_batch_ids_are_refused_before_any_write(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], batch_id: Any
) -> None:
    with pytest.raises(ConfigurationError):
        save_batch(conn, batch_id, make_batch(1))
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)


def test_sql_looking_and_unicode_batch_ids_are_just_ids(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    ids = ["'); DROP TABLE batch_executions; --", "%s %(batch_id)s", "배치 👍🏽", "x" * 255, "a\\N\\."]
    for n, batch_id in enumerate(ids):
        report = save_batch(conn, batch_id, make_batch(2, prefix=f"ids{n}"))
        assert report.stored == 2 and report.progress.batch_id == batch_id
    stored = {r[0] for r in db.execute("SELECT batch_id FROM batch_executions")}
    assert stored == set(ids)
    _tables_intact(db)


@pytest.mark.parametrize(
    ("offset", "inputs"),
    [(-1, 1), (True, 1), (1.5, 1), ("3", 1), (2**31 - 1, 2), (2**31, 1), (2**40, 1)],
    ids=["negative", "bool", "float", "string", "last position overflows", "2^31", "2^40"],
)
def test_position_offsets_that_do_not_fit_are_refused(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], offset: Any, inputs: int
) -> None:
    # Found by this test: binary COPY wrapped positions past 2^31 - 1 around
    # silently (2^32 + 5 was stored as 5).
    with pytest.raises(ConfigurationError, match="position"):
        save_batch(conn, "offsets", [b"not json"] * inputs, position_offset=offset)
    assert db.execute("SELECT count(*) FROM load_rejects").fetchone() == (0,)


def test_the_last_position_that_fits_is_kept(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    # Positions live inside the declared total, whose largest is 2^31 - 1.
    report = save_batch(conn, "max-pos", [b"not json"], position_offset=2**31 - 2, total_images=2**31 - 1)
    assert report.rejected == 1
    assert db.execute("SELECT position FROM load_rejects").fetchone() == (2**31 - 2,)


@pytest.mark.parametrize(
    "total", [-1, 2**31, "5", True, 1.0], ids=["negative", "2^31", "str", "bool", "float"]
)
def test_unusable_totals_are_refused(conn: psycopg.Connection[Any], total: Any) -> None:
    with pytest.raises(ConfigurationError, match="total_images"):
        save_batch(conn, "totals", make_batch(1), total_images=total)

"""The save path's guarantees, each against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers.checks import (
    assert_totals_match_recount,
    hold_image_path,
    recount,
    row_counts,
    snapshot,
    stored_totals,
)

from loader import (
    BatchConflictError,
    DatabaseError,
    OCRResult,
    ProcessStatus,
    get_progress,
    register_batch,
    save_batch,
)
from loader.datagen import make_batch
from loader.errors import TransactionStateError


def test_100_valid_images_are_all_stored(conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> None:
    report = save_batch(conn, "batch-100", make_batch(100))

    assert (report.received, report.stored, report.failed, report.rejected) == (100, 100, 0, 0)
    assert report.boxes == 500
    assert stored_totals(db, "batch-100") == (100, 100, 0, "SUCCESS")
    assert row_counts(db) == {
        "batch_executions": 1,
        "chain_executions": 100,
        "ocr_executions": 100,
        "ocr_text_boxes": 500,
        "load_rejects": 0,
    }
    assert report.progress.percentage == 100.0


def test_broken_image_500_fails_alone_with_its_reason(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results = make_batch(1000)
    results[500]["text_boxes"][3]["confidence"] = 1.7

    report = save_batch(conn, "batch-1000", results)

    assert (report.stored, report.failed, report.rejected) == (999, 1, 0)
    assert stored_totals(db, "batch-1000") == (1000, 999, 1, "SUCCESS")
    status, error, boxes = db.execute(
        "SELECT o.status::text, o.error,"
        " (SELECT count(*) FROM ocr_text_boxes b WHERE b.ocr_execution_id = o.id)"
        " FROM ocr_executions o WHERE image_path = %s",
        [results[500]["image_path"]],
    ).fetchone()
    assert status == "failed"
    assert "text_boxes[3].confidence" in error and "1.7" in error
    assert boxes == 0
    assert [i.position for i in report.issues] == [500]
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone()[0] == 999 * 5


def test_every_box_of_1000_images_is_stored_exactly(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results = make_batch(1000, boxes=5)
    save_batch(conn, "exact", results)

    stored = db.execute(
        """
        SELECT o.image_path, o.public_path, o.status::text, o.error,
               coalesce(json_agg(json_build_object('text', b.text, 'confidence', b.confidence, 'bbox', b.bbox)
                                 ORDER BY b.position) FILTER (WHERE b.id IS NOT NULL), '[]')
        FROM ocr_executions o LEFT JOIN ocr_text_boxes b ON b.ocr_execution_id = o.id
        GROUP BY o.id ORDER BY o.image_path
        """
    ).fetchall()
    expected = sorted(results, key=lambda r: r["image_path"])
    assert len(stored) == 1000
    for (path, public, status, error, boxes), want in zip(stored, expected, strict=True):
        assert (path, public, status, error) == (
            want["image_path"],
            want["public_path"],
            "success",
            None,
        )
        assert boxes == want["text_boxes"]


def test_boxes_keep_their_reading_order(conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> None:
    texts = [f"line {n}" for n in range(40)]
    result = {
        "image_path": "/ordered.png",
        "text_boxes": [
            {"text": t, "confidence": 0.5, "bbox": [[n, n], [n + 1, n]]} for n, t in enumerate(texts)
        ],
    }
    save_batch(conn, "ordered", [result])
    rows = db.execute("SELECT position, text FROM ocr_text_boxes ORDER BY position").fetchall()
    assert rows == list(enumerate(texts))


def test_replayed_batch_changes_nothing(conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> None:
    results = make_batch(200)
    results[7]["status"] = "failed"
    results[7]["error"] = "engine crashed"
    results.append("this line is not JSON")
    first = save_batch(conn, "replayed", results)
    before = snapshot(db)

    again = save_batch(conn, "replayed", results)

    assert snapshot(db) == before
    assert (again.stored, again.failed, again.rejected, again.unchanged) == (0, 0, 0, 201)
    assert again.progress == first.progress


def test_chunked_batch_accumulates_and_reports_progress(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results = make_batch(1000)
    results[123]["status"] = "failed"
    results[123]["error"] = "blurry"
    progress = register_batch(conn, "chunked", 1000)
    assert (progress.status, progress.accounted_images) == (ProcessStatus.PENDING, 0)

    for start in range(0, 1000, 250):
        report = save_batch(conn, "chunked", results[start : start + 250], position_offset=start)
        p = get_progress(conn, "chunked")
        assert p == report.progress
        assert p.accounted_images == start + 250
        assert p.percentage == pytest.approx((start + 250) / 10)
        assert p.status == (ProcessStatus.SUCCESS if start == 750 else ProcessStatus.STARTED)
        assert_totals_match_recount(db, "chunked")

    assert stored_totals(db, "chunked") == (1000, 999, 1, "SUCCESS")


def test_register_batch_is_idempotent_and_refuses_another_total(
    conn: psycopg.Connection[Any],
) -> None:
    register_batch(conn, "reg", 10)
    assert register_batch(conn, "reg", 10).total_images == 10
    with pytest.raises(BatchConflictError, match="total_images=10"):
        register_batch(conn, "reg", 11)
    with pytest.raises(BatchConflictError, match="declared with total_images=10"):
        save_batch(conn, "reg", make_batch(2), total_images=12)


def test_all_images_failed_marks_batch_failure(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    results = [{"image_path": f"/f/{i}", "status": "failed", "error": "no text"} for i in range(5)]
    report = save_batch(conn, "all-failed", results)
    assert report.failed == 5
    assert stored_totals(db, "all-failed") == (5, 0, 5, "FAILURE")


def test_invalid_inputs_are_stored_as_failed_with_reason(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    base = {
        "image_path": "",
        "text_boxes": [{"text": "ok", "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}],
    }
    cases = {
        "confidence 1.7": ("text_boxes", 0, "confidence", 1.7),
        "confidence 1.0000001": ("text_boxes", 0, "confidence", 1.0000001),
        "confidence NaN": ("text_boxes", 0, "confidence", float("nan")),
        "confidence string": ("text_boxes", 0, "confidence", "0.5"),
        "NUL in text": ("text_boxes", 0, "text", "a\x00b"),
        "bbox not points": ("text_boxes", 0, "bbox", [1, 2, 3, 4]),
        "bbox string": ("text_boxes", 0, "bbox", "[[0,0]]"),
    }
    results = []
    for n, (_name, (key, index, field, value)) in enumerate(cases.items()):
        item = json.loads(json.dumps(base))
        item["image_path"] = f"/invalid/{n}"
        item[key][index][field] = value
        results.append(item)

    report = save_batch(conn, "invalid", results)

    assert (report.stored, report.failed, report.rejected) == (0, len(cases), 0)
    errors = dict(
        db.execute("SELECT image_path, error FROM ocr_executions WHERE status = 'failed'").fetchall()
    )
    assert len(errors) == len(cases)
    for n, (_key, _i, field, _v) in enumerate(cases.values()):
        assert f"text_boxes[0].{field}" in errors[f"/invalid/{n}"]
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone()[0] == 0


def test_unstorable_inputs_are_rejected_with_raw_input_kept(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    raw_lines = [
        b'{"image_path": "/ok.png"}',
        b"not json at all",
        b'["a", "list"]',
        b'{"image_path": null}',
        b'{"image_path": "   "}',
        b'{"image_path": "/ok.png", "status": "failed"}',  # duplicate within the call
        b'{"image_path": "nul\\u0000path"}',
        b'{"image_path": 5, "text": "NUL \x00 kept"}',
    ]

    report = save_batch(conn, "rejects", raw_lines)

    assert (report.stored, report.rejected) == (1, 7)
    rows = db.execute(
        "SELECT position, image_path, reason, raw, raw_sha256 FROM load_rejects ORDER BY position"
    ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    for position, _path, reason, raw, digest in rows:
        assert bytes(raw) == raw_lines[position]
        assert bytes(digest) == hashlib.sha256(raw_lines[position]).digest()
        assert reason
    reasons = {r[0]: r[2] for r in rows}
    assert "not valid JSON" in reasons[1]
    assert "not a JSON object" in reasons[2]
    assert "image_path is missing" in reasons[3]
    assert "whitespace" in reasons[4]
    assert "duplicate image_path (first at position 0)" in reasons[5]
    assert "NUL" in reasons[6]
    assert stored_totals(db, "rejects") == (8, 1, 7, "SUCCESS")
    assert_totals_match_recount(db, "rejects")


def test_image_owned_by_another_batch_is_rejected(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    first = make_batch(3, prefix="shared")
    save_batch(conn, "owner", first)
    intruder = [
        dict(first[1], public_path=None),
        {"image_path": "/new.png", "public_path": first[2]["public_path"]},
    ]

    report = save_batch(conn, "intruder", intruder)

    assert report.rejected == 2
    reasons = [i.reason for i in report.issues]
    assert "image_path already stored by another batch ('owner')" in reasons[0]
    assert "public_path already used by another image" in reasons[1]
    raw = db.execute("SELECT raw FROM load_rejects WHERE batch_id = 'intruder' ORDER BY position").fetchall()
    assert json.loads(bytes(raw[0][0])) == json.loads(json.dumps(intruder[0]))
    assert stored_totals(db, "owner") == (3, 3, 0, "SUCCESS")
    assert stored_totals(db, "intruder") == (2, 0, 2, "FAILURE")


def test_ocr_result_models_and_dicts_are_both_accepted(conn: psycopg.Connection[Any]) -> None:
    model = OCRResult.model_validate(make_batch(1, prefix="m")[0])
    report = save_batch(conn, "models", [model, make_batch(1, prefix="d")[0]])
    assert report.stored == 2


def test_statement_count_is_the_same_for_10_and_1000_images(
    dsn: str, templates: Any, db: psycopg.Connection[Any]
) -> None:
    counts = {}
    for n in (10, 1000):
        with psycopg.connect(dsn) as c:
            report = save_batch(c, f"count-{n}", make_batch(n, prefix=f"c{n}"))
        counts[n] = report.statements
    assert counts[10] == counts[1000] <= 8

    if not templates.stat_statements:
        pytest.skip("server has no pg_stat_statements; client-side count checked only")
    # Server side: statements executed by this database's loader calls. The
    # connection is fresh each time, so psycopg never prepares (which would hide
    # utility statements from pg_stat_statements on PostgreSQL 15).
    server = {}
    for n in (10, 1000):
        db.execute("SELECT pg_stat_statements_reset()")
        with psycopg.connect(dsn) as c:
            report = save_batch(c, f"server-count-{n}", make_batch(n, prefix=f"s{n}"))
        row = db.execute(
            """
            SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s
            JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = current_database() AND s.toplevel
              AND query NOT ILIKE '%%pg_stat_statements%%'
            """
        ).fetchone()
        server[n] = int(row[0])
    assert server[10] == server[1000] == report.statements


def test_connection_inside_a_transaction_is_refused(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    conn.execute("SELECT 1")  # opens a transaction
    with pytest.raises(TransactionStateError, match="not idle"):
        save_batch(conn, "refused", make_batch(1))
    conn.rollback()
    assert row_counts(db)["batch_executions"] == 0


def test_other_schema_version_is_refused_naming_both(dsn: str, db: psycopg.Connection[Any]) -> None:
    from loader.connection import SCHEMA_VERSION
    from loader.errors import SchemaVersionError

    future = SCHEMA_VERSION + 1
    db.execute("INSERT INTO loader_schema_version (version, description) VALUES (%s, 'future')", [future])
    with (
        psycopg.connect(dsn) as c,
        pytest.raises(SchemaVersionError, match=f"version {future} .* version {SCHEMA_VERSION}"),
    ):
        save_batch(c, "future", make_batch(1))
    assert row_counts(db)["batch_executions"] == 0


def test_database_without_schema_is_refused(pg_server: str) -> None:
    from loader.errors import SchemaVersionError

    with (
        psycopg.connect(pg_server) as c,
        pytest.raises(SchemaVersionError, match="no loader schema"),
    ):
        save_batch(c, "none", make_batch(1))


def _backend_waiting(db: psycopg.Connection[Any], wait_type: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = %s AND pid <> pg_backend_pid()",
            [wait_type],
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError(f"no backend waited on {wait_type}")


def test_backend_killed_mid_merge_rolls_back_everything(dsn: str, db: psycopg.Connection[Any]) -> None:
    results = make_batch(300)
    with psycopg.connect(dsn) as c:
        register_batch(c, "killed", 600)
        save_batch(c, "killed", make_batch(300, prefix="earlier"))
    before = snapshot(db)

    # Another session holds an uncommitted OCR row for one of the call's paths,
    # so the call's merge waits on it (after its COPYs) until we kill it.
    blocker = hold_image_path(dsn, results[150]["image_path"])
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with psycopg.connect(dsn) as c:
                save_batch(c, "killed", results, position_offset=300)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    pid = _backend_waiting(db, "Lock")
    db.execute("SELECT pg_terminate_backend(%s)", [pid])
    worker.join(30)
    blocker.rollback()
    blocker.close()

    assert len(errors) == 1 and isinstance(errors[0], DatabaseError)
    assert errors[0].transient, errors[0]
    assert snapshot(db) == before

    # The retry completes the batch exactly.
    with psycopg.connect(dsn) as c:
        report = save_batch(c, "killed", results, position_offset=300)
    assert report.stored == 300
    assert stored_totals(db, "killed") == (600, 600, 0, "SUCCESS")


def test_concurrent_batches_with_same_paths_in_opposite_orders_do_not_deadlock(
    pool: Any, db: psycopg.Connection[Any]
) -> None:
    shared = make_batch(400, prefix="contended")
    calls = {"forward": shared, "backward": list(reversed(json.loads(json.dumps(shared))))}
    reports: dict[str, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(batch_id: str, results: list[Any]) -> None:
        try:
            barrier.wait()
            reports[batch_id] = save_batch(pool, batch_id, results)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert errors == []
    # Every path stored exactly once, by one batch; the other rejected it.
    assert db.execute("SELECT count(*), count(DISTINCT image_path) FROM ocr_executions").fetchone() == (
        400,
        400,
    )
    stored = sum(r.stored for r in reports.values())
    rejected = sum(r.rejected for r in reports.values())
    assert (stored, rejected) == (400, 400)
    for batch_id in calls:
        _total, completed, failed, _ = stored_totals(db, batch_id)
        assert completed + failed == 400
        assert (completed, failed) == recount(db, batch_id)


def test_concurrent_calls_for_one_batch_serialize(pool: Any, db: psycopg.Connection[Any]) -> None:
    results = make_batch(600, prefix="same")
    register_batch(pool, "same", 600)
    # Overlapping chunks, several times each, all at once.
    spans = [(0, 300), (200, 500), (400, 600), (0, 600), (100, 200)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(spans))

    def run(start: int, end: int) -> None:
        try:
            barrier.wait()
            save_batch(pool, "same", results[start:end], position_offset=start)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=span) for span in spans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert errors == []
    assert stored_totals(db, "same") == (600, 600, 0, "SUCCESS")
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone()[0] == 3000
    assert_totals_match_recount(db, "same")


def test_pool_is_accepted_and_left_open(pool: Any) -> None:
    save_batch(pool, "pooled", make_batch(5))
    assert not pool.closed
    assert get_progress(pool, "pooled").completed_images == 5


def test_replay_with_a_public_path_now_taken_stays_unchanged(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    mine = {"image_path": "/a.png", "public_path": "https://cdn/a.png"}
    save_batch(conn, "first", [mine])
    save_batch(conn, "other", [{"image_path": "/b.png", "public_path": "https://cdn/b.png"}])

    # Redelivered with a public_path that another image owns meanwhile: still a
    # replay of an image this batch stored, so nothing changes and nothing is counted twice.
    report = save_batch(conn, "first", [dict(mine, public_path="https://cdn/b.png")])

    assert (report.unchanged, report.rejected) == (1, 0)
    assert stored_totals(db, "first") == (1, 1, 0, "SUCCESS")


def test_a_repair_replaces_stored_failures_and_a_redelivery_never_reverts_it(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    good = make_batch(3, prefix="rerun")
    failed = [dict(good[0], status="failed", error="GPU out of memory", text_boxes=[])]
    invalid = json.loads(json.dumps(good[1]))
    invalid["text_boxes"][0]["confidence"] = 1.7
    first = save_batch(conn, "rerun", [failed[0], invalid, good[2]])
    assert (first.stored, first.failed) == (1, 2)
    ids_before = db.execute("SELECT id, chain_id FROM ocr_executions ORDER BY id").fetchall()

    # The inputs fixed, sent as a repair: both failures become successes, same rows.
    second = save_batch(conn, "rerun", good, repair=True)

    assert (second.stored, second.replaced, second.failed, second.unchanged) == (0, 2, 0, 1)
    assert db.execute("SELECT id, chain_id FROM ocr_executions ORDER BY id").fetchall() == ids_before
    assert db.execute(
        "SELECT count(*) FILTER (WHERE o.status = 'success' AND o.error IS NULL AND c.status = 'SUCCESS'"
        # A repair is one more OCR run of the chain (failed once, then completed).
        " AND c.completed_tasks = 1 AND c.total_tasks = c.completed_tasks + c.failed_tasks)"
        " FROM ocr_executions o JOIN chain_executions c"
        " USING (chain_id)"
    ).fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone()[0] == 15
    assert stored_totals(db, "rerun") == (3, 3, 0, "SUCCESS")
    assert_totals_match_recount(db, "rerun")

    # The old failure redelivered afterwards changes nothing.
    before = snapshot(db)
    third = save_batch(conn, "rerun", [failed[0], invalid])
    assert (third.stored, third.unchanged) == (0, 2)
    assert snapshot(db) == before

"""Issue 20, the call ledger, replays and counters: exact while other actors write.

Each test stages one interleaving deterministically (a session holds a lock or
an uncommitted row, the other waits on it, and pg_stat_activity says when), or
one write by the application, and checks the rows, the counts against a
recount, and that a call's report says what get_progress says.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from helpers.checks import hold_image_path, recount, stored_totals

from loader import LoadReport, get_progress, register_batch, save_batch
from loader.datagen import make_batch
from loader.models import BatchProgress
from loader.queries import get as query
from loader.save.validate import call_digest


def _waiting_on_lock(db: psycopg.Connection[Any], what: str) -> None:
    """Until another backend of this database waits on a lock (wait_event_type 'Lock', this wait_event)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = %s AND pid <> pg_backend_pid()",
            [what],
        ).fetchone():
            return
        time.sleep(0.02)
    raise AssertionError(f"no backend waited on a {what} lock")


def _in_thread(
    dsn: str, call: Callable[[psycopg.Connection[Any]], LoadReport]
) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn) as c:
                out.append(call(c))
        except BaseException as exc:  # handed to the test
            out.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, out


def _progress_matches(report: LoadReport, db: psycopg.Connection[Any]) -> BatchProgress:
    progress = get_progress(db, report.batch_id)
    assert report.progress == progress
    return progress


def _counts_match_recount(db: psycopg.Connection[Any], batch_id: str) -> None:
    progress = get_progress(db, batch_id)
    assert (progress.completed_images, progress.failed_images) == recount(db, batch_id)


# Item 1: a redelivery during delete_batch is judged from the rows as they are after the lock.
def test_redelivery_waiting_on_a_delete_stores_its_inputs(dsn: str, db: psycopg.Connection[Any]) -> None:
    results = make_batch(2, prefix="redeliver")
    save_batch(db, "R", results)

    with psycopg.connect(dsn) as deleter:
        deleter.execute(query("batch_lock"), {"batch_id": "R"})
        deleter.execute(query("delete_batch"), {"batch_id": "R"})
        worker, out = _in_thread(dsn, lambda c: save_batch(c, "R", results))
        _waiting_on_lock(db, "advisory")
        deleter.commit()
    worker.join(60)

    report = out[0]
    assert isinstance(report, LoadReport), report
    assert (report.replayed, report.stored, report.unchanged) == (False, 2, 0)
    progress = _progress_matches(report, db)
    assert (progress.status, progress.completed_images, progress.total_images) == ("SUCCESS", 2, 2)


# Item 3: a write of the application committed while a merge runs keeps the batch stale.
def test_a_write_committed_during_a_merge_is_recounted_not_forgotten(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    results = make_batch(3, prefix="during")
    register_batch(db, "M", 3)
    save_batch(db, "M", results[:1])

    # The merge of the second call waits on an uncommitted row for one of its
    # paths (after its snapshot); meanwhile the application fails image 0.
    blocker = hold_image_path(dsn, results[1]["image_path"])
    worker, out = _in_thread(dsn, lambda c: save_batch(c, "M", results[1:], position_offset=1))
    _waiting_on_lock(db, "transactionid")
    db.execute(
        "UPDATE ocr_executions SET status = 'failed' WHERE image_path = %s", [results[0]["image_path"]]
    )
    blocker.rollback()
    blocker.close()
    worker.join(60)
    assert isinstance(out[0], LoadReport), out[0]

    _counts_match_recount(db, "M")
    assert recount(db, "M") == (2, 1)
    # A later valid re-OCR of that image stores it as what it is, counted exactly.
    again = save_batch(db, "M", results[:1], replace=True)
    assert (again.replaced, again.failed) == (1, 0)
    assert get_progress(db, "M").completed_images == 3
    assert stored_totals(db, "M")[1:3] == recount(db, "M") == (3, 0)
    _progress_matches(again, db)


# Item 4: a digest over a typed canonical form.
def test_inputs_that_encode_alike_but_differ_in_type_are_not_a_replay(db: psycopg.Connection[Any]) -> None:
    valid = make_batch(1, prefix="typed")[0]
    save_batch(db, "T", [valid])
    quoted = {**valid, "text_boxes": [{**valid["text_boxes"][0], "confidence": "0.9"}]}
    exact = {**valid, "text_boxes": [{**valid["text_boxes"][0], "confidence": Decimal("0.9")}]}

    invalid = save_batch(db, "T", [quoted], replace=True)
    assert (invalid.replaced, get_progress(db, "T").failed_images) == (1, 1)
    fixed = save_batch(db, "T", [exact], replace=True)

    assert (fixed.replayed, fixed.replaced) == (False, 1)
    assert db.execute("SELECT status::text FROM ocr_executions").fetchone() == ("success",)
    progress = _progress_matches(fixed, db)
    assert (progress.completed_images, progress.failed_images) == (1, 0)


def test_the_digest_tells_types_apart_that_json_does_not() -> None:
    def differ(a: Any, b: Any) -> bool:
        return call_digest([(0, a)]) != call_digest([(0, b)])

    assert differ({"c": Decimal("0.9")}, {"c": "0.9"})
    assert differ({"p": b"/a"}, {"p": "/a"})
    assert differ({"b": (1, 2)}, {"b": [1, 2]})
    assert differ({1: "x"}, {"1": "x"})
    assert differ({"n": 1}, {"n": True}) and differ({"n": 1}, {"n": 1.0})
    assert differ(b"{}", "{}")
    # The same values still share one, however they were built.
    assert not differ({"c": [0.5, "x"]}, dict([("c", [0.5, "".join("x")])]))


# Item 7: the ledger outlives the rows; the rows decide.
def test_a_call_whose_rows_were_deleted_is_judged_and_restores_them(db: psycopg.Connection[Any]) -> None:
    results = make_batch(2, prefix="outlived")
    save_batch(db, "L", results)
    db.execute(
        "DELETE FROM chain_executions c USING ocr_executions o"
        " WHERE o.chain_id = c.chain_id AND o.image_path = %s",
        [results[1]["image_path"]],
    )

    again = save_batch(db, "L", results)

    assert (again.replayed, again.stored, again.unchanged) == (False, 1, 1)
    progress = _progress_matches(again, db)
    assert (progress.status, progress.completed_images, progress.failed_images) == ("SUCCESS", 2, 0)
    # Now the rows confirm the ledger: a replay, three statements.
    assert save_batch(db, "L", results).replayed


def test_a_call_that_wrote_nothing_is_judged_again_and_finds_what_changed_since(
    db: psycopg.Connection[Any],
) -> None:
    register_batch(db, "N", 2)
    fix = make_batch(1, prefix="nothing")
    nothing = save_batch(db, "N", fix, position_offset=1, repair=True)  # no reject at 1 yet
    assert nothing.refused == 1
    assert db.execute("SELECT count(*) FROM loader_calls WHERE batch_id = 'N'").fetchone() == (0,)
    save_batch(db, "N", [b"not json"], position_offset=1)  # a later call: a reject at 1

    again = save_batch(db, "N", fix, position_offset=1, repair=True)  # the same repair, sent again

    # Its position now holds an input (the reject) as its ledger row would have had
    # it confirm: recorded, the call would have been taken for a replay and fixed nothing.
    assert (again.replayed, again.stored, again.resolved) == (False, 1, 1)
    progress = _progress_matches(again, db)
    assert (progress.completed_images, progress.failed_images, progress.rejected_images) == (1, 0, 0)


def test_a_forged_ledger_row_makes_no_replay(db: psycopg.Connection[Any]) -> None:
    results = make_batch(2, prefix="forged")
    register_batch(db, "F", 2)
    key = hashlib.sha256(b"plain\0" + call_digest(enumerate(results))).digest()
    db.execute(
        "INSERT INTO loader_calls (batch_id, digest, first_position, inputs) VALUES ('F', %s, 0, 2)", [key]
    )

    report = save_batch(db, "F", results)

    assert (report.replayed, report.stored) == (False, 2)
    assert get_progress(db, "F").completed_images == 2


def test_a_replay_of_a_batch_another_writer_touched_reports_what_get_progress_says(
    db: psycopg.Connection[Any],
) -> None:
    results = make_batch(2, prefix="staleplay")
    save_batch(db, "S", results)
    db.execute("UPDATE batch_executions SET completed_images = 0, failed_images = 0 WHERE batch_id = 'S'")

    again = save_batch(db, "S", results)

    assert again.replayed
    progress = _progress_matches(again, db)
    assert (progress.status, progress.completed_images) == ("SUCCESS", 2)


# Item 12: the status is the loader's: the application's own complete_execution() marks the batch stale.
def test_an_outside_status_of_success_at_20_percent_reads_started(db: psycopg.Connection[Any]) -> None:
    register_batch(db, "C", 5)
    save_batch(db, "C", make_batch(1, prefix="early"))
    db.execute("UPDATE batch_executions SET status = 'SUCCESS' WHERE batch_id = 'C'")

    progress = get_progress(db, "C")
    assert (progress.status, progress.completed_images, progress.total_images) == ("STARTED", 1, 5)

    # start_execution() still means something: STARTED before any image.
    register_batch(db, "E", 5)
    db.execute("UPDATE batch_executions SET status = 'STARTED' WHERE batch_id = 'E'")
    assert get_progress(db, "E").status == "STARTED"


def test_another_writer_cannot_clear_the_stale_mark(db: psycopg.Connection[Any]) -> None:
    save_batch(db, "K", make_batch(2, prefix="mark"))
    db.execute("UPDATE batch_executions SET completed_images = 7 WHERE batch_id = 'K'")
    db.execute("UPDATE batch_executions SET totals_stale = false WHERE batch_id = 'K'")

    assert db.execute("SELECT totals_stale FROM batch_executions WHERE batch_id = 'K'").fetchone() == (True,)
    assert get_progress(db, "K").completed_images == 2


def test_an_application_transaction_counts_as_one_outside_write_of_its_batch(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    results = make_batch(3, prefix="bulk")
    save_batch(db, "W", results)

    with psycopg.connect(dsn) as app:
        for result in results:
            app.execute(
                "UPDATE ocr_executions SET status = 'failed' WHERE image_path = %s", [result["image_path"]]
            )
    db.execute(
        "UPDATE ocr_executions SET status = 'success' WHERE image_path = %s", [results[0]["image_path"]]
    )

    # Three rows in one transaction write the batch row once; the next transaction once more.
    assert db.execute("SELECT totals_stale, outside_writes FROM batch_executions").fetchone() == (True, 2)
    _counts_match_recount(db, "W")


# Item 2, the merge's part: every change to a batch moves its updated_at and is announced.
def test_a_reocr_that_stays_success_moves_updated_at_and_is_announced(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    first = make_batch(1, prefix="reocr", seed=1)
    second = make_batch(1, prefix="reocr", seed=2)
    assert first != second
    save_batch(db, "U", first)
    before = get_progress(db, "U").updated_at

    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN loader_progress")
        report = save_batch(db, "U", second, replace=True)
        events = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]

    assert report.replaced == 1
    after = _progress_matches(report, db).updated_at
    assert before is not None and after is not None and after > before
    assert len(events) == 1 and '"U"' in events[0]

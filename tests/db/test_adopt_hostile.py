"""`loader schema adopt` against what hostile use found: odd old rows, a writing application, DST."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.oldapp import OldApp, OldImage, ProcessStatus, Shape, old_images
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from loader.cli import cli
from loader.errors import AdoptError, DirtyRowsError
from loader.schema.adopt import adopt

BOX = {"text": "t", "confidence": 0.5, "bbox": [[0, 0], [1, 1]]}


def rows(dsn: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def broken(dsn: str) -> dict[str, list[str]]:
    """Rule -> its example lines, from the refusal adopt gives."""
    with pytest.raises(DirtyRowsError) as caught:
        adopt(dsn)
    return {b.rule: b.examples for b in caught.value.broken}


def test_the_dirty_row_report_shows_the_values_not_placeholders(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(Shape())
    app.new_batch("b", 3)
    crashed = app.crashed_chain("b", ProcessStatus.SUCCESS)
    chain = app.save_image("b", OldImage("s3://b/1.jpg"))
    with psycopg.connect(app.dsn) as conn:
        conn.execute("UPDATE chain_executions SET failed_tasks = -2 WHERE chain_id = %s", (chain,))
        conn.execute(
            "INSERT INTO ocr_executions (image_path, chain_id, status, created_at, updated_at)"
            " VALUES ('s3://b/1b.jpg', %s, 'SUCCESS', now(), now())",
            (chain,),
        )

    found = broken(app.dsn)

    (agrees,) = [e for r, e in found.items() if r.startswith("chain_executions.status agrees")]
    assert agrees == [f"id 1 (chain {crashed} is SUCCESS, its OCR row is missing)"]
    (counters,) = [e for r, e in found.items() if r.startswith("chain_executions task counters")]
    assert counters == ["id 2 (total 1, completed 1, failed -2)"]
    (unique,) = [e for r, e in found.items() if r.startswith("ocr_executions.chain_id UNIQUE")]
    assert unique == [f"id 2 (chain {chain} already holds OCR row 1)"]


def test_a_bbox_jsonb_cannot_hold_is_reported_and_set_aside(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(Shape())
    app.new_batch("b", 2)
    app.save_image("b", OldImage("s3://b/ok.jpg", boxes=[BOX]))
    # Valid json text, but a lone surrogate escape: the cast to jsonb fails.
    app.save_image("b", OldImage("s3://b/bad.jpg", boxes=[BOX, {**BOX, "bbox": ["\ud800"]}]))
    app.save_image("b", OldImage("s3://b/low.jpg", boxes=[{**BOX, "bbox": [["\udc00x"]]}]))
    app.save_image("b", OldImage("s3://b/pair.jpg", boxes=[{**BOX, "bbox": ["\U0001f600"]}]))

    found = broken(app.dsn)

    (rule,) = [r for r in found if "bbox jsonb" in r]
    assert [e.split(" (")[0] for e in found[rule]] == ["id 3", "id 4"]

    report = adopt(app.dsn, set_aside=True)

    assert report.set_aside == {"ocr_text_boxes": 2}
    kept = rows(app.dsn, "SELECT id, bbox::text AS bbox FROM ocr_text_boxes ORDER BY id")
    assert [b["id"] for b in kept] == [1, 2, 5]
    assert kept[2]["bbox"] == '["\U0001f600"]'


@pytest.mark.parametrize("path", [" ", "\t\n", "\u3000"])
def test_a_whitespace_only_image_path_is_a_dirty_row(old_app: Callable[[Shape], OldApp], path: str) -> None:
    app = old_app(Shape())
    app.new_batch("b", 2)
    app.save_image("b", OldImage("s3://b/ok.jpg"))
    app.save_image("b", OldImage(path))

    found = broken(app.dsn)

    (rule,) = found
    assert rule == "ocr_executions.image_path NOT NULL, not empty or only whitespace"
    assert [e.split(" (")[0] for e in found[rule]] == ["id 2"]


def waiting_for_a_lock(dsn: str, application_name: str) -> bool:
    (row,) = rows(
        dsn,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        f" AND application_name = '{application_name}'",
    )
    return bool(row["n"])


def test_a_writing_application_makes_adopt_give_up_without_a_deadlock(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(Shape())
    app.save_batch("b", old_images("b", 2))
    outcome: list[BaseException] = []

    def adopting() -> None:
        try:
            adopt(make_conninfo(app.dsn, application_name="adopt-under-test"), lock_timeout_s=3)
        except BaseException as exc:  # the thread's result, checked below
            outcome.append(exc)

    with psycopg.connect(app.dsn) as writer:
        # An application transaction as the old save path runs them: a box (locking its
        # table and, through the foreign key, ocr_executions), then the batch's counters.
        writer.execute(
            "INSERT INTO ocr_text_boxes (ocr_execution_id, text, confidence, bbox, created_at, updated_at)"
            " VALUES (1, 't', 0.5, '[]', now(), now())"
        )
        thread = threading.Thread(target=adopting)
        thread.start()
        while not waiting_for_a_lock(app.dsn, "adopt-under-test") and thread.is_alive():
            pass
        # Adopt holds some tables and waits for the rest; the writer now wants one adopt holds.
        writer.execute("UPDATE batch_executions SET updated_at = now() WHERE batch_id = 'b'")
        thread.join()
        writer.commit()

    assert len(outcome) == 1 and isinstance(outcome[0], AdoptError), outcome
    assert "the application's tables are in use" in str(outcome[0])
    assert rows(app.dsn, "SELECT count(*) AS n FROM ocr_text_boxes WHERE bbox::text = '[]'") == [{"n": 1}]


def test_local_times_a_dst_change_skipped_or_repeated_are_named_in_the_report(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(Shape())
    app.save_batch("b", old_images("b", 3))
    with psycopg.connect(app.dsn) as conn:
        # 02:30 did not happen in New York on 2024-03-10; 01:30 happened twice on 2024-11-03.
        conn.execute("UPDATE ocr_executions SET created_at = '2024-03-10 02:30' WHERE id IN (1, 2)")
        conn.execute("UPDATE ocr_text_boxes SET updated_at = '2024-11-03 01:30' WHERE id = 4")
        conn.execute("UPDATE batch_executions SET created_at = '2024-11-03 00:59:59'")

    dry = CliRunner().invoke(
        cli, ["schema", "adopt", "--dry-run", "--timezone", "America/New_York", "--dsn", app.dsn]
    )
    report = adopt(app.dsn, timezone="America/New_York")

    assert dry.exit_code == 0, dry.output
    lines = [line for line in dry.output.splitlines() if line.startswith("-- warning: ")]
    assert len(lines) == 2
    assert "daylight-saving gap of America/New_York" in lines[0]
    assert lines[0].endswith(
        ": 2 row(s) of ocr_executions.created_at, e.g. id 1 (2024-03-10 02:30:00); id 2 (2024-03-10 02:30:00)"
    )
    assert "overlap" in lines[1] and lines[1].endswith(
        "of ocr_text_boxes.updated_at, e.g. id 4 (2024-11-03 01:30:00)"
    )
    assert [(r.table, r.count) for r in report.local_times] == [
        ("ocr_executions.created_at", 2),
        ("ocr_text_boxes.updated_at", 1),
    ]


def test_in_utc_no_local_time_is_in_doubt(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(Shape())
    app.save_batch("b", old_images("b", 2))
    with psycopg.connect(app.dsn) as conn:
        conn.execute("UPDATE ocr_executions SET created_at = '2024-03-10 02:30'")

    assert adopt(app.dsn).local_times == []

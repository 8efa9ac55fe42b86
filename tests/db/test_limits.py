"""The validation limits (loader.settings.Limits): one configuration, reached by every entry point.

A result beyond a limit is stored as failed with a reason naming the limit and its
variable, whichever way it came in: save_batch's ``limits=``, the environment at
the call, loader.save.pipeline.judge, the chunks of ``loader load``, a Celery worker's
settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.celery_harness import Worker
from helpers.checks import stored_totals
from psycopg_pool import ConnectionPool

from loader import ConfigurationError, register_batch, save_batch
from loader.celery import submit_batch
from loader.cli import cli
from loader.lifecycle.history import rollback
from loader.save.pipeline import judge, save_judged
from loader.settings import Limits

RESULT_TIMEOUT_S = 120


def _result(path: str, boxes: int, text: str = "word", points: int = 4) -> dict[str, Any]:
    bbox = [[float(i), 0.0] for i in range(points)]
    return {
        "image_path": path,
        "text_boxes": [{"text": text, "confidence": 0.9, "bbox": bbox} for _ in range(boxes)],
    }


def _stored(db: psycopg.Connection[Any], batch_id: str) -> dict[str, tuple[str, str | None, int]]:
    rows = db.execute(
        "SELECT o.image_path, o.status::text, o.error, count(t.id)::int FROM ocr_executions o "
        "JOIN chain_executions c ON c.chain_id = o.chain_id "
        "LEFT JOIN ocr_text_boxes t ON t.ocr_execution_id = o.id "
        "WHERE c.batch_id = %s GROUP BY o.id",
        (batch_id,),
    ).fetchall()
    return {path: (status, error, boxes) for path, status, error, boxes in rows}


def test_a_result_with_more_boxes_than_the_limit_is_stored_failed_with_the_reason(
    pool: ConnectionPool, db: psycopg.Connection[Any]
) -> None:
    results = [_result("/a.jpg", 3), _result("/b.jpg", 4), _result("/c.jpg", 0)]

    report = save_batch(pool, "boxes", results, limits=Limits(max_boxes=3))

    assert (report.stored, report.failed, report.boxes) == (2, 1, 3)
    (issue,) = report.issues
    assert issue.position == 1 and issue.outcome == "failed"
    assert issue.reason == "invalid OCR result: 4 text boxes, more than the limit of 3 (LOADER_MAX_BOXES)"
    stored = _stored(db, "boxes")
    assert stored["/b.jpg"] == ("failed", issue.reason, 0)
    assert stored["/a.jpg"] == ("success", None, 3)
    assert stored_totals(db, "boxes") == (3, 2, 1, "SUCCESS")


def test_the_default_limit_is_read_from_the_environment_at_the_call(
    pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADER_MAX_BOXES", "1")
    tight = save_batch(pool, "env", [_result("/a.jpg", 2)])
    monkeypatch.delenv("LOADER_MAX_BOXES")
    default = save_batch(pool, "env2", [_result("/a2.jpg", 2)])

    assert (tight.stored, tight.failed) == (0, 1) and "LOADER_MAX_BOXES" in tight.issues[0].reason
    assert (default.stored, default.failed) == (1, 0)


def test_a_tightened_text_or_bbox_limit_fails_the_box_that_exceeds_it(pool: ConnectionPool) -> None:
    limits = Limits(max_text_chars=5, max_bbox_points=4)
    results = [
        _result("/ok.jpg", 2, text="12345", points=4),
        _result("/long.jpg", 2, text="123456"),
        _result("/pointy.jpg", 1, points=5),
    ]

    report = save_batch(pool, "tight", results, limits=limits)

    reasons = {issue.position: issue.reason for issue in report.issues}
    assert report.stored == 1 and report.failed == 2
    assert reasons[1] == (
        "invalid OCR result: text_boxes[0].text has 6 characters, more than the limit of 5 "
        "(LOADER_MAX_TEXT_CHARS)"
    )
    assert reasons[2] == (
        "invalid OCR result: text_boxes[0].bbox has 5 points, more than the limit of 4 "
        "(LOADER_MAX_BBOX_POINTS)"
    )


def test_limits_only_tighten_what_the_columns_are_sized_for() -> None:
    with pytest.raises(ConfigurationError, match="max_text_chars"):
        Limits(max_text_chars=100_001)
    with pytest.raises(ConfigurationError, match="LOADER_MAX_BOXES"):
        Limits(max_boxes=-1)


def test_judging_ahead_applies_the_limits_it_was_given(pool: ConnectionPool) -> None:
    register_batch(pool, "ahead", 2)
    judged = judge("ahead", [_result("/a.jpg", 2), _result("/b.jpg", 1)], limits=Limits(max_boxes=1))

    report = save_judged(pool, "ahead", judged)

    assert (report.stored, report.failed) == (1, 1)


def test_loader_load_judges_with_the_limits_of_its_environment(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(_result(f"/img{i}.jpg", i)) for i in range(4)) + "\n")

    result = CliRunner().invoke(
        cli,
        ["load", str(path), "--batch-id", "cli", "--chunk-size", "2", "--dsn", dsn],
        env={"LOADER_MAX_BOXES": "2"},
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    assert {path: status for path, (status, _e, _b) in _stored(db, "cli").items()} == {
        "/img0.jpg": "success",
        "/img1.jpg": "success",
        "/img2.jpg": "success",
        "/img3.jpg": "failed",
    }


def test_a_celery_worker_judges_with_the_limits_of_its_settings(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    client = start_worker(LOADER_MAX_BOXES="2").client()
    submission = submit_batch("worker", [_result("/w1.jpg", 2), _result("/w2.jpg", 3)], app=client)
    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    client.close()

    assert (report["stored"], report["failed"]) == (1, 1)
    assert "more than the limit of 2 (LOADER_MAX_BOXES)" in report["issues"][0]["reason"]
    assert _stored(db, "worker")["/w2.jpg"][0] == "failed"


def test_a_rollback_restores_a_kept_result_beyond_limits_tightened_since(
    pool: ConnectionPool, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    save_batch(pool, "kept", [_result("/k.jpg", 3)])
    save_batch(pool, "kept", [_result("/k.jpg", 1)], replace=True)
    monkeypatch.setenv("LOADER_MAX_BOXES", "2")

    done = rollback(pool, "kept")

    assert done.report is not None and done.report.replaced == 1
    assert _stored(db, "kept")["/k.jpg"] == ("success", None, 3)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_batch_judged_by_limits_ends_the_same_however_it_is_cut_and_replayed(
    pool: ConnectionPool, db: psycopg.Connection[Any], cut: int
) -> None:
    def results(batch_id: str) -> list[dict[str, Any]]:
        return [_result(f"/{batch_id}/{i}.jpg", i % 4) for i in range(7)]

    limits = Limits(max_boxes=2)
    save_batch(pool, "whole", results("whole"), limits=limits)
    register_batch(pool, "cut", 7)
    cut_results = results("cut")
    for start in range(0, len(cut_results), cut):
        chunk = cut_results[start : start + cut]
        save_batch(pool, "cut", chunk, position_offset=start, limits=limits)
        save_batch(pool, "cut", chunk, position_offset=start, limits=limits)  # a redelivery

    def outcome(batch_id: str) -> list[tuple[str, str, int]]:
        stored = _stored(db, batch_id).items()
        return sorted(
            (path.removeprefix(f"/{batch_id}/"), status, boxes) for path, (status, _e, boxes) in stored
        )

    assert outcome("cut") == outcome("whole")
    assert stored_totals(db, "cut") == stored_totals(db, "whole") == (7, 6, 1, "SUCCESS")

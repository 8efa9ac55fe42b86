"""A re-OCR through the real Celery stage (a worker process, a broker) keeps the results it replaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helpers.celery_tasks as celery_tasks  # noqa: F401  (registers the opt-in tasks)
import psycopg
from helpers.celery_harness import Worker
from helpers.checks import assert_totals_match_recount, stored_totals

from loader.celery import submit_batch
from loader.datagen import make_batch
from loader.lifecycle.history import compare, image_history

# Seconds to wait for a task's result: generous for a loaded 2-core machine.
RESULT_TIMEOUT_S = 120


def test_a_re_ocr_through_the_celery_stage_keeps_the_replaced_results(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any], dsn: str
) -> None:
    worker = start_worker()
    client = worker.client()
    first = make_batch(200, prefix="celery-reocr")
    for r in first:
        r["model_version"] = "ocr-v1"
    second = [dict(r, model_version="ocr-v2") for r in first]
    for r in second[::10]:
        r.update(status="failed", error="ocr-v2 timeout", text_boxes=[])

    submit_batch("reocr", first, app=client).result.get(timeout=RESULT_TIMEOUT_S)
    report = submit_batch("reocr", second, replace=True, app=client).result.get(timeout=RESULT_TIMEOUT_S)
    client.close()

    assert report["replaced"] == 200
    assert db.execute("SELECT count(*), min(version), max(version) FROM ocr_result_history").fetchone() == (
        200,
        1,
        1,
    )
    assert stored_totals(db, "reocr") == (200, 180, 20, "SUCCESS")
    assert_totals_match_recount(db, "reocr")
    with psycopg.connect(dsn) as conn:
        versions = image_history(conn, first[0]["image_path"])
        assert [(v.version, v.model_version, v.status) for v in versions] == [
            (2, "ocr-v2", "failed"),
            (1, "ocr-v1", "success"),
        ]
        assert versions[1].boxes == first[0]["text_boxes"]
        changed = compare(conn, "reocr", from_model="ocr-v1", to_model="ocr-v2")
    assert (changed.compared, changed.success_to_failed, changed.unchanged) == (200, 20, 180)

"""Tasks of the test suite's own, imported by the test workers (``-I celery_tasks``):
two that opt into the task log, one that does not, and a pipeline stage that saves
its own results."""

from __future__ import annotations

import os
from typing import Any

from loader.celery import app, logged, save_with_worker_pool, worker_pool
from loader.datagen import make_batch


@app.task(name="tests.echo_logged", task_log=True)
def echo_logged(value: int) -> int:
    return value


@logged
@app.task(name="tests.fail_logged")
def fail_logged(message: str) -> None:
    raise ValueError(message)


@app.task(name="tests.echo_unlogged")
def echo_unlogged(value: int) -> int:
    return value


@app.task(name="tests.ocr_stage", bind=True, acks_late=True)
def ocr_stage(
    self: Any,
    batch_id: str,
    images: int,
    first: int = 0,
    batch_size: int | None = None,
    replace: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """A pipeline stage that saves its own results: images first .. first + images - 1 of a
    batch of batch_size (the docs/celery.md example); ``replace`` with another ``seed``: a re-OCR."""
    results = make_batch(first + images, prefix=batch_id, seed=seed)[first:]  # stands in for running the OCR
    report = save_with_worker_pool(
        batch_id, results, position_offset=first, total_images=batch_size or images, replace=replace
    )
    pool = worker_pool()
    return {"report": report.model_dump(mode="json"), "pid": os.getpid(), "pool": pool.name}

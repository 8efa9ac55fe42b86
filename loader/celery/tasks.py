"""The loader's task: save one batch (inline results or a file reference) exactly once."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from psycopg_pool import PoolTimeout

from loader.celery.app import app
from loader.celery.config import DEFAULT_MAX_RETRIES, TASK_NAME, CeleryConfig, config
from loader.celery.pool import worker_pool
from loader.celery.spool import load_reference
from loader.errors import ConfigurationError, is_transient
from loader.models import LoadReport
from loader.progress.metrics import record_save
from loader.save.call import save_batch
from loader.save.retry import Backoff

log = logging.getLogger("loader.celery")


def is_retryable(exc: BaseException) -> bool:
    """Whether the same task may succeed later: lost connections, serialization
    failures, deadlocks, shutdowns, an exhausted pool. Never bad data (those are
    per-image outcomes in the report) nor a misconfiguration."""
    if isinstance(exc, ConfigurationError):
        return False
    return isinstance(exc, PoolTimeout) or is_transient(exc)


def retry_delay(retries: int, cfg: CeleryConfig) -> float:
    """Seconds before retry number ``retries + 1``: the loader's one policy (loader.save.retry)."""
    return Backoff(cfg.retry_backoff_s, cfg.retry_backoff_max_s).delay(retries)


def load_payload(
    batch_id: str,
    results: Any,
    total_images: int | None = None,
    position_offset: int = 0,
    replace: bool = False,
) -> LoadReport:
    """What the task does, callable without Celery: inline results or a file reference.

    ``position_offset`` is the position in the batch of the call's first input,
    ``total_images`` the batch's total (not the chunk's).
    """
    cfg = config()
    pool = worker_pool()
    if isinstance(results, str):
        return load_reference(pool, batch_id, results, cfg, total_images, position_offset, replace)
    if isinstance(results, list):
        report = save_batch(
            pool,
            batch_id,
            results,
            total_images=total_images,
            position_offset=position_offset,
            settings=cfg.save_settings,
            limits=cfg.save_limits,
            replace=replace,
        )
        record_save(report)
        return report
    raise ConfigurationError(
        f"results must be a list of OCR results or a batch reference (file:// or s3:// URL), "
        f"got {type(results).__name__}"
    )


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # Bounded again per call from LOADER_MAX_RETRIES; this is Celery's default for others.
    max_retries=DEFAULT_MAX_RETRIES,
    task_log=True,
)
def save_ocr_batch(
    self: Task[Any, Any],
    batch_id: str,
    results: Any,
    total_images: int | None = None,
    position_offset: int = 0,
    replace: bool = False,
) -> dict[str, Any]:
    """Save one batch, or one chunk of it starting at ``position_offset``; returns the
    LoadReport as JSON. Retries transient database errors only."""
    cfg = config()
    try:
        report = load_payload(batch_id, results, total_images, position_offset, replace)
    except Exception as exc:
        if not is_retryable(exc):
            raise
        if self.request.retries >= cfg.max_retries:
            log.error(
                "batch %s: transient failure after %d retries, giving up: %s", batch_id, cfg.max_retries, exc
            )
            raise
        delay = retry_delay(self.request.retries, cfg)
        log.warning(
            "batch %s: transient failure (retry %d of %d in %.1f s): %s",
            batch_id,
            self.request.retries + 1,
            cfg.max_retries,
            delay,
            exc,
        )
        raise self.retry(exc=exc, countdown=delay, max_retries=cfg.max_retries) from exc
    return report.model_dump(mode="json")

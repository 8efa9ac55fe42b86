"""The loader in a Celery pipeline (see docs/celery.md).

- ``save_ocr_batch``: the task ``loader.save_ocr_batch(batch_id, results, total_images=None)``,
  late-acknowledged, requeued when its worker dies, retried on transient database
  errors only; returns the LoadReport as JSON.
- ``submit_batch``: send a batch, inline when small, as a JSONL file reference when large.
- ``save_with_worker_pool``: save_batch with this worker process's pool, for a
  pipeline stage that saves its own results.
- task_logs kept by signal handlers for the loader's task and tasks that opt in
  (``@app.task(task_log=True)`` or ``@logged``).

Start a worker with ``celery -A loader.celery worker --pool=prefork -Q "$LOADER_QUEUE"``.
"""

from loader.celery import metrics as _metrics  # noqa: F401  (connects the metrics signals)
from loader.celery.app import app, make_app
from loader.celery.config import TASK_NAME, CeleryConfig, config
from loader.celery.pool import save_with_worker_pool, worker_pool
from loader.celery.submit import Submission, submit_batch
from loader.celery.tasklog import CHAIN_ID_HEADER, logged, use_pool_for_publishes
from loader.celery.tasks import is_retryable, load_payload, save_ocr_batch
from loader.errors import BatchReferenceError

__all__ = [
    "CHAIN_ID_HEADER",
    "TASK_NAME",
    "BatchReferenceError",
    "CeleryConfig",
    "Submission",
    "app",
    "config",
    "is_retryable",
    "load_payload",
    "logged",
    "make_app",
    "save_ocr_batch",
    "save_with_worker_pool",
    "submit_batch",
    "use_pool_for_publishes",
    "worker_pool",
]

"""Prometheus metrics of the loader's saves (see docs/metrics.md).

Every save call is recorded from its LoadReport by ``record_save`` and nowhere
else; the Celery side (loader.celery.metrics) adds what only it knows: retries,
redeliveries, payload bytes, and the HTTP endpoint a worker is scraped on.

Under Celery's prefork pool each child process counts on its own; with
PROMETHEUS_MULTIPROC_DIR set (before the process starts: prometheus_client
chooses its storage at import) every process writes its samples to files in
that directory and a scrape sums them (``registry_for_scrape``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from loader.models import LoadReport

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_DIR_ENV):
    # The metrics below open their files in it as they are defined: a missing
    # directory would make importing the loader fail.
    os.makedirs(os.environ[MULTIPROC_DIR_ENV], exist_ok=True)

# Save call durations, in seconds: from a few images (milliseconds) to a large chunk
# (seconds; docs/benchmarks.md) and a call waiting on locks up to the lock timeout
# (90 s by default); the buckets cover that range about evenly on a log scale.
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

IMAGES = Counter(
    "loader_images",
    "Inputs of save calls by outcome (stored, failed, rejected, unchanged, replaced, refused)",
    ["outcome"],
)
REPLACED = Counter(
    "loader_images_replaced",
    "Stored results replaced in place (re-OCR, repaired failures); loader_images_total{outcome='replaced'}",
)
SAVE_DURATION = Histogram(
    "loader_save_duration_seconds", "Duration of one save call (one transaction)", buckets=_DURATION_BUCKETS
)
STATEMENTS = Counter("loader_statements", "SQL statements sent by save calls, BEGIN and COMMIT included")
SAFETY_NET = Counter(
    "loader_safety_net_activations",
    "Save calls whose data the database refused, so the safety net isolated the refused images",
)
RETRIES = Counter("loader_task_retries", "Celery task retries after a transient failure")
REDELIVERIES = Counter(
    "loader_task_redeliveries",
    "Celery task messages delivered again (their worker died, or the broker gave the message back)",
)
PAYLOAD_BYTES = Counter(
    "loader_payload_bytes",
    "Bytes of batches received: task messages (message), batch files (file), objects (s3) as stored",
    ["transport"],
)


def record_save(report: LoadReport) -> None:
    """Count one save call: call this once after every save, with its report."""
    # The outcomes that partition a call's inputs (each input counted in exactly one).
    for outcome, count in report.outcomes().items():
        IMAGES.labels(outcome).inc(count)
    REPLACED.inc(report.replaced)
    SAVE_DURATION.observe(report.duration_s)
    STATEMENTS.inc(report.statements)
    if report.attempts > 1:
        SAFETY_NET.inc()


def record_payload(transport: str, size: int) -> None:
    PAYLOAD_BYTES.labels(transport).inc(size)


def record_retry() -> None:
    RETRIES.inc()


def record_redelivery() -> None:
    REDELIVERIES.inc()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def registry_for_scrape() -> CollectorRegistry:
    """The registry one scrape reads: in multiprocess mode a new one summing every
    process's files (as prometheus_client's docs prescribe), else this process's."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The metrics endpoint as a WSGI app (any path: ``/metrics`` by convention)."""
    body = generate_latest(registry_for_scrape())
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]

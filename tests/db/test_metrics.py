"""Prometheus metrics, scraped over HTTP from a real prefork worker subprocess.

The worker runs two child processes (``--concurrency=2``) in prometheus_client's
multiprocess mode: each child writes its own sample files, and the main
process's endpoint must show their sum.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.celery_harness import (
    Broker,
    Worker,
    process_gone,
    wait_for,
    wait_task_retried,
    worker_backend,
)
from helpers.checks import hold_image_path, stored_totals
from prometheus_client.parser import text_string_to_metric_families

from loader.celery import submit_batch
from loader.datagen import make_batch

RESULT_TIMEOUT_S = 120


@pytest.fixture
def metrics_worker(broker: Broker, dsn: str, tmp_path: Path) -> Iterator[tuple[Worker, str, Path]]:
    """A --concurrency=2 worker serving metrics on a free loopback port: (worker, URL, multiproc dir)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"left by an earlier run")  # removed at start
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "LOADER_METRICS_PORT": str(port),
        # Retries come after 0.1-0.2 s: the test need not wait for backoff.
        "LOADER_RETRY_BACKOFF": "0.2",
    }
    worker = Worker(broker, dsn, tmp_path, env, concurrency=2)
    try:
        yield worker.start(), f"http://127.0.0.1:{port}/metrics", multiproc
    finally:
        worker.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def images(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return samples.get(("loader_images_total", (("outcome", outcome),)), 0.0)


def _pids(directory: Path, kind: str) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob(f"{kind}_*.db")}


def test_scraped_worker_sums_both_children_and_counts_retries_and_redeliveries(
    metrics_worker: tuple[Worker, str, Path], dsn: str, db: psycopg.Connection[Any]
) -> None:
    worker, url, multiproc = metrics_worker
    client = worker.client()
    assert not (multiproc / "counter_999999.db").exists()
    assert images(scrape(url), "stored") == 0

    held = make_batch(300, prefix="metrics-held")
    blocker = hold_image_path(dsn, held[150]["image_path"])
    try:
        slow = submit_batch("metrics-held", held, app=client)
        backend, first_child = wait_for(
            "the held batch's merge to wait on the lock", lambda: worker_backend(db)
        )
        # The other child takes the next batch while the first is blocked.
        quick = submit_batch(
            "metrics-quick", [*make_batch(100, prefix="metrics-quick"), "{not json"], app=client
        )
        quick_report = quick.result.get(timeout=RESULT_TIMEOUT_S)
        # A transient failure: the held batch is retried (and blocks again on the lock) ...
        db.execute("SELECT pg_terminate_backend(%s)", [backend])
        wait_task_retried(db, slow.result.id)
        _, retrying_child = wait_for(
            "the retry's merge to wait on the lock", lambda: worker_backend(db, exclude_worker=None)
        )
        # ... and the child running the retry dies: the message is delivered again.
        os.kill(retrying_child, signal.SIGKILL)
        wait_for("the killed child to be gone", lambda: process_gone(retrying_child))
        wait_for(
            "the redelivered task to run in another child",
            lambda: worker_backend(db, exclude_worker=retrying_child),
        )
    finally:
        blocker.rollback()
        blocker.close()
    slow_report = slow.result.get(timeout=RESULT_TIMEOUT_S)

    assert (quick_report["stored"], quick_report["rejected"]) == (100, 1)
    assert slow_report["stored"] == 300
    assert stored_totals(db, "metrics-held")[1] == 300
    samples = scrape(url)
    assert images(samples, "stored") == 400
    assert images(samples, "rejected") == 1
    assert images(samples, "failed") == images(samples, "unchanged") == 0
    assert samples[("loader_images_replaced_total", ())] == 0
    # Two committed save calls; the failed attempts count no duration, no statements.
    assert samples[("loader_save_duration_seconds_count", ())] == 2
    assert samples[("loader_statements_total", ())] == quick_report["statements"] + slow_report["statements"]
    assert samples[("loader_task_retries_total", ())] == 1
    assert samples[("loader_task_redeliveries_total", ())] == 1
    assert samples[("loader_payload_bytes_total", (("transport", "message"),))] > 100 * 300
    # The sums come from more than one process's files: the two children (and
    # the killed one's retry), not the main process alone.
    saving = _pids(multiproc, "histogram")
    assert len(saving) >= 2 and first_child in _pids(multiproc, "counter")
    assert scrape(url) == samples  # each scrape reads the files anew: nothing counted twice
    client.close()

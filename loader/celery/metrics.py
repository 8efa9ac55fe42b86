"""The worker's metrics: Celery signals feeding loader.progress.metrics, and the scrape endpoint.

With LOADER_METRICS_PORT set, the worker's main process serves the metrics over
HTTP on LOADER_METRICS_HOST (127.0.0.1 by default: metrics name hosts and
queues, so exposing them is the operator's choice). Under the prefork pool set
PROMETHEUS_MULTIPROC_DIR to a directory of this worker's own: each child writes
its samples there and every scrape sums them. prometheus_client requires a
clean directory per run, so the worker removes the earlier runs' files when it
starts; a child that exits is marked dead (its live gauges dropped; its
counters stay in the sums, as they must).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery.signals import task_received, task_retry, worker_init, worker_process_shutdown
from prometheus_client import multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

from loader.celery.config import TASK_NAME, config
from loader.progress.metrics import (
    multiprocess_dir,
    record_payload,
    record_redelivery,
    record_retry,
    wsgi_app,
)

log = logging.getLogger("loader.celery")


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape (every 15 s, forever)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_metrics(port: int, host: str = "127.0.0.1") -> ThreadingWSGIServer:
    """Serve the metrics on ``host:port`` from a daemon thread; returns the server."""
    server = make_server(host, port, wsgi_app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="loader-metrics", daemon=True).start()
    return server


def _clean_multiprocess_dir(directory: str) -> None:
    """Remove the files of earlier runs: every process's but this one's. At
    worker_init no child exists yet, and this process opened its own files when
    it imported loader.progress.metrics (removing those would hide its samples)."""
    mine = f"_{os.getpid()}.db"
    for stale in Path(directory).glob("*.db"):
        if not stale.name.endswith(mine):
            stale.unlink(missing_ok=True)


@worker_init.connect
def _start_endpoint(**_: Any) -> None:
    cfg = config()
    if cfg.metrics_port is None:
        return
    directory = multiprocess_dir()
    if directory is None:
        log.warning(
            "metrics: PROMETHEUS_MULTIPROC_DIR is not set, so the endpoint shows only the main "
            "process; under the prefork pool the children's saves are missing"
        )
    else:
        _clean_multiprocess_dir(directory)
    server = serve_metrics(cfg.metrics_port, cfg.metrics_host)
    log.info("metrics: serving on http://%s:%d/metrics", *server.server_address[:2])


@task_received.connect
def _count_received(request: Any = None, **_: Any) -> None:
    # In the main process, where the message is already decoded: cheap.
    if request is None or request.name != TASK_NAME:
        return
    if request.delivery_info.get("redelivered"):
        record_redelivery()
    body = request.body
    record_payload("message", len(body) if isinstance(body, bytes | str) else 0)


@task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == TASK_NAME:
        record_retry()


@worker_process_shutdown.connect
def _mark_dead(**_: Any) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

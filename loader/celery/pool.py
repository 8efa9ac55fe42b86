"""One connection pool per worker process: created after fork, closed at shutdown.

A pool's sockets and background threads do not survive fork(), so the pool is
made in ``worker_process_init`` (in each prefork child), or lazily on first use in
a process that never forks (``--pool=solo``/``threads``, or a pipeline stage
calling ``save_with_worker_pool``). A pool inherited from a parent is dropped,
never used or closed: closing it would close the parent's connections too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from loader.celery.config import CeleryConfig, config
from loader.connection import make_pool
from loader.errors import LoaderError, redact_dsn
from loader.models import LoadReport
from loader.progress.metrics import record_save
from loader.save.call import save_batch
from loader.save.inputs import Input
from loader.settings import Limits, Settings

log = logging.getLogger("loader.celery")

# Seconds to wait at shutdown for connections in use to come back before closing.
_CLOSE_TIMEOUT_S = 5.0


class _ProcessPool:
    """The pool of this process, and which process made it (forks inherit the object)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ConnectionPool | None = None
        self.owner_pid: int | None = None

    def usable(self) -> ConnectionPool | None:
        pool = self.pool
        if pool is not None and self.owner_pid == os.getpid() and not pool.closed:
            return pool
        return None


_this = _ProcessPool()


def worker_conninfo(dsn: str, pid: int) -> str:
    """The DSN with an application_name naming this process, so that operators (and
    tests) can tell in pg_stat_activity which worker process holds which backend."""
    base = conninfo_to_dict(dsn).get("application_name") or "loader-celery"
    return make_conninfo(dsn, application_name=f"{base} pid={pid}")


def current_pool() -> ConnectionPool | None:
    """This process's pool if it has one open, without creating it."""
    with _this.lock:
        return _this.usable()


def open_pool(cfg: CeleryConfig | None = None) -> ConnectionPool:
    """This process's pool, created and opened on first call (idempotent)."""
    cfg = cfg or config()
    pid = os.getpid()
    with _this.lock:
        existing = _this.usable()
        if existing is not None:
            return existing
        dsn = cfg.require_dsn()
        pool = make_pool(
            worker_conninfo(dsn, pid),
            min_size=cfg.pool_min,
            max_size=cfg.pool_max,
            timeout=cfg.pool_timeout_s,
            name=f"loader-celery-{pid}",
        )
        # Not waiting: a database that is down at worker start must not crash the
        # process in a loop; tasks then get PoolTimeout, which is retried.
        pool.open(wait=False)
        _this.pool, _this.owner_pid = pool, pid
    log.info(
        "process %d: connection pool for %s (min %d, max %d connections)",
        pid,
        redact_dsn(dsn),
        cfg.pool_min,
        cfg.pool_max,
    )
    return pool


def close_pool() -> None:
    """Close this process's pool, if it opened one."""
    with _this.lock:
        pool, owner = _this.pool, _this.owner_pid
        _this.pool = _this.owner_pid = None
    if pool is not None and owner == os.getpid() and not pool.closed:
        pool.close(timeout=_CLOSE_TIMEOUT_S)
        log.info("process %d: connection pool closed", owner)


def worker_pool() -> ConnectionPool:
    """The pool of the current worker process (opened on first use)."""
    return current_pool() or open_pool()


def save_with_worker_pool(
    batch_id: str,
    results: Iterable[Input],
    *,
    total_images: int | None = None,
    position_offset: int = 0,
    settings: Settings | None = None,
    limits: Limits | None = None,
    repair: bool = False,
    replace: bool = False,
) -> LoadReport:
    """``save_batch`` with this worker process's pool, counted in the worker's metrics.

    For a pipeline stage that saves its own results inside its own task, rather
    than sending them to ``loader.save_ocr_batch``. ``settings`` default to the
    worker's configuration (LOADER_WORK_MEM, LOADER_STATEMENT_TIMEOUT,
    LOADER_LOCK_TIMEOUT), ``limits`` to its LOADER_MAX_BOXES, ...; ``repair`` and
    ``replace`` are save_batch's. Each call
    is recorded like the loader's own task's (loader.progress.metrics.record_save), so the
    worker's endpoint counts it. Raises what save_batch raises.
    """
    report = save_batch(
        worker_pool(),
        batch_id,
        results,
        total_images=total_images,
        position_offset=position_offset,
        settings=settings or config().save_settings,
        limits=limits or config().save_limits,
        repair=repair,
        replace=replace,
    )
    record_save(report)
    return report


@worker_process_init.connect
def _open_after_fork(**_: Any) -> None:
    try:
        open_pool()
    except LoaderError as exc:
        # Tasks will raise it again, as a failure naming the missing setting.
        log.error("process %d: no connection pool: %s", os.getpid(), exc)


@worker_process_shutdown.connect
def _close_at_process_shutdown(**_: Any) -> None:
    close_pool()


@worker_shutdown.connect
def _close_at_worker_shutdown(**_: Any) -> None:
    # solo/threads pools run tasks in the main process, which gets no
    # worker_process_shutdown.
    close_pool()

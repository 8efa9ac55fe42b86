"""task_logs kept by Celery signal handlers: one row per task id, never failing the task.

Which tasks: the loader's own task, and any task that opts in with the
``task_log = True`` attribute (``@app.task(task_log=True)``, or the ``logged``
decorator). A task belongs to a chain when its message carries a ``chain_id``
header (``apply_async(headers={"chain_id": ...})``) naming an existing row of
chain_executions; the log never creates chains and stores NULL for unknown ones.

States: PENDING (at publish, only where the publishing process has a pool, see
``use_pool_for_publishes``), STARTED, RETRY (retries counted, error text),
SUCCESS, FAILURE (error text), REVOKED.

Every write is one short transaction bounded by LOADER_TASKLOG_TIMEOUT_MS (statement,
lock and pool waits); any failure is logged as a warning and swallowed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from celery import current_app
from celery.exceptions import Retry
from celery.signals import (
    before_task_publish,
    task_failure,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
)
from psycopg_pool import ConnectionPool

from loader import queries
from loader.celery.app import app as loader_app
from loader.celery.config import TASK_NAME, config
from loader.celery.pool import current_pool, worker_conninfo
from loader.errors import ConfigurationError, redact_dsn
from loader.models import ProcessStatus
from loader.save.validate import storable

log = logging.getLogger("loader.celery.tasklog")

#: Task attribute that opts a task into the task log.
TASK_LOG_ATTR = "task_log"
#: Message header naming the chain (chain_executions.chain_id) a task belongs to.
CHAIN_ID_HEADER = "chain_id"
#: Tasks logged whether or not the publishing process has them registered.
ALWAYS_LOGGED = frozenset({TASK_NAME})

_T = TypeVar("_T")
_Handler = TypeVar("_Handler", bound=Callable[..., None])

# The pool a non-worker process lent for PENDING rows (one slot, so no global rebinding).
_publisher_pool: list[ConnectionPool] = []


def logged(task: _T) -> _T:
    """Opt a task into the task log: ``@logged`` above ``@app.task``."""
    setattr(task, TASK_LOG_ATTR, True)
    return task


def use_pool_for_publishes(pool: ConnectionPool | None) -> None:
    """Let this (non-worker) process record PENDING rows when it publishes logged tasks.

    Workers use their own pool; a publisher without one writes nothing at
    publish time, and the row starts at STARTED.
    """
    _publisher_pool[:] = [pool] if pool is not None else []


def _is_logged(task: object) -> bool:
    return bool(getattr(task, TASK_LOG_ATTR, False)) or getattr(task, "name", None) in ALWAYS_LOGGED


def _registered_as_logged(name: str) -> bool:
    """Whether a task this process knows by ``name`` (in its current app or the
    loader's) opts into the log; a publisher may not have the task at all."""
    return any(_is_logged(registry.tasks.get(name)) for registry in (current_app, loader_app))


def _chain_id(source: object) -> str | None:
    if isinstance(source, Mapping):
        value = source.get(CHAIN_ID_HEADER)
    else:
        value = getattr(source, CHAIN_ID_HEADER, None)
        if value is None:
            headers = getattr(source, "headers", None)
            value = headers.get(CHAIN_ID_HEADER) if isinstance(headers, Mapping) else None
    return value if isinstance(value, str) and value else None


def _error_text(exc: object) -> str:
    if isinstance(exc, Retry) and exc.exc is not None:
        exc = exc.exc
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return storable(redact_dsn(text))


@contextmanager
def _connection(timeout_s: float) -> Iterator[psycopg.Connection[Any]]:
    pool = current_pool() or next(iter(_publisher_pool), None)
    if pool is not None:
        with pool.connection(timeout=timeout_s) as conn:
            yield conn
        return
    # The worker's main process (revocations, lost children) has no pool: these
    # events are rare, so a short-lived connection is cheaper than keeping one.
    dsn = config().dsn
    if not dsn:
        raise ConfigurationError("no connection pool in this process and LOADER_DSN is not set")
    with psycopg.connect(
        worker_conninfo(dsn, os.getpid()), connect_timeout=max(1, math.ceil(timeout_s))
    ) as conn:
        yield conn


def record(
    task_id: str | None,
    status: ProcessStatus,
    *,
    task_name: str | None = None,
    retries: int = 0,
    error: str | None = None,
    chain_id: str | None = None,
    pool_only: bool = False,
) -> bool:
    """Write one task-log entry. Never raises; returns whether it was written."""
    if not task_id:
        return False
    try:
        if pool_only and current_pool() is None and not _publisher_pool:
            return False
        timeout_ms = config().tasklog_timeout_ms
        with _connection(timeout_ms / 1000) as conn, conn.transaction():
            conn.execute(queries.get("tasklog_timeouts"), {"timeout": f"{timeout_ms}ms"}, prepare=False)
            conn.execute(
                queries.get("tasklog_upsert"),
                {
                    "task_id": task_id,
                    "task_name": task_name,
                    "chain_id": chain_id,
                    "status": status.value,
                    "retries": max(0, retries),
                    "error": error,
                },
                prepare=False,
            )
        return True
    except Exception as exc:  # the log is advisory: nothing here may fail the task
        log.warning("task log: %s of task %s not recorded: %s", status.value, task_id, redact_dsn(str(exc)))
        return False


def _guarded(handler: _Handler) -> _Handler:
    """A signal handler that logs instead of raising, whatever goes wrong in it."""

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception as exc:  # the log is advisory: nothing here may fail the task
            log.warning("task log: handler %s failed: %s", handler.__name__, redact_dsn(str(exc)))

    return run  # type: ignore[return-value]


def _retries(request: object) -> int:
    value = getattr(request, "retries", 0)
    return value if isinstance(value, int) else 0


@before_task_publish.connect
@_guarded
def _on_publish(sender: str | None = None, headers: Mapping[str, Any] | None = None, **_: Any) -> None:
    if current_pool() is None and not _publisher_pool:
        return  # the common publisher: nothing to write with, so no lookups either
    headers = headers or {}
    name = str(sender or headers.get("task"))
    if name not in ALWAYS_LOGGED and not _registered_as_logged(name):
        return
    retries = headers.get("retries")
    record(
        headers.get("id"),
        ProcessStatus.PENDING,
        task_name=name,
        retries=retries if isinstance(retries, int) else 0,
        chain_id=_chain_id(headers),
        pool_only=True,
    )


@task_prerun.connect
@_guarded
def _on_prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    if _is_logged(sender):
        request = sender.request
        record(
            task_id or request.id,
            ProcessStatus.STARTED,
            task_name=sender.name,
            retries=_retries(request),
            chain_id=_chain_id(request),
        )


@task_retry.connect
@_guarded
def _on_retry(sender: Any = None, request: Any = None, reason: object = None, **_: Any) -> None:
    if _is_logged(sender) and request is not None:
        record(
            request.id,
            ProcessStatus.RETRY,
            task_name=sender.name,
            # request.retries counts the retries before this attempt; this is one more.
            retries=_retries(request) + 1,
            error=_error_text(reason),
            chain_id=_chain_id(request),
        )


@task_success.connect
@_guarded
def _on_success(sender: Any = None, **_: Any) -> None:
    if _is_logged(sender):
        request = sender.request
        record(
            request.id,
            ProcessStatus.SUCCESS,
            task_name=sender.name,
            retries=_retries(request),
            chain_id=_chain_id(request),
        )


@task_failure.connect
@_guarded
def _on_failure(sender: Any = None, task_id: str | None = None, exception: object = None, **_: Any) -> None:
    if _is_logged(sender):
        request = sender.request
        record(
            task_id or request.id,
            ProcessStatus.FAILURE,
            task_name=sender.name,
            retries=_retries(request),
            error=_error_text(exception),
            chain_id=_chain_id(request),
        )


@task_revoked.connect
@_guarded
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _is_logged(sender) and request is not None:
        record(
            request.id,
            ProcessStatus.REVOKED,
            task_name=getattr(sender, "name", None),
            retries=_retries(request),
            chain_id=_chain_id(request),
        )

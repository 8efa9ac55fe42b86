"""A batch's progress: its stored totals, followed live, recounted."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from loader import queries
from loader.connection import Connectable, connection
from loader.dsn import check_dsn
from loader.errors import BatchNotFoundError, quoted, translating
from loader.models import BatchProgress, ProcessStatus

__all__ = ["BatchNotFoundError", "follow_progress", "get_progress", "recount_batch"]


def get_progress(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """The batch's totals, status and percentage, as last committed."""
    with (
        connection(pool_or_conn) as conn,
        translating(f"reading batch {quoted(batch_id)}"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(BatchProgress)) as cur,
    ):
        found = cur.execute(queries.get("batch_progress"), {"batch_id": batch_id}).fetchone()
    if found is None:
        raise BatchNotFoundError(
            f"no batch {quoted(batch_id)} in this database; check the id, "
            "or list batches with `loader status`"
        )
    return found


#: The channel every merge that changes a batch's totals notifies, on commit.
CHANNEL = "loader_progress"

_FINISHED = frozenset({ProcessStatus.SUCCESS, ProcessStatus.FAILURE})


def event_progress(payload: str) -> BatchProgress:
    """A loader_progress payload as BatchProgress (without timestamps)."""
    data = json.loads(payload)
    return BatchProgress(
        batch_id=data["batch_id"],
        status=ProcessStatus(data["status"]),
        total_images=data["total"],
        completed_images=data["completed"],
        failed_images=data["failed"],
    )


def _state(p: BatchProgress) -> tuple[object, ...]:
    return (p.status, p.total_images, p.completed_images, p.failed_images)


def follow_progress(
    conninfo: str, batch_id: str, *, idle_timeout: float | None = None
) -> Iterator[BatchProgress]:
    """The batch's progress now, then at every commit that changes it, until it finishes.

    Listens on its own autocommit connection (``LISTEN loader_progress``)
    before it reads the current state, so a change committed meanwhile is not
    missed; a state equal to the last one yielded is skipped. Ends after
    yielding a SUCCESS or FAILURE state (at once for a finished batch). Raises
    BatchNotFoundError for an unknown batch and TimeoutError when
    ``idle_timeout`` seconds pass without a change.
    """
    check_dsn(conninfo)
    lost = (
        "following stopped; the batch and its load are not affected: "
        f"follow it again with `loader status {shlex.quote(batch_id)} --follow`"
    )
    with (
        translating(f"following batch {quoted(batch_id)}", lost),
        psycopg.connect(conninfo, autocommit=True) as conn,
    ):
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        last = get_progress(conn, batch_id)
        yield last
        while last.status not in _FINISHED:
            events = list(conn.notifies(timeout=idle_timeout, stop_after=1))
            if not events:
                raise TimeoutError(f"batch {quoted(batch_id)}: no progress for {idle_timeout} s")
            progress = event_progress(events[0].payload)
            if progress.batch_id != batch_id or _state(progress) == _state(last):
                continue
            last = progress
            yield progress


def recount_batch(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """Recount a batch's totals from its stored rows, under its lock, and store them.

    The merge keeps every batch's totals exact from each call's changes and never
    recounts. Batches written by something else (the application's old save
    path, rows added or deleted by hand) need this once; it changes nothing on a
    batch the loader kept. Announced on loader_progress like a merge.
    """
    with connection(pool_or_conn) as conn:
        with translating(f"recounting batch {quoted(batch_id)}"), conn.transaction():
            conn.execute(queries.get("batch_lock"), {"batch_id": batch_id})
            conn.execute(queries.get("recount_batch"), {"batch_id": batch_id})
        return get_progress(conn, batch_id)

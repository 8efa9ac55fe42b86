"""The end of a batch's life: deleting it with everything under it, and retention.

Retention lists candidates without locks, then checks each one again in the
transaction that deletes it, under the batch's lock (the one every save takes)
and from its rows (loader/sql/lifecycle.sql, retention_verdict): a batch is
deleted only when a recount of its rows says it is finished and neither it nor
any row under it changed since the cut-off. Anything else is skipped, never
retried in the same pass: no batch, however odd its id, can stop a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import class_row

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import (
    BatchNotFoundError,
    ConfigurationError,
    TransientDatabaseError,
    quoted,
    translating,
)

log = logging.getLogger("loader")

# Batches a retention pass lists per query: each is deleted in its own
# transaction, so a long pass never holds one big set of locks.
RETENTION_PAGE = 100

#: What a role without DELETE on the loader's tables is told (loader_writer, the workers').
NEEDS_ADMIN = (
    "deleting batches needs the loader_admin role (GRANT loader_admin TO <login role>); "
    "the workers' loader_writer may not delete; nothing was deleted"
)

# Failures of one batch's delete that mean "someone is writing it": deadlock
# with a writer that takes no batch lock, serialization failure, lock_timeout.
_BUSY_SQLSTATES = frozenset({"40P01", "40001", "55P03"})

# The keyset before every (updated_at, id) a batch can have.
_FIRST = (datetime.min.replace(tzinfo=UTC), 0)


class Deleted(NamedTuple):
    """What delete_batch removed: one batch and the rows under it."""

    batch_id: str
    chains: int
    images: int
    boxes: int
    task_logs: int
    rejects: int


class Skipped(NamedTuple):
    """A retention candidate left in place: why, as checked under its lock from its rows."""

    batch_id: str
    reason: str


class _Counts(NamedTuple):
    batches: int
    chains: int
    images: int
    boxes: int
    task_logs: int
    rejects: int


class FinishedBatch(NamedTuple):
    id: int
    batch_id: str
    status: str
    total_images: int
    updated_at: datetime


class _Verdict(NamedTuple):
    batch_id: str
    status: str
    stale: bool
    changed_at: datetime


def _delete_locked(conn: psycopg.Connection[Any], batch_id: str) -> Deleted | None:
    """Delete the batch in the caller's transaction, after batch_lock; None when there is none."""
    cur = conn.cursor(row_factory=class_row(_Counts))
    counts = cur.execute(queries.get("delete_batch"), {"batch_id": batch_id}).fetchone()
    if counts is None or counts.batches == 0:
        return None
    return Deleted(batch_id, counts.chains, counts.images, counts.boxes, counts.task_logs, counts.rejects)


def delete_batch(pool_or_conn: Connectable, batch_id: str) -> Deleted:
    """Delete a batch and everything under it, in one transaction, and nothing else.

    Chains, OCR rows, boxes, task logs of its chains, rejects and its call
    ledger go with it; its images can then be loaded again (into any batch).
    Waits for a call of the batch in flight (the batch's lock). Needs the
    loader_admin role (DELETE), which the workers' loader_writer lacks.
    Raises BatchNotFoundError when there is no such batch. Any id a batch can
    hold is accepted (one with control characters, written by the application
    or kept by `schema adopt`, can be deleted too; messages escape it).
    """
    if not isinstance(batch_id, str) or not batch_id:
        raise ConfigurationError(f"batch_id must be a non-empty string, got {batch_id!r}")
    doing = f"deleting batch {quoted(batch_id)}"
    with connection(pool_or_conn) as conn, translating(doing, denied=NEEDS_ADMIN), conn.transaction():
        conn.execute(queries.get("batch_lock"), {"batch_id": batch_id})
        deleted = _delete_locked(conn, batch_id)
    if deleted is None:
        raise BatchNotFoundError(
            f"no batch {quoted(batch_id)} in this database; nothing was deleted", batch_id
        )
    return deleted


def _check_before(before: datetime) -> None:
    if not isinstance(before, datetime) or before.tzinfo is None:
        raise ConfigurationError("before must be an aware datetime (with a time zone)")


def finished_batches(
    pool_or_conn: Connectable,
    before: datetime,
    limit: int = RETENTION_PAGE,
    *,
    after: tuple[datetime, int] | None = None,
) -> list[FinishedBatch]:
    """Candidates for retention: batches finished (by a recount for a stale one) whose row
    last changed before ``before``, oldest first, after the keyset ``after`` (updated_at, id).

    A list, not a verdict: delete_finished checks each one again under its lock.
    """
    _check_before(before)
    after_at, after_id = after or _FIRST
    params = {"before": before, "limit": limit, "after_updated_at": after_at, "after_id": after_id}
    with connection(pool_or_conn) as conn, translating("listing finished batches"), conn.transaction():
        cur = conn.cursor(row_factory=class_row(FinishedBatch))
        return cur.execute(queries.get("finished_batches_before"), params).fetchall()


def _verdict(verdict: _Verdict | None, before: datetime) -> str | None:
    """Why a locked candidate must stay, or None to delete it."""
    if verdict is None:
        return "deleted by someone else meanwhile"
    if verdict.status not in ("SUCCESS", "FAILURE"):
        return f"its rows say {verdict.status}, not finished"
    if verdict.changed_at >= before:
        return f"changed at {verdict.changed_at.isoformat()}, after the cut-off"
    return None


def _retire(pool_or_conn: Connectable, batch_id: str, before: datetime) -> Deleted | Skipped:
    """Judge one candidate under its lock and, when its rows say finished and old, delete it.

    A batch being written meanwhile by a writer that takes no batch lock (the
    application) may deadlock with the delete; that batch is skipped (it is
    changing, so not due), and the pass goes on.
    """
    try:
        return _retire_locked(pool_or_conn, batch_id, before)
    except TransientDatabaseError as exc:
        state = getattr(exc.__cause__, "sqlstate", None)
        if state not in _BUSY_SQLSTATES:
            raise
        return Skipped(batch_id, f"being written meanwhile (SQLSTATE {state}); it is due again next pass")


def _retire_locked(pool_or_conn: Connectable, batch_id: str, before: datetime) -> Deleted | Skipped:
    doing = f"deleting batch {quoted(batch_id)}"
    with connection(pool_or_conn) as conn, translating(doing, denied=NEEDS_ADMIN), conn.transaction():
        conn.execute(queries.get("batch_lock"), {"batch_id": batch_id})
        cur = conn.cursor(row_factory=class_row(_Verdict))
        found = cur.execute(queries.get("retention_verdict"), {"batch_id": batch_id}).fetchone()
        reason = _verdict(found, before)
        deleted = _delete_locked(conn, batch_id) if reason is None else None
    if deleted is None:
        return Skipped(batch_id, reason or "deleted by someone else meanwhile")
    return deleted


def iter_delete_finished(pool_or_conn: Connectable, before: datetime) -> Iterator[Deleted | Skipped]:
    """Retention, step by step: each candidate checked and deleted (or skipped) as it is reached.

    A generator: nothing happens until it is iterated, and stopping early stops
    the pass (every batch either whole or gone). delete_finished runs it all.
    """
    _check_before(before)
    after: tuple[datetime, int] | None = None
    while page := finished_batches(pool_or_conn, before, after=after):
        for batch in page:
            yield _retire(pool_or_conn, batch.batch_id, before)
        after = (page[-1].updated_at, page[-1].id)


def delete_finished(
    pool_or_conn: Connectable,
    before: datetime,
    *,
    progress: Callable[[Deleted | Skipped], None] | None = None,
) -> list[Deleted]:
    """Retention: delete every batch finished before ``before``, now, oldest first.

    Deletes when called (not lazily) and returns what it deleted; ``progress``
    is called after each batch deleted or skipped. Each candidate is checked
    again under the batch's lock, in its delete's transaction, from its rows:
    one that a recount does not call finished, or that (or any row under it)
    changed at or after ``before``, is skipped. One transaction per batch:
    stopping half-way (Ctrl-C, a lost connection) leaves every batch either
    whole or gone. For a pass step by step, iterate iter_delete_finished.
    """
    deleted: list[Deleted] = []
    for outcome in iter_delete_finished(pool_or_conn, before):
        if isinstance(outcome, Deleted):
            deleted.append(outcome)
        else:
            log.info("retention skipped batch %s: %s", quoted(outcome.batch_id), outcome.reason)
        if progress is not None:
            progress(outcome)
    return deleted

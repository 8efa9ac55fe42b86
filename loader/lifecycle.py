"""The end of a batch's life: deleting it with everything under it, and retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from psycopg.rows import class_row

from loader import queries
from loader.batch_ids import check_batch_id
from loader.connection import Connectable, connection
from loader.errors import BatchNotFoundError, ConfigurationError, quoted, translating

# Batches a retention pass lists per query: each is deleted in its own
# transaction, so a long pass never holds one big set of locks.
RETENTION_PAGE = 100


class Deleted(NamedTuple):
    """What delete_batch removed: one batch and the rows under it."""

    batch_id: str
    chains: int
    images: int
    boxes: int
    task_logs: int
    rejects: int


class _Counts(NamedTuple):
    batches: int
    chains: int
    images: int
    boxes: int
    task_logs: int
    rejects: int


class FinishedBatch(NamedTuple):
    batch_id: str
    status: str
    total_images: int
    updated_at: datetime


def delete_batch(pool_or_conn: Connectable, batch_id: str) -> Deleted:
    """Delete a batch and everything under it, in one transaction, and nothing else.

    Chains, OCR rows, boxes, task logs of its chains, rejects and its call
    ledger go with it; its images can then be loaded again (into any batch).
    Waits for a call of the batch in flight (the batch's lock). Needs the
    loader_admin role (DELETE), which the workers' loader_writer lacks.
    Raises BatchNotFoundError when there is no such batch.
    """
    batch_id = check_batch_id(batch_id)
    doing = f"deleting batch {quoted(batch_id)}"
    with connection(pool_or_conn) as conn, translating(doing), conn.transaction():
        conn.execute(queries.get("batch_lock"), {"batch_id": batch_id})
        cur = conn.cursor(row_factory=class_row(_Counts))
        counts = cur.execute(queries.get("delete_batch"), {"batch_id": batch_id}).fetchone()
    if counts is None or counts.batches == 0:
        raise BatchNotFoundError(
            f"no batch {quoted(batch_id)} in this database; nothing was deleted", batch_id
        )
    return Deleted(batch_id, counts.chains, counts.images, counts.boxes, counts.task_logs, counts.rejects)


def finished_batches(
    pool_or_conn: Connectable, before: datetime, limit: int = RETENTION_PAGE
) -> list[FinishedBatch]:
    """Batches that finished (SUCCESS or FAILURE) and last changed before ``before``, oldest first."""
    if before.tzinfo is None:
        raise ConfigurationError("before must be an aware datetime (with a time zone)")
    with connection(pool_or_conn) as conn, translating("listing finished batches"), conn.transaction():
        cur = conn.cursor(row_factory=class_row(FinishedBatch))
        return cur.execute(
            queries.get("finished_batches_before"), {"before": before, "limit": limit}
        ).fetchall()


def delete_finished(pool_or_conn: Connectable, before: datetime) -> Iterator[Deleted]:
    """Retention: delete every batch finished before ``before``, batch by batch, yielding each.

    One transaction per batch: stopping half-way (Ctrl-C, a lost connection)
    leaves every batch either whole or gone.
    """
    while page := finished_batches(pool_or_conn, before):
        for batch in page:
            try:
                yield delete_batch(pool_or_conn, batch.batch_id)
            except BatchNotFoundError:
                continue  # deleted by someone else meanwhile

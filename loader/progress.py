"""get_progress: a batch's stored totals."""

from __future__ import annotations

import psycopg

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import LoaderError, translate
from loader.models import BatchProgress, ProcessStatus


class BatchNotFoundError(LoaderError):
    """No batch with that batch_id exists."""


def get_progress(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """The batch's totals, status and percentage, as last committed."""
    with connection(pool_or_conn) as conn:
        try:
            with conn.transaction():
                row = conn.execute(queries.get("batch_progress"), {"batch_id": batch_id}).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, f"reading batch {batch_id!r}") from exc
    if row is None:
        raise BatchNotFoundError(
            f"no batch {batch_id!r} in this database; check the id, or list batches with `loader status`"
        )
    return BatchProgress(
        batch_id=row[0],
        status=ProcessStatus(row[1]),
        total_images=row[2],
        completed_images=row[3],
        failed_images=row[4],
        created_at=row[5],
        updated_at=row[6],
    )

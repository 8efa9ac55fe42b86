"""get_progress: a batch's stored totals."""

from __future__ import annotations

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import BatchNotFoundError, translating
from loader.models import BatchProgress, ProcessStatus

__all__ = ["BatchNotFoundError", "get_progress"]


def get_progress(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """The batch's totals, status and percentage, as last committed."""
    with connection(pool_or_conn) as conn, translating(f"reading batch {batch_id!r}"), conn.transaction():
        row = conn.execute(queries.get("batch_progress"), {"batch_id": batch_id}).fetchone()
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

"""The save path's result rows, read by name (psycopg's class_row), and the progress they carry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import RowMaker, class_row

from loader import steps
from loader.models import BatchProgress, Outcome, ProcessStatus


class LockRow(NamedTuple):
    """What lock_batch says about the batch before a call writes anything.

    Read after the batch's lock was granted (schema.sql, loader_locked_call), so
    it is the batch as the call's merge will find it; for a replay, the figures
    are get_progress's (a stale batch recounted), so its report says the same.
    """

    schema_version: int | None
    created: bool
    total_images: int | None
    declared_images: int | None
    completed_images: int | None
    failed_images: int | None
    status: str | None
    created_at: datetime | None
    updated_at: datetime | None
    rejected_images: int
    #: The batch's ledger holds this call's digest and the rows at its positions
    #: confirm it: a redelivery, nothing to do.
    replayed: bool

    def progress(self, batch_id: str) -> BatchProgress:
        assert self.status is not None, "lock_batch returns the batch it locked"
        return BatchProgress(
            batch_id=batch_id,
            status=ProcessStatus(self.status),
            total_images=self.total_images or 0,
            completed_images=self.completed_images or 0,
            failed_images=self.failed_images or 0,
            rejected_images=self.rejected_images,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class MergeRow(NamedTuple):
    """One staged input's outcome, and the batch's totals (``pos`` None: a call without inputs)."""

    pos: int | None
    #: Never REPORTED_OUTCOMES' failed (the merge says stored); None on the row of totals only.
    outcome: Outcome | None
    #: The merge's words for a reject, a refusal, an input to reject in a second pass, or a conflict's holder.
    reason: str | None
    resolved: bool
    total_images: int
    completed_images: int
    failed_images: int
    rejected_images: int
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    announced: int
    recorded: int
    #: The batch reads stale after the merge: another writer committed while it ran.
    left_stale: bool = False

    def progress(self, batch_id: str) -> BatchProgress:
        return BatchProgress(
            batch_id=batch_id,
            status=ProcessStatus(self.status),
            total_images=self.total_images,
            completed_images=self.completed_images,
            failed_images=self.failed_images,
            rejected_images=self.rejected_images,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def with_totals_of(self, other: MergeRow) -> MergeRow:
        """This input's outcome with the totals of a later merge of the same call."""
        return other._replace(pos=self.pos, outcome=self.outcome, reason=self.reason, resolved=self.resolved)


# Outcome by its word: a dict lookup per row, where Outcome(word) is a Python call.
_OUTCOME_OF = {outcome.value: outcome for outcome in Outcome}


def _merge_row(cursor: psycopg.Cursor[Any]) -> RowMaker[MergeRow]:
    """class_row(MergeRow), with the outcome read into Outcome: a word of the merge the
    enum does not know fails here (ValueError), not as an uncounted input."""
    if cursor.description is None:
        return class_row(MergeRow)(cursor)  # no result: psycopg's own answer
    names = [column.name for column in cursor.description]

    def row(values: Sequence[Any]) -> MergeRow:
        fields = dict(zip(names, values, strict=True))
        word = fields["outcome"]
        if word is not None:
            fields["outcome"] = _OUTCOME_OF.get(word) or Outcome(word)
        return MergeRow(**fields)

    return row


def run_merge(conn: psycopg.Connection[Any], merge: sql.Composed, params: dict[str, Any]) -> list[MergeRow]:
    """Run the merge (loader/sql/save.sql, its staging tables' names filled in): its rows."""
    with conn.cursor(row_factory=_merge_row) as cur:
        return cur.execute(merge, params, prepare=False).fetchall()


def reread_if_stale(
    conn: psycopg.Connection[Any], batch_id: str, rows: list[MergeRow], statements: int
) -> tuple[list[MergeRow], int]:
    """A merge's rows, with the batch's progress read again if another writer
    committed while the merge ran (one more statement, on that path only).

    The merge's totals are its snapshot's; such a write left the batch stale
    (schema.sql, outside_writes), and a new statement of the same transaction
    sees it, so the call's report says what get_progress says after the commit.
    """
    if not rows or not rows[0].left_stale:
        return rows, statements
    now = steps.run(conn, steps.batch_progress(batch_id, alone=False))
    fresh = [
        row._replace(
            total_images=now.total_images,
            completed_images=now.completed_images,
            failed_images=now.failed_images,
            rejected_images=now.rejected_images,
            status=now.status.value,
        )
        for row in rows
    ]
    return fresh, statements + 1

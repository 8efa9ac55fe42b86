"""What an operator asks of batches: the recent or unfinished ones, and one batch in detail
(its failure reasons grouped by kind, the OCR models that produced its results)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import class_row

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import quoted, translating
from loader.models import BatchProgress
from loader.progress.read import get_progress


@dataclass(frozen=True)
class ReasonGroup:
    """Failures of one kind (reasons differing only in values), most frequent first."""

    outcome: str
    kind: str
    images: int
    example: str
    variants: int
    #: How many kinds the batch has in all (the same on every row).
    kinds: int


@dataclass(frozen=True)
class ModelCount:
    """How many of a batch's stored results an OCR model produced (None: the input named none)."""

    model_version: str | None
    images: int


@dataclass(frozen=True)
class FailureCounts:
    stored_failed: int
    rejected: int


@dataclass(frozen=True)
class BatchReport:
    """One batch in detail, as `loader status B` shows it."""

    progress: BatchProgress
    stored_failed: int
    rejected: int
    groups: list[ReasonGroup]
    models: list[ModelCount]

    @property
    def kinds(self) -> int:
        return self.groups[0].kinds if self.groups else 0

    @property
    def remaining(self) -> int:
        return max(self.progress.total_images - self.progress.accounted_images, 0)

    @property
    def elapsed_s(self) -> float | None:
        p = self.progress
        return (p.updated_at - p.created_at).total_seconds() if p.updated_at and p.created_at else None


def describe_batch(pool_or_conn: Connectable, batch_id: str, *, reasons: int = 10) -> BatchReport:
    """A batch's progress, its failures split and grouped by kind (at most ``reasons`` kinds),
    and the model versions of its stored results. Raises BatchNotFoundError for an unknown batch."""
    progress = get_progress(pool_or_conn, batch_id)
    params = {"batch_id": batch_id, "limit": max(reasons, 1)}
    with (
        connection(pool_or_conn) as conn,
        translating(f"describing batch {quoted(batch_id)}"),
        conn.transaction(),
    ):
        counts = conn.cursor(row_factory=class_row(FailureCounts)).execute(
            queries.get("batch_failure_counts"), params
        ).fetchone() or FailureCounts(0, 0)
        groups = (
            conn.cursor(row_factory=class_row(ReasonGroup))
            .execute(queries.get("batch_failure_reasons"), params)
            .fetchall()
        )
        models = (
            conn.cursor(row_factory=class_row(ModelCount))
            .execute(queries.get("batch_model_versions"), params)
            .fetchall()
        )
    return BatchReport(progress, counts.stored_failed, counts.rejected, groups[:reasons], models)


def list_batches(
    pool_or_conn: Connectable, *, unfinished: bool = False, limit: int = 20
) -> list[BatchProgress]:
    """The most recent batches, newest first; or (``unfinished``) those still PENDING
    or STARTED, oldest first.

    Figures and status as get_progress gives them: a batch another writer left
    stale (totals_stale) is recounted from its rows, so one whose stored counters
    say SUCCESS while its rows do not is listed as unfinished.
    """
    name = "batch_list_unfinished" if unfinished else "batch_list_recent"
    with (
        connection(pool_or_conn) as conn,
        translating("listing batches"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(BatchProgress)) as cur,
    ):
        return cur.execute(queries.get(name), {"limit": limit}).fetchall()

"""A call's LoadReport, input by input, from the merge's rows."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from loader.errors import quoted
from loader.models import Counts, InputIssue, LoadReport, Outcome
from loader.save.rows import MergeRow
from loader.save.validate import Image, Reject


def _replaced(row: MergeRow, image: Image | None) -> str:
    now = f": now failed: {image.error}" if image and image.status == "failed" else ""
    return f"replaced the result stored before{now}"


# The issue's reason for each outcome the report takes as the merge says it.
_REASON_OF: dict[Outcome, Callable[[MergeRow, Image | None], str]] = {
    Outcome.REJECTED: lambda row, _image: row.reason or "rejected",
    Outcome.UNCHANGED: lambda row, _image: (
        row.reason or "this position of the batch already received this input"
    ),
    Outcome.REFUSED: lambda row, _image: row.reason or "refused",
    Outcome.REPLACED: _replaced,
}


def _reported(row: MergeRow, image: Image | None) -> tuple[Outcome, str | None]:
    """What a report counts for one merge row, and its issue's reason (None: a fresh success).
    The merge says stored for an image stored as failed too: its OCR status tells them apart."""
    if row.outcome is not None and row.outcome in _REASON_OF:
        return row.outcome, _REASON_OF[row.outcome](row, image)
    if image and image.status == "failed":
        return Outcome.FAILED, image.error or "failed"
    return Outcome.STORED, None


# The outcomes whose images' boxes a report counts: the boxes this call stored.
_WITH_BOXES = frozenset({Outcome.STORED, Outcome.REPLACED})


def tally_report(
    batch_id: str,
    received: int,
    rows: list[MergeRow],
    images: list[Image],
    rejects: list[Reject],
    *,
    statements: int,
    attempts: int,
    duration: float,
) -> LoadReport:
    """Every input counted in exactly one outcome, with an issue for each that is not a fresh success."""
    by_pos_image = {im.pos: im for im in images}
    by_pos_path = {rj.pos: rj.image_path for rj in rejects}
    outcomes: list[Outcome] = []
    resolved = boxes = 0
    issues: list[InputIssue] = []
    for row in rows:
        if row.pos is None:
            continue
        image = by_pos_image.get(row.pos)
        outcome, reason = _reported(row, image)
        outcomes.append(outcome)
        resolved += row.resolved
        if image is not None and outcome in _WITH_BOXES:
            boxes += len(image.boxes)
        if reason is not None:
            path = image.image_path if image else by_pos_path.get(row.pos)
            issues.append(InputIssue(position=row.pos, image_path=path, outcome=outcome, reason=reason))
    tally: dict[str, int] = {**Counter(outcomes), "received": received, "resolved": resolved, "boxes": boxes}
    return LoadReport(
        batch_id=batch_id,
        **Counts.of(tally).counts(),
        statements=statements,
        attempts=attempts,
        duration_s=duration,
        progress=rows[0].progress(batch_id),
        issues=sorted(issues, key=lambda i: i.position),
    )


# Outcomes the log line names only when some input had them (a plain call never
# refuses), so a plain call's line keeps its shape (docs/deployment.md, "Logging").
_NAMED_WHEN_ANY = frozenset({Outcome.REFUSED})


def log_saved(log: logging.Logger, report: LoadReport) -> None:
    """The one INFO line of a committed call, readable in any log format.

    The message itself names the batch and gives the counts, statements and
    duration (Celery's and ``logging.basicConfig``'s formats show only the
    message); the same figures are structured fields of the record (``extra``:
    ``report.log_fields()``) for a formatter that renders them (docs/deployment.md,
    "Logging").
    """
    named = [(o, n) for o, n in report.outcomes().items() if n or o not in _NAMED_WHEN_ANY]
    redelivery = " (a redelivery: nothing written)" if report.replayed and not report.refused else ""
    log.info(
        "saved batch %s: %d inputs: " + ", ".join(f"%d {o}" for o, _ in named) + "%s; %d statements, %.3f s",
        quoted(report.batch_id),
        report.received,
        *(n for _, n in named),
        redelivery,
        report.statements,
        report.duration_s,
        extra=report.log_fields(),
    )

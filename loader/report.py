"""A call's LoadReport, input by input, from the merge's rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from loader.errors import quoted
from loader.models import InputIssue, LoadReport
from loader.rows import MergeRow
from loader.validate import Image, Reject


@dataclass
class _Tally:
    """The report's counts, input by input."""

    stored: int = 0
    failed: int = 0
    rejected: int = 0
    unchanged: int = 0
    replaced: int = 0
    refused: int = 0
    boxes: int = 0
    issues: list[InputIssue] = field(default_factory=list)

    def issue(self, pos: int, path: str | None, outcome: Any, reason: str) -> None:
        self.issues.append(InputIssue(position=pos, image_path=path, outcome=outcome, reason=reason))

    def add(self, row: MergeRow, image: Image | None, reject: Reject | None) -> None:
        pos = row.pos or 0
        path = image.image_path if image else (reject.image_path if reject else None)
        if row.outcome == "rejected":
            self.rejected += 1
            self.issue(pos, path, "rejected", row.reason or (reject.reason if reject else "rejected"))
        elif row.outcome == "unchanged":
            self.unchanged += 1
            self.issue(pos, path, "unchanged", "this position of the batch already received this input")
        elif row.outcome == "refused":
            self.refused += 1
            self.issue(pos, path, "refused", row.reason or "refused")
        elif row.outcome == "replaced":
            self.replaced += 1
            self.boxes += len(image.boxes) if image else 0
            now = f": now failed: {image.error}" if image and image.status == "failed" else ""
            self.issue(pos, path, "replaced", f"replaced the result stored before{now}")
        elif image and image.status == "failed":
            self.failed += 1
            self.issue(pos, path, "failed", image.error or "failed")
        else:
            self.stored += 1
            self.boxes += len(image.boxes) if image else 0


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
    by_pos_reject = {rj.pos: rj for rj in rejects}
    tally = _Tally()
    for row in rows:
        if row.pos is not None:
            tally.add(row, by_pos_image.get(row.pos), by_pos_reject.get(row.pos))
    return LoadReport(
        batch_id=batch_id,
        received=received,
        stored=tally.stored,
        failed=tally.failed,
        rejected=tally.rejected,
        unchanged=tally.unchanged,
        replaced=tally.replaced,
        refused=tally.refused,
        resolved=sum(1 for row in rows if row.pos is not None and row.resolved),
        boxes=tally.boxes,
        statements=statements,
        attempts=attempts,
        duration_s=duration,
        progress=rows[0].progress(batch_id),
        issues=sorted(tally.issues, key=lambda i: i.position),
    )


def _remark(report: LoadReport) -> str:
    if report.refused:
        return f", {report.refused} refused"
    return " (a redelivery: nothing written)" if report.replayed else ""


def log_saved(log: logging.Logger, report: LoadReport) -> None:
    """The one INFO line of a committed call, readable in any log format.

    The message itself names the batch and gives the counts, statements and
    duration (Celery's and ``logging.basicConfig``'s formats show only the
    message); the same figures are structured fields of the record (``extra``:
    ``report.log_fields()``) for a formatter that renders them (docs/deployment.md,
    "Logging").
    """
    log.info(
        "saved batch %s: %d inputs: %d stored, %d failed, %d rejected, %d unchanged, %d replaced%s; "
        "%d statements, %.3f s",
        quoted(report.batch_id),
        report.received,
        report.stored,
        report.failed,
        report.rejected,
        report.unchanged,
        report.replaced,
        _remark(report),
        report.statements,
        report.duration_s,
        extra=report.log_fields(),
    )

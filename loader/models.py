"""The loader's data: what a caller hands in (OCRResult, TextBox) and gets back (LoadReport)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from loader.fields import (  # noqa: F401 (the limits, as loader.models has always offered them)
    MAX_BBOX_POINTS,
    MAX_COORDINATE,
    MAX_ERROR_CHARS,
    MAX_MODEL_VERSION_CHARS,
    MAX_PATH_BYTES,
    MAX_TEXT_CHARS,
    BoxFields,
    ResultFields,
)


class ProcessStatus(enum.StrEnum):
    """Celery's task states; mirrors the ``process_status`` enum of schema.sql."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    RUNNING = "RUNNING"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"


# The fields, their types and limits are declared once, in loader/fields.py;
# loader/save/fastcheck.py passes certainly valid dicts without these models (for
# speed), its checks derived from the same declaration, and
# tests/unit/test_fastcheck.py holds the two to the same answers.
class TextBox(BoxFields):
    """One recognised box: its text, the OCR confidence in [0, 1], and its polygon."""


class OCRResult(ResultFields[TextBox]):
    """The OCR outcome for one image, as the OCR stage reports it."""


class Outcome(enum.StrEnum):
    """What became of one input of a call: every word of the merge's ``outcome`` column
    (loader/sql/save.sql; tests/unit/test_outcomes.py holds the two together), and ``failed``.

    A report counts the first six (REPORTED_OUTCOMES: a field of Counts each) and an
    InputIssue carries only those. ``lost`` and ``conflict`` are internal to the save
    path, which resolves them before it reports: a lost input is rejected in the same
    transaction (loader/save/isolate.py, reject_lost), a conflict refuses the whole call
    (PositionConflictError). The merge says ``stored`` for an image stored as failed
    too; the tally tells the two apart by the image's OCR status.
    """

    STORED = "stored"
    FAILED = "failed"
    REJECTED = "rejected"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"
    REFUSED = "refused"
    #: Internal: the merge found the input's path taken meanwhile (or another batch's).
    LOST = "lost"
    #: Internal: the input claims a position that holds another input.
    CONFLICT = "conflict"


#: The outcomes the save path resolves before it reports (Outcome's docstring).
INTERNAL_OUTCOMES = frozenset({Outcome.LOST, Outcome.CONFLICT})
#: The outcomes a report counts, in the order the log line and the summaries name them.
REPORTED_OUTCOMES = tuple(outcome for outcome in Outcome if outcome not in INTERNAL_OUTCOMES)


def _reported(outcome: Outcome) -> Outcome:
    if outcome in INTERNAL_OUTCOMES:
        raise ValueError(f"{outcome!s} is internal to the save path, never reported")
    return outcome


class InputIssue(BaseModel):
    """An input that did not end as a freshly stored success, and why."""

    model_config = ConfigDict(frozen=True)

    position: int
    image_path: str | None
    outcome: Annotated[Outcome, AfterValidator(_reported)]
    reason: str


class _OfBatch(BaseModel):
    """The batch a report is about: its first field."""

    model_config = ConfigDict(frozen=True)

    batch_id: str


class Counts(BaseModel):
    """What a call (or a load, its calls summed) did, counted: the one declaration of a report's counts.

    Every input is counted in ``received`` and in exactly one outcome field (a field per
    REPORTED_OUTCOMES, named as its outcome); ``resolved`` and ``boxes`` count other
    things. The tally of a call (loader/save/report.py), the sum over chunks (loader/save/chunks.py),
    LoadReport, ``log_fields``, the log line and the metrics follow these fields: a new
    outcome is a member of Outcome and a field here.
    """

    model_config = ConfigDict(frozen=True)

    received: int
    stored: int = Field(description="new images stored with OCR status success")
    failed: int = Field(description="new images stored with OCR status failed (upstream or invalid)")
    rejected: int = Field(description="new inputs recorded in load_rejects")
    unchanged: int = Field(description="inputs already stored or recorded by an earlier call")
    replaced: int = Field(
        default=0,
        description="stored results replaced in place (re-OCR with replace=True, or a repaired failure)",
    )
    refused: int = Field(
        default=0,
        description="inputs of a repair (or replace) call that fix nothing: not stored, not counted",
    )
    resolved: int = Field(
        default=0, description="open rejects of the batch that images this call stored resolved (repairs)"
    )
    boxes: int = Field(description="text boxes of the newly stored images")

    @classmethod
    def of(cls, counted: Mapping[str, int]) -> Counts:
        """Counts from a tally by field name; a field the tally never counted is 0."""
        return Counts(**{name: counted.get(name, 0) for name in Counts.model_fields})

    def counts(self) -> dict[str, int]:
        """Every count by field name (of a LoadReport too: only its counts)."""
        return {name: getattr(self, name) for name in Counts.model_fields}

    def outcomes(self) -> dict[Outcome, int]:
        """The count of each reported outcome, in REPORTED_OUTCOMES' order."""
        return {outcome: getattr(self, outcome) for outcome in REPORTED_OUTCOMES}

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) + getattr(other, name) for name in Counts.model_fields})


class BatchProgress(BaseModel):
    """A batch's totals as stored in batch_executions."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    status: ProcessStatus
    total_images: int
    completed_images: int
    #: Failed images plus open rejects (as stored in batch_executions).
    failed_images: int
    #: Of ``failed_images``: the open rejects (inputs that could not be stored at all).
    rejected_images: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def accounted_images(self) -> int:
        return self.completed_images + self.failed_images

    @property
    def percentage(self) -> float:
        """Share of total_images accounted for (stored or failed), 0-100.

        Uncapped: every merge keeps completed + failed <= total_images (the total
        grows when more inputs arrive than were declared), so a figure above 100
        would mean the totals were written by something else than the loader;
        showing it beats hiding it (``loader status B --recount`` repairs it).
        """
        if self.total_images == 0:
            return 100.0
        return 100.0 * self.accounted_images / self.total_images


class LoadReport(Counts, _OfBatch):
    """What one save_batch call did. Every input is counted in exactly one of
    ``stored``, ``failed``, ``rejected``, ``unchanged``, ``replaced`` or ``refused``
    (the counts: Counts)."""

    model_config = ConfigDict(frozen=True)

    statements: int = Field(description="SQL statements sent, BEGIN and COMMIT included")
    attempts: int = Field(default=1, description="transactions run (2 when the database refused some data)")
    duration_s: float
    progress: BatchProgress
    replayed: bool = Field(
        default=False,
        description="the batch had committed this very call before (its ledger): nothing judged or written; "
        "never for a re-OCR call (replace=True), which is judged again",
    )
    issues: list[InputIssue] = Field(default_factory=list)

    def log_fields(self) -> dict[str, object]:
        """The report's counts as structured-log fields (``logging``'s ``extra``): the counts of
        inputs (``boxes`` counts text boxes, which the log line leaves out), statements, duration."""
        counts = {name: n for name, n in self.counts().items() if name not in _NOT_LOGGED}
        return {
            "batch_id": self.batch_id,
            **counts,
            "statements": self.statements,
            "duration_s": round(self.duration_s, 4),
        }


# Counts the structured log leaves out: text boxes are no inputs (docs/deployment.md, "Logging").
_NOT_LOGGED = frozenset({"boxes"})

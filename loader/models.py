"""The loader's data: what a caller hands in (OCRResult, TextBox) and gets back (LoadReport)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
# loader/fastcheck.py passes certainly valid dicts without these models (for
# speed), its checks derived from the same declaration, and
# tests/unit/test_fastcheck.py holds the two to the same answers.
class TextBox(BoxFields):
    """One recognised box: its text, the OCR confidence in [0, 1], and its polygon."""


class OCRResult(ResultFields[TextBox]):
    """The OCR outcome for one image, as the OCR stage reports it."""


Outcome = Literal["stored", "failed", "rejected", "unchanged", "replaced", "refused"]


class InputIssue(BaseModel):
    """An input that did not end as a freshly stored success, and why."""

    model_config = ConfigDict(frozen=True)

    position: int
    image_path: str | None
    outcome: Outcome
    reason: str


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


class LoadReport(BaseModel):
    """What one save_batch call did. Every input is counted in exactly one of
    ``stored``, ``failed``, ``rejected``, ``unchanged``, ``replaced`` or ``refused``."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
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
    statements: int = Field(description="SQL statements sent, BEGIN and COMMIT included")
    attempts: int = Field(default=1, description="transactions run (2 when the database refused some data)")
    duration_s: float
    progress: BatchProgress
    replayed: bool = Field(
        default=False,
        description="the batch had committed this very call before (its ledger): nothing judged or written",
    )
    issues: list[InputIssue] = Field(default_factory=list)

    def log_fields(self) -> dict[str, object]:
        """The report's counts as structured-log fields (``logging``'s ``extra``)."""
        return {
            "batch_id": self.batch_id,
            "received": self.received,
            "stored": self.stored,
            "failed": self.failed,
            "rejected": self.rejected,
            "unchanged": self.unchanged,
            "replaced": self.replaced,
            "refused": self.refused,
            "resolved": self.resolved,
            "statements": self.statements,
            "duration_s": round(self.duration_s, 4),
        }

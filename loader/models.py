"""The loader's data: what a caller hands in (OCRResult, TextBox) and gets back (LoadReport)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetPydanticSchema
from pydantic_core import core_schema

# Longest text accepted for one box, in characters. OCR of a page yields at most a
# few thousand; anything near this is a corrupted result, not text worth storing.
MAX_TEXT_CHARS = 100_000
# Most points one bbox may hold. Boxes are quadrilaterals or short polygons; a
# longer list is a corrupted result and would bloat the jsonb column.
MAX_BBOX_POINTS = 64
# Largest magnitude of a bbox coordinate: the largest finite double. Integers are
# kept as integers (stored as sent, ``10`` stays ``10``) up to the same bound the
# floats have, so the set of accepted values is the same as when every
# coordinate was made a float; a larger integer is as corrupt as an infinity.
MAX_COORDINATE = int(sys.float_info.max)
# Longest image_path / public_path, in UTF-8 bytes. Both columns carry a unique
# btree index, whose entries hold at most 2704 bytes (a third of an 8 kB page);
# a longer path made the merge fail for the whole call (SQLSTATE 54000), and
# 4096 characters of Hangul are 12 kB. 2048 bytes stays clear of that limit.
MAX_PATH_BYTES = 2048
# Longest model_version, in characters (schema.sql's CHECK): a model's name and
# version, never free text.
MAX_MODEL_VERSION_CHARS = 255
# Longest upstream error message kept, in characters; longer ones are truncated
# with a marker rather than rejected, because the reason must always be stored.
MAX_ERROR_CHARS = 10_000


class ProcessStatus(enum.StrEnum):
    """Celery's task states; mirrors the ``process_status`` enum of schema.sql."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    RUNNING = "RUNNING"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"


def _storable_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone UTF-16 surrogates: refuse them here, not in COPY."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which PostgreSQL text cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"is not valid Unicode (lone surrogate at index {exc.start})") from None
    return value


def _indexable_path(value: str) -> str:
    """A path must be non-blank and fit the unique index on its column."""
    if not value.strip():
        raise ValueError("is empty or only whitespace")
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise ValueError(f"is longer than {MAX_PATH_BYTES} bytes in UTF-8 ({size})")
    return value


StorableText = Annotated[str, AfterValidator(_storable_text)]
StorablePath = Annotated[StorableText, AfterValidator(_indexable_path)]

# A coordinate is an int (kept as one: JSON's 10 must come back as 10, not 10.0)
# or a finite float; never a bool, a string, NaN or an infinity. One error for
# both branches, so a message reads "bbox[0][1]: Input should be ..." rather
# than one line per branch of the union.
Coordinate = Annotated[
    int | float,
    GetPydanticSchema(
        lambda _source, _handler: core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, ge=-MAX_COORDINATE, le=MAX_COORDINATE),
                # Floats only: a strict float schema alone would also take (and
                # convert) the integers the first branch refused as too large.
                core_schema.json_or_python_schema(
                    json_schema=core_schema.float_schema(strict=True, allow_inf_nan=False),
                    python_schema=core_schema.chain_schema(
                        [core_schema.is_instance_schema(float), core_schema.float_schema(allow_inf_nan=False)]
                    ),
                ),
            ],
            custom_error_type="coordinate",
            custom_error_message=(
                "Input should be a finite number (an integer or a float of magnitude at most 1.8e308)"
            ),
        )
    ),
]
# A point is [x, y]; JSON has no tuples, so it arrives as a two-element list.
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]


# loader/fastcheck.py passes certainly valid dicts without these models (for
# speed); a rule added to TextBox or OCRResult needs its check there too, and
# tests/unit/test_fastcheck.py holds the two to the same answers.
class TextBox(BaseModel):
    """One recognised box: its text, the OCR confidence in [0, 1], and its polygon."""

    # Strict: a confidence of "0.9" (a string) is a broken upstream, not a number.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    text: Annotated[StorableText, Field(max_length=MAX_TEXT_CHARS)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    bbox: Annotated[list[Point], Field(min_length=1, max_length=MAX_BBOX_POINTS)]


class OCRResult(BaseModel):
    """The OCR outcome for one image, as the OCR stage reports it."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    image_path: Annotated[StorablePath, Field(min_length=1, max_length=MAX_PATH_BYTES)]
    public_path: Annotated[StorablePath, Field(min_length=1, max_length=MAX_PATH_BYTES)] | None = None
    status: Literal["success", "failed"] = "success"
    error: str | None = None
    text_boxes: list[TextBox] = Field(default_factory=list)
    #: Which OCR model produced the result, when the stage says so (stored; a re-OCR replaces it).
    model_version: Annotated[StorableText, Field(min_length=1, max_length=MAX_MODEL_VERSION_CHARS)] | None = (
        None
    )


class Outcome(enum.StrEnum):
    """What became of one input of a call: every word of the merge's ``outcome`` column
    (loader/sql/save.sql; tests/unit/test_outcomes.py holds the two together), and ``failed``.

    A report counts the first six (REPORTED_OUTCOMES: a field of Counts each) and an
    InputIssue carries only those. ``lost`` and ``conflict`` are internal to the save
    path, which resolves them before it reports: a lost input is rejected in the same
    transaction (loader/isolate.py, reject_lost), a conflict refuses the whole call
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
    things. The tally of a call (loader/report.py), the sum over chunks (loader/chunks.py),
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
        description="the batch had committed this very call before (its ledger): nothing judged or written",
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

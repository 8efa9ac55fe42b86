"""loader.orm's models of schema.sql's tables the application shares, one class each.

The loader's own bookkeeping (schema version, call ledger) is in _ledger.py, result
history in _history.py."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from loader.fields import STORED
from loader.orm._base import (
    OCR_STATUS,
    PROCESS_STATUS,
    Base,
    OCRStatus,
    ProcessStatus,
    Timestamps,
    batch_status,
    id_column,
)

if TYPE_CHECKING:
    from loader.orm._history import OCRResultVersion

# The comments of an OCR result's columns, as loader/fields.py declares them.
_COMMENTS = {f.name: f.column.comment for f in STORED}


class BatchExecution(Timestamps, Base):
    """One OCR batch.

    The application creates it (``batch_id``, ``total_images``) or lets the loader do so;
    from then on the loader owns ``completed_images``, ``failed_images`` and ``status``:
    every merge adds its changes to them under the batch's lock. A write of the
    counters (or of the rows they count) by anyone else marks the batch
    ``totals_stale``, and the next merge recounts it from its rows. So the methods
    below never invent counts, and write only a status the loader's rule
    (batch_status) agrees with — with one exception, stated at start_execution().
    """

    __tablename__ = "batch_executions"
    __table_args__ = (
        CheckConstraint("batch_id <> '' AND length(batch_id) <= 255", name="batch_executions_batch_id_check"),
        CheckConstraint("total_images >= 0", name="batch_executions_total_images_check"),
        CheckConstraint("completed_images >= 0", name="batch_executions_completed_images_check"),
        CheckConstraint("failed_images >= 0", name="batch_executions_failed_images_check"),
        CheckConstraint("declared_images >= 0", name="batch_executions_declared_images_check"),
        Index("batch_executions_created_at_idx", "created_at"),
        # The predicate is the one of `loader status --unfinished` (loader/sql/cli.sql).
        Index(
            "batch_executions_unfinished_idx",
            "created_at",
            "id",
            postgresql_where=text("status IN ('PENDING', 'STARTED')"),
        ),
        # Version 5: retention's finished and stale batches by age (loader/sql/lifecycle.sql).
        Index(
            "batch_executions_finished_idx",
            "updated_at",
            "id",
            postgresql_where=text("status IN ('SUCCESS', 'FAILURE') AND NOT totals_stale"),
        ),
        Index("batch_executions_stale_idx", "updated_at", "id", postgresql_where=text("totals_stale")),
        {"comment": "One OCR batch: a set of images processed together."},
    )

    id: Mapped[int] = id_column()
    batch_id: Mapped[str] = mapped_column(
        Text,
        unique=True,
        comment="The pipeline's batch identifier (natural key; the API addresses batches by it).",
    )
    status: Mapped[ProcessStatus] = mapped_column(
        PROCESS_STATUS,
        server_default=ProcessStatus.PENDING.value,
        comment="PENDING until the first image arrives (or the application marks the batch STARTED); "
        "STARTED while images are outstanding; "
        "SUCCESS when all total_images are accounted for; FAILURE if every one of them failed.",
    )
    total_images: Mapped[int] = mapped_column(
        Integer,
        comment="Images the batch holds: declared_images, or more when more inputs were accounted for "
        "than declared (so completed + failed never exceeds it).",
    )
    completed_images: Mapped[int] = mapped_column(
        Integer,
        server_default=text("0"),
        comment="Images stored with OCR status success. Kept by the loader (each merge adds its own "
        "changes under the batch's lock); a write by anyone else marks totals_stale and the next "
        "merge recounts.",
    )
    failed_images: Mapped[int] = mapped_column(
        Integer,
        server_default=text("0"),
        comment="Images stored with OCR status failed plus open rejects in load_rejects, "
        "so completed + failed = inputs accounted for.",
    )
    # Kept by the database (schema.sql's triggers): fetched back, never sent.
    declared_images: Mapped[int | None] = mapped_column(
        Integer,
        server_default=FetchedValue(),
        server_onupdate=FetchedValue(),
        comment="Version 4: the total declared for the batch (register_batch, the first call, or a write "
        "of total_images by another writer); recount_batch brings total_images back to it.",
    )
    totals_stale: Mapped[bool] = mapped_column(
        Boolean,
        server_default=text("false"),
        server_onupdate=FetchedValue(),
        comment="True when a writer other than the loader changed the counters, the status, the total or "
        "the rows they count (triggers loader_note_batch_write, loader_note_outside_write); readers then "
        "read the rows' figures, and the next merge recounts the batch and clears it, unless another "
        "outside write came meanwhile (outside_writes). Only the loader clears it.",
    )
    outside_writes: Mapped[int] = mapped_column(
        BigInteger,
        server_default=text("0"),
        server_onupdate=FetchedValue(),
        comment="Version 5: how many writes by writers other than the loader touched the batch or the rows "
        "it counts (trigger loader_note_batch_write); a merge clears totals_stale only when this is still "
        "the value it counted from.",
    )

    chains: Mapped[list[ChainExecution]] = relationship(
        back_populates="batch",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ChainExecution.id",
    )
    rejects: Mapped[list[LoadReject]] = relationship(
        back_populates="batch",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="LoadReject.position",
    )

    def start_execution(self) -> None:
        """Mark a batch the loader has not counted anything for yet as under way.

        Writes ``status`` only, and only PENDING -> STARTED: once the loader has
        stored an image it owns the status, and this does nothing. The loader
        keeps STARTED until its merges complete the batch (SUCCESS/FAILURE).
        """
        if self.status == ProcessStatus.PENDING:
            self.status = ProcessStatus.STARTED

    def complete_execution(self) -> ProcessStatus:
        """Set the status the loader's rule gives the stored totals, and return it.

        Never touches the counts: a batch with images outstanding stays STARTED,
        and the status written is the one the next merge computes itself, so that
        merge writes nothing. Refresh the object first (``session.refresh(batch)``)
        so the totals are the ones the loader last committed. A started batch
        that received nothing stays STARTED.
        """
        status = batch_status(
            self.total_images, self.completed_images or 0, self.failed_images or 0, self.status
        )
        if self.status != status:
            self.status = status
        return status

    def get_progress_percentage(self) -> float:
        """Share of total_images accounted for (completed or failed), 0-100.

        The same figure as ``loader.get_progress(...).percentage``: a batch
        expecting no images is complete (100), and the result never exceeds 100.
        """
        if not self.total_images:
            return 100.0
        accounted = (self.completed_images or 0) + (self.failed_images or 0)
        return min(100.0, 100.0 * accounted / self.total_images)


class ChainExecution(Timestamps, Base):
    """One Celery chain per image of a batch.

    The loader creates the chains of the images it stores (total_tasks 1, and
    SUCCESS or FAILURE as the OCR row), and counts a batch's chains by status in
    its totals: a chain's status is the loader's. The task counters are free.
    """

    __tablename__ = "chain_executions"
    __table_args__ = (
        CheckConstraint("chain_id <> ''", name="chain_executions_chain_id_check"),
        CheckConstraint("total_tasks >= 0", name="chain_executions_total_tasks_check"),
        CheckConstraint("completed_tasks >= 0", name="chain_executions_completed_tasks_check"),
        CheckConstraint("failed_tasks >= 0", name="chain_executions_failed_tasks_check"),
        # Version 5: partial, so no probe by position can take it (schema.sql, "v5 indexes: plans").
        Index("chain_executions_failed_idx", "batch_id", postgresql_where=text("status = 'FAILURE'")),
        CheckConstraint("position >= 0", name="chain_executions_position_check"),
        UniqueConstraint("batch_id", "position", name="chain_executions_position_once"),
        {"comment": "One Celery chain per image of a batch."},
    )

    id: Mapped[int] = id_column()
    chain_id: Mapped[str] = mapped_column(
        Text,
        unique=True,
        comment="Celery chain id. The loader derives it deterministically (UUIDv5 of batch_id and "
        "image_path) so a redelivered batch maps onto the same chains.",
    )
    batch_id: Mapped[str] = mapped_column(Text, ForeignKey(BatchExecution.batch_id, ondelete="CASCADE"))
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, server_default=ProcessStatus.PENDING.value)
    total_tasks: Mapped[int] = mapped_column(
        Integer,
        server_default=text("0"),
        comment="Tasks in the chain; the loader records the OCR task, so 1 for chains it creates.",
    )
    completed_tasks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed_tasks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    position: Mapped[int | None] = mapped_column(
        Integer,
        comment="Version 4: the position in the batch of the input that stored this image (a file's line "
        "number, position_offset + index in a call): an input's identity. NULL for chains other "
        "writers made, until an input of the loader at a free position claims the image.",
    )

    batch: Mapped[BatchExecution] = relationship(back_populates="chains")
    ocr_execution: Mapped[OCRExecution | None] = relationship(
        back_populates="chain", cascade="all, delete-orphan", passive_deletes=True
    )
    task_logs: Mapped[list[TaskLog]] = relationship(
        back_populates="chain", passive_deletes=True, order_by="TaskLog.id"
    )

    def increment_completed_tasks(self) -> None:
        """Count one more finished task (the counter only; the status stays the loader's)."""
        self.completed_tasks = (self.completed_tasks or 0) + 1

    def increment_failed_tasks(self) -> None:
        """Count one more failed task (the counter only; the status stays the loader's)."""
        self.failed_tasks = (self.failed_tasks or 0) + 1


class TaskLog(Timestamps, Base):
    """Celery task log, one row per task id (loader.celery keeps it from signals)."""

    __tablename__ = "task_logs"
    __table_args__ = (
        CheckConstraint("task_id <> ''", name="task_logs_task_id_check"),
        CheckConstraint("retries >= 0", name="task_logs_retries_check"),
        Index("task_logs_chain_execution_id_idx", "chain_execution_id"),
        Index("task_logs_status_updated_idx", "status", "updated_at"),
        {"comment": "Celery task log, one row per task id, kept by signal handlers in the workers."},
    )

    id: Mapped[int] = id_column()
    task_id: Mapped[str] = mapped_column(Text, unique=True)
    task_name: Mapped[str | None] = mapped_column(Text)
    chain_execution_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey(ChainExecution.id, ondelete="CASCADE"),
        comment="The chain the task belongs to (chain_executions.id, as the application's TaskLog "
        "model links it); the Celery task log resolves a task's chain_id header to it. "
        "NULL for stand-alone tasks.",
    )
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, server_default=ProcessStatus.PENDING.value)
    retries: Mapped[int] = mapped_column(
        Integer,
        server_default=text("0"),
        comment="How many times the task was retried (Celery request.retries at the last update).",
    )
    error: Mapped[str | None] = mapped_column(
        Text, comment="Exception text of the last failure or retry; NULL while the task has not failed."
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    chain: Mapped[ChainExecution | None] = relationship(back_populates="task_logs")


class OCRExecution(Timestamps, Base):
    """OCR result of one image; its text boxes come in reading order."""

    __tablename__ = "ocr_executions"
    __table_args__ = (
        # Each result field's own CHECK, as loader/fields.py declares its limit.
        *(CheckConstraint(f.check, name=f"ocr_executions_{f.name}_check") for f in STORED if f.check),
        # A failed image always says why; a successful one carries no error.
        CheckConstraint("(status = 'failed') = (error IS NOT NULL)", name="ocr_executions_error_iff_failed"),
        CheckConstraint("result_version > 0", name="ocr_executions_result_version_check"),
        {"comment": "OCR result of one image."},
    )

    id: Mapped[int] = id_column()
    chain_id: Mapped[str] = mapped_column(
        Text, ForeignKey(ChainExecution.chain_id, ondelete="CASCADE"), unique=True
    )
    image_path: Mapped[str] = mapped_column(Text, unique=True, comment=_COMMENTS["image_path"])
    public_path: Mapped[str | None] = mapped_column(Text, unique=True, comment=_COMMENTS["public_path"])
    status: Mapped[OCRStatus] = mapped_column(OCR_STATUS)
    # Left out, schema.sql's trigger fills it in for a failed row (a stated
    # placeholder) and clears it for a successful one; fetched back either way.
    error: Mapped[str | None] = mapped_column(
        Text,
        server_default=FetchedValue(),
        server_onupdate=FetchedValue(),
        comment=_COMMENTS["error"],
    )
    model_version: Mapped[str | None] = mapped_column(Text, comment=_COMMENTS["model_version"])

    result_version: Mapped[int] = mapped_column(
        Integer,
        server_default=text("1"),
        comment="Version 5: which result of this image the row holds: 1 for the first, one more with every "
        "replace by the loader (re-OCR, repaired failure, rollback); the earlier ones are in "
        "ocr_result_history.",
    )

    chain: Mapped[ChainExecution] = relationship(back_populates="ocr_execution")
    #: The results this image held before, newest first (read-only: the loader writes them).
    history: Mapped[list[OCRResultVersion]] = relationship(
        primaryjoin="OCRExecution.id == foreign(OCRResultVersion.ocr_execution_id)",
        order_by="OCRResultVersion.version.desc()",
        viewonly=True,
    )
    text_boxes: Mapped[list[OCRTextBox]] = relationship(
        back_populates="ocr_execution",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="OCRTextBox.position",
    )


class OCRTextBox(Timestamps, Base):
    """One recognised box: text, confidence in [0, 1], polygon, and its place in reading order."""

    __tablename__ = "ocr_text_boxes"
    __table_args__ = (
        CheckConstraint("position >= 0", name="ocr_text_boxes_position_check"),
        # NaN compares greater than every number in PostgreSQL, so this also rejects NaN.
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="ocr_text_boxes_confidence_check"),
        CheckConstraint("jsonb_typeof(bbox) = 'array'", name="ocr_text_boxes_bbox_check"),
        UniqueConstraint("ocr_execution_id", "position", name="ocr_text_boxes_reading_order"),
        {"comment": "Text boxes recognised in one image."},
    )

    id: Mapped[int] = id_column()
    ocr_execution_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(OCRExecution.id, ondelete="CASCADE"))
    # Left out, schema.sql's trigger puts the box after the image's last one.
    position: Mapped[int] = mapped_column(
        Integer,
        server_default=FetchedValue(),
        comment="Reading order: the box's 0-based index within its image as the OCR stage reported it. "
        "ORDER BY position to read the text.",
    )
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(DOUBLE_PRECISION)
    bbox: Mapped[list[list[float]]] = mapped_column(
        JSONB, comment="Polygon as a JSON array of [x, y] points, e.g. [[0,0],[10,0],[10,5],[0,5]]."
    )

    ocr_execution: Mapped[OCRExecution] = relationship(back_populates="text_boxes")


class LoadReject(Timestamps, Base):
    """An input the loader could not store at all, kept byte for byte (written by the loader only)."""

    __tablename__ = "load_rejects"
    __table_args__ = (
        CheckConstraint("position >= 0", name="load_rejects_position_check"),
        CheckConstraint("length(raw_sha256) = 32", name="load_rejects_raw_sha256_check"),
        CheckConstraint(
            "resolved_by IS NULL OR resolved_at IS NOT NULL",
            name="load_rejects_resolved_by_needs_resolved_at",
        ),
        UniqueConstraint("batch_id", "position", "raw_sha256", name="load_rejects_once"),
        Index(
            "load_rejects_open_by_path_idx",
            "image_path",
            # Hash: a reject keeps any image_path it claimed, longer than a btree entry holds.
            postgresql_using="hash",
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index(
            "load_rejects_open_by_position_idx",
            "batch_id",
            "position",
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index(
            "load_rejects_resolved_by_idx", "resolved_by", postgresql_where=text("resolved_by IS NOT NULL")
        ),
        Index(
            "load_rejects_legacy_open_idx",
            "batch_id",
            "position",
            postgresql_where=text("legacy_position AND resolved_at IS NULL"),
        ),
        {
            "comment": "Inputs that could not be stored at all (no usable image_path, duplicates, paths "
            "owned by another batch, lines that are not JSON objects). Counted in "
            "batch_executions.failed_images."
        },
    )

    id: Mapped[int] = id_column()
    batch_id: Mapped[str] = mapped_column(Text, ForeignKey(BatchExecution.batch_id, ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(
        Integer,
        comment="Position of the input in its batch (0-based: a file's line number, position_offset + "
        "index in a call), as chain_executions.position for stored images.",
    )
    image_path: Mapped[str | None] = mapped_column(
        Text, comment="The image_path the input claimed, when it had a usable one."
    )
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(
        LargeBinary,
        comment="The input exactly as received (bytes of the JSONL line, or the JSON encoding of an "
        "in-memory object); NUL bytes included, hence bytea.",
    )
    raw_sha256: Mapped[bytes] = mapped_column(
        LargeBinary, comment="SHA-256 of raw; part of the idempotency key."
    )
    resolved_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        comment="When a repair call fixed this input (a line at the same position stored, or refused "
        "again and recorded as a newer reject); NULL while the reject is open. Only open rejects "
        "count in failed_images; resolved ones stay for the audit trail.",
    )
    resolved_by: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey(OCRExecution.id, ondelete="SET NULL"),
        comment="The ocr_executions row whose storing resolved this reject "
        "(NULL if that row was deleted since).",
    )
    legacy_position: Mapped[bool] = mapped_column(
        Boolean,
        server_default=text("false"),
        comment="Version 5: true for rejects stored before version 4, whose position may be relative to "
        "their call (version 3 numbered a Celery chunk's rejects from 0); the merge supersedes one when "
        "the same input arrives at its batch position (its position + the call's first position).",
    )

    batch: Mapped[BatchExecution] = relationship(back_populates="rejects")

"""loader.orm's model of result history (schema.sql, version 5): the OCR results the loader replaced."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loader.orm._base import OCR_STATUS, Base, OCRStatus


class OCRResultVersion(Base):
    """One earlier result of an image (append-only: written by the loader's merge, deleted by retention).

    Its boxes are ``texts``, ``confidences`` and ``bboxes``, one element per box in reading order
    (``boxes`` zips them into dicts).

    ``OCRExecution.history`` lists an image's earlier results, newest first; the
    current one is the OCRExecution itself (its ``result_version``).
    """

    __tablename__ = "ocr_result_history"
    __table_args__ = (
        CheckConstraint("version > 0", name="ocr_result_history_version_check"),
        CheckConstraint(
            "cardinality(confidences) = cardinality(texts) AND cardinality(bboxes) = cardinality(texts)",
            name="ocr_result_history_boxes_aligned",
        ),
        CheckConstraint("length(replaced_by) = 32", name="ocr_result_history_replaced_by_check"),
        CheckConstraint("replaced_in IN ('replace', 'repair')", name="ocr_result_history_replaced_in_check"),
        Index("ocr_result_history_batch_idx", "batch_id", "ocr_execution_id"),
        {
            "comment": "Version 5: every OCR result the loader replaced (re-OCR, repaired failure, "
            "rollback), one row per replaced version, append-only; deleted with its batch, or by retention "
            "(loader history --keep / --replaced-before)."
        },
    )

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch_executions.batch_id", ondelete="CASCADE"))
    ocr_execution_id: Mapped[int] = mapped_column(
        BigInteger,
        primary_key=True,
        autoincrement=False,
        comment="The image (ocr_executions.id, which a replace keeps). No foreign key: deleting an OCR row "
        "one by one leaves its history to its batch's deletion, and the merge pays no check per row.",
    )
    version: Mapped[int] = mapped_column(
        Integer,
        primary_key=True,
        autoincrement=False,
        comment="The ocr_executions.result_version this result had while it was the image's current one.",
    )
    model_version: Mapped[str | None] = mapped_column(Text)
    status: Mapped[OCRStatus] = mapped_column(OCR_STATUS)
    error: Mapped[str | None] = mapped_column(Text)
    public_path: Mapped[str | None] = mapped_column(Text)
    texts: Mapped[list[str]] = mapped_column(
        ARRAY(Text),
        comment="The result's text boxes in reading order, as three arrays of one element per box (empty "
        "for a failure): their texts, confidences and bboxes. Arrays, not one JSON document: copying them "
        "costs a fifth of building JSON.",
    )
    confidences: Mapped[list[float]] = mapped_column(
        ARRAY(DOUBLE_PRECISION), comment="Each box's confidence, in the order of texts."
    )
    bboxes: Mapped[list[Any]] = mapped_column(
        ARRAY(JSONB), comment="Each box's polygon (a JSON array of [x, y] points), in the order of texts."
    )
    stored_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), comment="When this result was written (the OCR row's updated_at then)."
    )
    replaced_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        server_default=func.now(),
        comment="When the call that replaced it ran (now() of its transaction).",
    )
    replaced_by: Mapped[bytes] = mapped_column(
        LargeBinary,
        comment="The replacing call's digest, as the batch's ledger (loader_calls.digest) holds it.",
    )
    replaced_in: Mapped[str] = mapped_column(
        Text,
        comment="The kind of call that replaced it: replace (re-OCR or rollback) or repair.",
    )

    @property
    def boxes(self) -> list[dict[str, Any]]:
        """The boxes in reading order, as ``{"text", "confidence", "bbox"}`` (loader.lifecycle.history's)."""
        return [
            {"text": t, "confidence": c, "bbox": b}
            for t, c, b in zip(self.texts, self.confidences, self.bboxes, strict=True)
        ]

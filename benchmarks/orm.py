"""SQLAlchemy 2 ORM mapping of the tables the orm-bulk benchmark writes (benchmark-only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey
from sqlalchemy.dialects.postgresql import ENUM, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The schema's enums, already created by schema.sql.
PROCESS_STATUS = ENUM(
    "PENDING",
    "STARTED",
    "SUCCESS",
    "RUNNING",
    "FAILURE",
    "RETRY",
    "REVOKED",
    name="process_status",
    create_type=False,
)
OCR_STATUS = ENUM("success", "failed", name="ocr_status", create_type=False)


class Base(DeclarativeBase):
    pass


class Batch(Base):
    __tablename__ = "batch_executions"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[str] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(PROCESS_STATUS)
    total_images: Mapped[int]
    completed_images: Mapped[int] = mapped_column(default=0)
    failed_images: Mapped[int] = mapped_column(default=0)


class Chain(Base):
    __tablename__ = "chain_executions"

    id: Mapped[int] = mapped_column(primary_key=True)
    chain_id: Mapped[str] = mapped_column(unique=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch_executions.batch_id"))
    status: Mapped[str] = mapped_column(PROCESS_STATUS)
    total_tasks: Mapped[int]
    completed_tasks: Mapped[int]
    failed_tasks: Mapped[int]


class OcrExecution(Base):
    __tablename__ = "ocr_executions"

    id: Mapped[int] = mapped_column(primary_key=True)
    chain_id: Mapped[str] = mapped_column(ForeignKey("chain_executions.chain_id"), unique=True)
    image_path: Mapped[str] = mapped_column(unique=True)
    public_path: Mapped[str | None] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(OCR_STATUS)
    error: Mapped[str | None]

    chain: Mapped[Chain] = relationship()


class TextBox(Base):
    __tablename__ = "ocr_text_boxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    ocr_execution_id: Mapped[int] = mapped_column(ForeignKey("ocr_executions.id"))
    position: Mapped[int]
    text: Mapped[str]
    confidence: Mapped[float]
    bbox: Mapped[Any] = mapped_column(JSONB)

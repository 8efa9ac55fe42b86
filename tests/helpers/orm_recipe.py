"""The application's own models (tests/helpers/orm_app.py) with every step of docs/application.md's
option (b) applied: what the recipe there prescribes, as code the tests run.

Differences from tests/helpers/orm_app.py, each a step of the recipe: the enums (1), time-zone aware
timestamps the server fills and the mapper reads back (2, ``eager_defaults``), JSONB (3),
``position`` and ``order_by`` (5), bigint ids (7), and relationships that leave deletes to
the schema's ON DELETE CASCADE (8, ``passive_deletes``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, DateTime, Enum, FetchedValue, Float, ForeignKey, Integer, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class ProcessStatus(enum.Enum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    RUNNING = "RUNNING"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"


class OCRStatus(str, enum.Enum):  # noqa: UP042 (as the application has it)
    SUCCESS = "success"
    FAILED = "failed"


def _values(cls: type[enum.Enum]) -> list[str]:
    return [m.value for m in cls]


PROCESS_STATUS = Enum(ProcessStatus, name="process_status", values_callable=_values, create_type=False)
OCR_STATUS = Enum(OCRStatus, name="ocr_status", values_callable=_values, create_type=False)


class Base(DeclarativeBase):
    pass


class _Stamped:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), server_onupdate=FetchedValue()
    )
    # Step 2: the server's values come back in the INSERT/UPDATE (RETURNING); otherwise
    # updated_at is expired after an update and reading it on asyncpg raises MissingGreenlet.
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, primary_key=True)


class BatchExecution(_Stamped, Base):
    __tablename__ = "batch_executions"

    id: Mapped[int] = _id()
    batch_id: Mapped[str] = mapped_column(String, unique=True)
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, server_default=ProcessStatus.PENDING.value)
    total_images: Mapped[int] = mapped_column(Integer, default=0)
    completed_images: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_images: Mapped[int] = mapped_column(Integer, server_default="0")

    # Step 8: the schema deletes the chains (ON DELETE CASCADE); without this the ORM
    # sets their batch_id to NULL first (NotNullViolation).
    chains: Mapped[list[ChainExecution]] = relationship(
        back_populates="batch", cascade="all, delete-orphan", passive_deletes=True
    )


class ChainExecution(_Stamped, Base):
    __tablename__ = "chain_executions"

    id: Mapped[int] = _id()
    chain_id: Mapped[str] = mapped_column(String, unique=True)
    batch_id: Mapped[str] = mapped_column(String, ForeignKey("batch_executions.batch_id", ondelete="CASCADE"))
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, server_default=ProcessStatus.PENDING.value)
    total_tasks: Mapped[int] = mapped_column(Integer, default=0)
    completed_tasks: Mapped[int] = mapped_column(Integer, default=0)
    failed_tasks: Mapped[int] = mapped_column(Integer, default=0)

    batch: Mapped[BatchExecution] = relationship(back_populates="chains")
    task_logs: Mapped[list[TaskLog]] = relationship(
        back_populates="chain", cascade="all, delete-orphan", passive_deletes=True
    )


class TaskLog(_Stamped, Base):
    __tablename__ = "task_logs"

    id: Mapped[int] = _id()
    task_id: Mapped[str] = mapped_column(String, unique=True)
    task_name: Mapped[str | None] = mapped_column(String, nullable=True)
    chain_execution_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("chain_executions.id", ondelete="CASCADE")
    )
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, server_default=ProcessStatus.PENDING.value)

    chain: Mapped[ChainExecution | None] = relationship(back_populates="task_logs")


class OCRExecution(_Stamped, Base):
    __tablename__ = "ocr_executions"

    id: Mapped[int] = _id()
    image_path: Mapped[str] = mapped_column(String, unique=True)
    public_path: Mapped[str | None] = mapped_column(String, unique=True)
    chain_id: Mapped[str] = mapped_column(String, ForeignKey("chain_executions.chain_id", ondelete="CASCADE"))
    status: Mapped[OCRStatus] = mapped_column(OCR_STATUS)
    error: Mapped[str | None] = mapped_column(
        String, server_default=FetchedValue(), server_onupdate=FetchedValue()
    )

    text_boxes: Mapped[list[OCRTextBox]] = relationship(
        back_populates="ocr_execution",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="OCRTextBox.position",
    )


class OCRTextBox(_Stamped, Base):
    __tablename__ = "ocr_text_boxes"

    id: Mapped[int] = _id()
    ocr_execution_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ocr_executions.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer, server_default=FetchedValue())
    text: Mapped[str] = mapped_column(String)
    confidence: Mapped[float] = mapped_column(Float)
    bbox: Mapped[list[list[float]]] = mapped_column(JSONB)

    ocr_execution: Mapped[OCRExecution] = relationship(back_populates="text_boxes")

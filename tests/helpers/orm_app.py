"""The OCR application's ORIGINAL models, as its code has them, with only the enum changes
docs/application.md prescribes ("Changing the application's own models", step 1).

Deliberately left as the application wrote them: Integer ids, String columns, naive
``DateTime`` with ``default=datetime.utcnow`` / ``onupdate``, ``JSON`` bbox, no
``ocr_executions.error``, no ``ocr_text_boxes.position``, ``text_boxes`` without
``order_by``. tests/db/test_orm.py proves they read and write schema v3 as they are.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Integer, String
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


# The prescribed changes: the deployed type name, the values as labels, and no
# type creation by create_all (Enum passes create_type through to PostgreSQL's ENUM).
PROCESS_STATUS = Enum(ProcessStatus, name="process_status", values_callable=_values, create_type=False)
OCR_STATUS = Enum(OCRStatus, name="ocr_status", values_callable=_values, create_type=False)


class Base(DeclarativeBase):
    pass


class _Stamped:
    created_at: Mapped[datetime] = mapped_column(DateTime, default=datetime.utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=datetime.utcnow, onupdate=datetime.utcnow)


class BatchExecution(_Stamped, Base):
    __tablename__ = "batch_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(String, unique=True, index=True)
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, default=ProcessStatus.PENDING)
    total_images: Mapped[int] = mapped_column(Integer, default=0)
    completed_images: Mapped[int] = mapped_column(Integer, default=0)
    failed_images: Mapped[int] = mapped_column(Integer, default=0)

    chains: Mapped[list[ChainExecution]] = relationship(back_populates="batch")


class ChainExecution(_Stamped, Base):
    __tablename__ = "chain_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[str] = mapped_column(String, unique=True, index=True)
    batch_id: Mapped[str] = mapped_column(String, ForeignKey("batch_executions.batch_id"))
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, default=ProcessStatus.PENDING)
    total_tasks: Mapped[int] = mapped_column(Integer, default=0)
    completed_tasks: Mapped[int] = mapped_column(Integer, default=0)
    failed_tasks: Mapped[int] = mapped_column(Integer, default=0)

    batch: Mapped[BatchExecution] = relationship(back_populates="chains")
    task_logs: Mapped[list[TaskLog]] = relationship(back_populates="chain")


class TaskLog(_Stamped, Base):
    __tablename__ = "task_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(String, unique=True, index=True)
    task_name: Mapped[str | None] = mapped_column(String, nullable=True)
    chain_execution_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("chain_executions.id"))
    status: Mapped[ProcessStatus] = mapped_column(PROCESS_STATUS, default=ProcessStatus.PENDING)

    chain: Mapped[ChainExecution | None] = relationship(back_populates="task_logs")


class OCRExecution(_Stamped, Base):
    __tablename__ = "ocr_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_path: Mapped[str] = mapped_column(String, unique=True, index=True)
    public_path: Mapped[str] = mapped_column(String, unique=True, index=True)
    chain_id: Mapped[str] = mapped_column(String, ForeignKey("chain_executions.chain_id"))
    status: Mapped[OCRStatus] = mapped_column(OCR_STATUS)

    text_boxes: Mapped[list[OCRTextBox]] = relationship(
        back_populates="ocr_execution", cascade="all, delete-orphan"
    )


class OCRTextBox(_Stamped, Base):
    __tablename__ = "ocr_text_boxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ocr_execution_id: Mapped[int] = mapped_column(Integer, ForeignKey("ocr_executions.id"))
    text: Mapped[str] = mapped_column(String)
    confidence: Mapped[float] = mapped_column(Float)
    bbox: Mapped[list[list[float]]] = mapped_column(JSON)

    ocr_execution: Mapped[OCRExecution] = relationship(back_populates="text_boxes")

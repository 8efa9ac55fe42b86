"""The OCR application as it was before the loader: its original SQLAlchemy 2 models, the
database its ``create_all`` made, and the old save path that filled it row by row.

Used by tests/db/test_adopt.py to build the databases ``loader schema adopt`` converts. The
models are written the way the application wrote them (plain ``Column``s, ``Enum(PyEnum)``
with its default member-name labels, ``default=datetime.utcnow``), in the variants the
adoption recognises: the OCR status as a native enum or a plain string, uniques as
constraints or as ``ix_`` unique indexes, with or without ``task_logs.task_name``.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, relationship


class ProcessStatus(str, enum.Enum):  # noqa: UP042  (as the application declares it)
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    RUNNING = "RUNNING"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"


class OCRStatus(str, enum.Enum):  # noqa: UP042  (as the application declares it)
    SUCCESS = "success"
    FAILED = "failed"


@dataclass(frozen=True)
class Shape:
    """Which of the recognised variants create_all builds."""

    ocr_status_enum: bool = True  # native enum ocrstatus (SUCCESS/FAILED), else varchar success/failed
    unique_indexes: bool = True  # unique=True, index=True -> ix_<table>_<column>, else UNIQUE constraints
    task_name: bool = True  # task_logs.task_name present

    def label(self) -> str:
        return "-".join(
            [
                "enum" if self.ocr_status_enum else "varchar",
                "ix" if self.unique_indexes else "uq",
                "taskname" if self.task_name else "notaskname",
            ]
        )


@dataclass
class Models:
    base: type[DeclarativeBase]
    BatchExecution: Any
    ChainExecution: Any
    TaskLog: Any
    OCRExecution: Any
    OCRTextBox: Any


def _unique(shape: Shape) -> dict[str, bool]:
    return {"unique": True, "index": True} if shape.unique_indexes else {"unique": True}


def make_models(shape: Shape) -> Models:
    """The original models, built on a fresh declarative base for one shape."""

    class Base(DeclarativeBase):
        pass

    class Timestamps:
        created_at = Column(DateTime, default=datetime.utcnow)
        updated_at = Column(DateTime, default=datetime.utcnow, onupdate=datetime.utcnow)

    class BatchExecution(Timestamps, Base):
        __tablename__ = "batch_executions"
        id = Column(Integer, primary_key=True)
        batch_id = Column(String(255), **_unique(shape))
        status = Column(Enum(ProcessStatus), default=ProcessStatus.PENDING)
        total_images = Column(Integer, default=0)
        completed_images = Column(Integer, default=0)
        failed_images = Column(Integer, default=0)
        chains = relationship("ChainExecution", back_populates="batch")

        def start_execution(self) -> None:
            self.status = ProcessStatus.STARTED

        def complete_execution(self) -> None:
            self.status = ProcessStatus.SUCCESS

        def get_progress_percentage(self) -> float:
            if not self.total_images:
                return 0.0
            return 100.0 * (self.completed_images + self.failed_images) / self.total_images

    class ChainExecution(Timestamps, Base):
        __tablename__ = "chain_executions"
        id = Column(Integer, primary_key=True)
        chain_id = Column(String(255), **_unique(shape))
        batch_id = Column(String(255), ForeignKey("batch_executions.batch_id"))
        status = Column(Enum(ProcessStatus), default=ProcessStatus.PENDING)
        total_tasks = Column(Integer, default=0)
        completed_tasks = Column(Integer, default=0)
        failed_tasks = Column(Integer, default=0)
        batch = relationship("BatchExecution", back_populates="chains")

        def increment_completed_tasks(self) -> None:
            self.completed_tasks = (self.completed_tasks or 0) + 1

        def increment_failed_tasks(self) -> None:
            self.failed_tasks = (self.failed_tasks or 0) + 1

    task_log_columns: dict[str, Any] = {
        "__tablename__": "task_logs",
        "id": Column(Integer, primary_key=True),
        "task_id": Column(String(255), **_unique(shape)),
        "chain_execution_id": Column(Integer, ForeignKey("chain_executions.id")),
        "status": Column(Enum(ProcessStatus), default=ProcessStatus.PENDING),
    }
    if shape.task_name:
        task_log_columns["task_name"] = Column(String(255), nullable=True)
    TaskLog = type("TaskLog", (Timestamps, Base), task_log_columns)

    ocr_status: Any = Enum(OCRStatus) if shape.ocr_status_enum else String(20)

    class OCRExecution(Timestamps, Base):
        __tablename__ = "ocr_executions"
        id = Column(Integer, primary_key=True)
        image_path = Column(String(1024), **_unique(shape))
        public_path = Column(String(1024), **_unique(shape))
        chain_id = Column(String(255), ForeignKey("chain_executions.chain_id"))
        status = Column(ocr_status)
        text_boxes = relationship("OCRTextBox", cascade="all, delete-orphan", back_populates="ocr")

    class OCRTextBox(Timestamps, Base):
        __tablename__ = "ocr_text_boxes"
        id = Column(Integer, primary_key=True)
        ocr_execution_id = Column(Integer, ForeignKey("ocr_executions.id"))
        text = Column(Text)
        confidence = Column(Float)
        bbox = Column(JSON)
        ocr = relationship("OCRExecution", back_populates="text_boxes")

    return Models(Base, BatchExecution, ChainExecution, TaskLog, OCRExecution, OCRTextBox)


@dataclass
class OldImage:
    image_path: str
    status: str = "success"  # "success" | "failed"
    public_path: str | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)


def old_images(batch_id: str, n: int, *, boxes: int = 3, failed_every: int = 4) -> list[OldImage]:
    """n images for one batch, every ``failed_every``-th failed (no boxes), the others with boxes."""
    out = []
    for i in range(n):
        path = f"s3://old/{batch_id}/{i:05d}.jpg"
        if failed_every and i % failed_every == failed_every - 1:
            out.append(OldImage(path, "failed", f"https://cdn/{batch_id}/{i}.jpg"))
            continue
        out.append(
            OldImage(
                path,
                "success",
                f"https://cdn/{batch_id}/{i}.jpg",
                [
                    {
                        "text": f"텍스트 {i}-{b}",
                        "confidence": round(0.5 + b / 20, 3),
                        "bbox": [[b, 0], [b + 10, 0], [b + 10, 5.5], [b, 5.5]],
                    }
                    for b in range(boxes)
                ],
            )
        )
    return out


class OldApp:
    """The application's old save path on a database its create_all built."""

    def __init__(self, dsn: str, shape: Shape) -> None:
        self.dsn = dsn
        self.shape = shape
        self.models = make_models(shape)
        # Any libpq DSN (URL or key=value), handed to psycopg 3 as it is.
        self.engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))

    def create_all(self) -> None:
        self.models.base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _ocr_status(self, status: str) -> Any:
        return OCRStatus(status) if self.shape.ocr_status_enum else status

    def new_batch(self, batch_id: str, total_images: int = 0) -> None:
        m = self.models
        with Session(self.engine) as s:
            s.add(m.BatchExecution(batch_id=batch_id, total_images=total_images))
            s.commit()

    def save_image(self, batch_id: str, image: OldImage, *, task: bool = True) -> str:
        """The old path: chain, then its OCR row, then each box, one commit per row."""
        m = self.models
        chain_id = str(uuid.uuid4())
        ok = image.status == "success"
        with Session(self.engine) as s:
            chain = m.ChainExecution(
                chain_id=chain_id,
                batch_id=batch_id,
                status=ProcessStatus.SUCCESS if ok else ProcessStatus.FAILURE,
                total_tasks=1,
            )
            if ok:
                chain.increment_completed_tasks()
            else:
                chain.increment_failed_tasks()
            s.add(chain)
            s.commit()
            if task:
                extra = {"task_name": "ocr.process_image"} if self.shape.task_name else {}
                s.add(
                    m.TaskLog(
                        task_id=str(uuid.uuid4()),
                        chain_execution_id=chain.id,
                        status=ProcessStatus.SUCCESS if ok else ProcessStatus.FAILURE,
                        **extra,
                    )
                )
                s.commit()
            ocr = m.OCRExecution(
                image_path=image.image_path,
                public_path=image.public_path,
                chain_id=chain_id,
                status=self._ocr_status(image.status),
            )
            s.add(ocr)
            s.commit()
            for box in image.boxes:
                s.add(m.OCRTextBox(ocr_execution_id=ocr.id, **box))
                s.commit()
        return chain_id

    def save_batch(self, batch_id: str, images: list[OldImage], total_images: int | None = None) -> None:
        self.new_batch(batch_id, len(images) if total_images is None else total_images)
        for image in images:
            self.save_image(batch_id, image)

    def crashed_chain(self, batch_id: str, status: ProcessStatus) -> str:
        """A chain the old path wrote before crashing: no OCR row follows it."""
        m = self.models
        chain_id = str(uuid.uuid4())
        with Session(self.engine) as s:
            s.add(m.ChainExecution(chain_id=chain_id, batch_id=batch_id, status=status, total_tasks=1))
            s.commit()
        return chain_id

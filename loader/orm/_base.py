"""The declarative base, the enum types and the status rule of loader.orm."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, DateTime, FetchedValue, Identity, MetaData, func
from sqlalchemy.dialects.postgresql import ENUM
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from loader.models import ProcessStatus

__all__ = ["OCR_STATUS", "PROCESS_STATUS", "Base", "OCRStatus", "ProcessStatus", "batch_status", "id_column"]


class OCRStatus(enum.StrEnum):
    """Outcome of OCR for one image; mirrors the ``ocr_status`` enum of schema.sql."""

    SUCCESS = "success"
    FAILED = "failed"


def _labels(cls: type[enum.Enum]) -> list[str]:
    """The database labels of an enum: its members' values (SQLAlchemy's default is their names)."""
    return [str(member.value) for member in cls]


# create_type=False: the types belong to schema.sql; create_all() or an
# application's start-up must never create others (a role without CREATE on the
# schema would fail, and unused types would appear beside the real ones).
PROCESS_STATUS = ENUM(ProcessStatus, name="process_status", values_callable=_labels, create_type=False)
OCR_STATUS = ENUM(OCRStatus, name="ocr_status", values_callable=_labels, create_type=False)

# Constraint names as PostgreSQL gives them to schema.sql's unnamed constraints,
# so the metadata and the deployed schema name every constraint alike.
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
}


class Base(DeclarativeBase):
    """Declarative base of the loader's tables; ``Base.metadata`` is what Alembic compares."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def id_column() -> Mapped[int]:
    # BY DEFAULT, not ALWAYS: an insert may still set an id, as on the original SERIAL ids.
    return mapped_column(BigInteger, Identity(always=False), primary_key=True)


class Timestamps:
    """created_at from the server, updated_at from schema.sql's trigger; never set them."""

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), server_onupdate=FetchedValue()
    )

    # Read the server's values back in the INSERT/UPDATE itself (RETURNING):
    # otherwise they are expired, and reading them in an AsyncSession fails.
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}


def batch_status(
    total_images: int, completed_images: int, failed_images: int, current: ProcessStatus | None = None
) -> ProcessStatus:
    """The status the loader's merge gives a batch with these totals (loader/sql/save.sql, ``totals``);
    ``current``: the batch's status now (a STARTED batch that received nothing stays STARTED)."""
    accounted = completed_images + failed_images
    if accounted == 0 and total_images > 0:
        return ProcessStatus.STARTED if current == ProcessStatus.STARTED else ProcessStatus.PENDING
    if accounted < total_images:
        return ProcessStatus.STARTED
    if completed_images == 0 and failed_images > 0:
        return ProcessStatus.FAILURE
    return ProcessStatus.SUCCESS

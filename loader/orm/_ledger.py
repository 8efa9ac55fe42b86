"""loader.orm's models of the loader's own bookkeeping: the schema version and the call ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Integer, LargeBinary, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from loader.orm._base import Base


class SchemaVersion(Base):
    """One row per applied schema version (read-only for the application)."""

    __tablename__ = "loader_schema_version"
    __table_args__ = (
        CheckConstraint("version > 0", name="loader_schema_version_version_check"),
        {
            "comment": "One row per applied schema version; the loader refuses to write unless "
            "max(version) equals the version it was built for."
        },
    )

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    description: Mapped[str] = mapped_column(Text)


class LoaderCall(Base):
    """A call a batch committed (the loader's ledger): a redelivery of it changes nothing."""

    __tablename__ = "loader_calls"
    __table_args__ = (
        CheckConstraint("length(digest) = 32", name="loader_calls_digest_check"),
        CheckConstraint("first_position >= 0", name="loader_calls_first_position_check"),
        CheckConstraint("inputs >= 0", name="loader_calls_inputs_check"),
        {
            "comment": "The calls each batch committed. A redelivered call is a replay (nothing judged or "
            "written) only when the rows at its positions confirm it (loader_locked_call); otherwise it "
            "is judged. Deleted with the batch."
        },
    )

    batch_id: Mapped[str] = mapped_column(
        Text, ForeignKey("batch_executions.batch_id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[bytes] = mapped_column(
        LargeBinary,
        primary_key=True,
        comment="SHA-256 of the call: its kind (plain, repair, replace), and every input with its "
        "position, over a typed canonical form (loader/save/digest.py: a Decimal and a string, bytes and "
        "str never share one).",
    )
    first_position: Mapped[int | None] = mapped_column(
        Integer, comment="Position of the call's first input (NULL for a call with none)."
    )
    inputs: Mapped[int] = mapped_column(Integer)
    committed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

"""loader: exactly-once bulk loading of OCR batch results into PostgreSQL.

Binary COPY into staging tables, then one merge statement that also recomputes
the batch's totals, all in one transaction per call. What a caller needs is
here; the modules behind it (save, validate, copy, isolate, ...) are internals.
"""

from loader.connection import SCHEMA_VERSION, make_pool
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    DatabaseError,
    InputFileError,
    LoaderError,
    SchemaVersionError,
    TransactionStateError,
    TransientDatabaseError,
)
from loader.models import (
    BatchProgress,
    InputIssue,
    LoadReport,
    OCRResult,
    ProcessStatus,
    TextBox,
)
from loader.pipeline import Judged, judge, save_judged
from loader.progress import get_progress
from loader.save import Settings, register_batch, save_batch
from loader.schema import apply_schema

__all__ = [
    "SCHEMA_VERSION",
    "BatchConflictError",
    "BatchNotFoundError",
    "BatchProgress",
    "ConfigurationError",
    "DatabaseError",
    "InputFileError",
    "InputIssue",
    "Judged",
    "LoadReport",
    "LoaderError",
    "OCRResult",
    "ProcessStatus",
    "SchemaVersionError",
    "Settings",
    "TextBox",
    "TransactionStateError",
    "TransientDatabaseError",
    "apply_schema",
    "get_progress",
    "judge",
    "make_pool",
    "register_batch",
    "save_batch",
    "save_judged",
]

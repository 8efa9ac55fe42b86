"""loader: exactly-once bulk loading of OCR batch results into PostgreSQL.

Binary COPY into staging tables, then one merge statement that also recomputes
the batch's totals, all in one transaction per call.
"""

from loader.connection import SCHEMA_VERSION, make_pool
from loader.errors import (
    BatchConflictError,
    ConfigurationError,
    DatabaseError,
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
from loader.progress import BatchNotFoundError, get_progress
from loader.save import Settings, register_batch, save_batch, save_prepared
from loader.schema import apply_schema
from loader.validate import Prepared, prepare

__all__ = [
    "SCHEMA_VERSION",
    "BatchConflictError",
    "BatchNotFoundError",
    "BatchProgress",
    "ConfigurationError",
    "DatabaseError",
    "InputIssue",
    "LoadReport",
    "LoaderError",
    "OCRResult",
    "Prepared",
    "ProcessStatus",
    "SchemaVersionError",
    "Settings",
    "TextBox",
    "TransactionStateError",
    "TransientDatabaseError",
    "apply_schema",
    "get_progress",
    "make_pool",
    "prepare",
    "register_batch",
    "save_batch",
    "save_prepared",
]

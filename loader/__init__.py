"""loader: exactly-once bulk loading of OCR batch results into PostgreSQL.

Binary COPY into staging tables, then one merge statement that also updates
the batch's totals from the call's changes (and announces them on the
loader_progress channel), all in one transaction per call.
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
from loader.progress import BatchNotFoundError, follow_progress, get_progress, recount_batch
from loader.repair import RejectCounts, RejectRecord, count_rejects, list_rejects
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
    "RejectCounts",
    "RejectRecord",
    "SchemaVersionError",
    "Settings",
    "TextBox",
    "TransactionStateError",
    "TransientDatabaseError",
    "apply_schema",
    "count_rejects",
    "follow_progress",
    "get_progress",
    "list_rejects",
    "make_pool",
    "prepare",
    "recount_batch",
    "register_batch",
    "save_batch",
    "save_prepared",
]

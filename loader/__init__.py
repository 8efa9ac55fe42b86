"""loader: exactly-once bulk loading of OCR batch results into PostgreSQL.

Binary COPY into staging tables, then one merge statement that also updates
the batch's totals from the call's changes (and announces them on the
loader_progress channel), all in one transaction per call. What a caller needs
is here; the modules behind it (save, validate, copy, isolate, ...) are internals.
"""

#: This release's version (semantic versioning; CHANGELOG.md says which schema
#: version each release reads and writes). The one place it is written:
#: pyproject.toml reads it, and ``importlib.metadata`` reports it once installed.
__version__ = "0.4.0.dev0"

from loader.connection import SCHEMA_VERSION, make_pool
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    DatabaseError,
    InputFileError,
    LoaderError,
    PositionConflictError,
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
from loader.progress import follow_progress, get_progress, recount_batch
from loader.repair import RejectCounts, RejectRecord, count_rejects, list_rejects
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
    "PositionConflictError",
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
    "judge",
    "list_rejects",
    "make_pool",
    "recount_batch",
    "register_batch",
    "save_batch",
    "save_judged",
]

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

# The `loader` command: a Ctrl-C while the modules below load (~0.6 s) ends it
# with one line, not a traceback. Only for the console script (loader.cli.main
# puts Python's own handler back before running a command); importing loader
# as a library changes nothing.
import loader._interrupt  # noqa: F401, I001

from loader.connection import make_pool
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    DatabaseError,
    LoaderError,
    PositionConflictError,
    TransientDatabaseError,
)
from loader.lifecycle.delete import delete_batch
from loader.models import BatchProgress, LoadReport, OCRResult, ProcessStatus, TextBox
from loader.progress.read import follow_progress, get_progress, recount_batch
from loader.save.call import register_batch, save_batch
from loader.settings import Settings

# The front a caller needs, at most 20 names (python3 dev.py check holds it there).
# The rest lives in named modules: loader.save.pipeline (judge / save_judged), loader.lifecycle.repair
# (list_rejects, count_rejects), loader.lifecycle.delete (retention), loader.aio (async API),
# loader.errors (every exception), loader.models (InputIssue), loader.schema.apply
# (apply_schema), loader.connection (SCHEMA_VERSION).
__all__ = [
    "BatchConflictError",
    "BatchNotFoundError",
    "BatchProgress",
    "ConfigurationError",
    "DatabaseError",
    "LoadReport",
    "LoaderError",
    "OCRResult",
    "PositionConflictError",
    "ProcessStatus",
    "Settings",
    "TextBox",
    "TransientDatabaseError",
    "delete_batch",
    "follow_progress",
    "get_progress",
    "make_pool",
    "recount_batch",
    "register_batch",
    "save_batch",
]

"""The OCR application's SQLAlchemy models of the loader's tables (``pip install "ocr-batch-loader[orm]"``).

The same classes, columns and methods as the application's original models, fitted to
schema.sql so that they can neither break on it nor drift from it: tests/db/test_orm.py
deploys schema.sql and holds these models to it with Alembic's ``compare_metadata``
(nothing to report), and uses them on psycopg 3 and asyncpg next to the loader.

What these models do that hand-written ones usually get wrong (docs/application.md):

* Enums map the deployed types exactly: type names ``process_status`` and ``ocr_status``,
  labels are the members' *values* (``success``, not ``SUCCESS``), and
  ``create_type=False``: ``create_all`` never creates enum types of its own.
* Ids are identities the database assigns; ``created_at`` comes from the server and
  ``updated_at`` from the schema's trigger, both fetched back (``eager_defaults``) so
  an AsyncSession never needs a lazy load to see them; both are time-zone aware.
* ``OCRExecution.error`` and ``OCRTextBox.position`` may be left out: the schema's
  triggers fill them in (a stated placeholder error, the image's next position).
* The batch's totals and status belong to the loader, whose every merge adds its
  changes to them (a write by anyone else marks them stale; the next merge recounts);
  see BatchExecution.

Nothing in the save path imports this module: ``import loader`` works without SQLAlchemy.
"""

from __future__ import annotations

from loader.orm._base import OCR_STATUS, PROCESS_STATUS, Base, OCRStatus, ProcessStatus, batch_status
from loader.orm._history import OCRResultVersion
from loader.orm._ledger import LoaderCall, SchemaVersion
from loader.orm._tables import (
    BatchExecution,
    ChainExecution,
    LoadReject,
    OCRExecution,
    OCRTextBox,
    TaskLog,
)
from loader.orm._tools import (
    LOADER_TABLES,
    SHARED_TABLES,
    engine_url,
    include_except_loader_objects,
    include_object,
)

__all__ = [
    "LOADER_TABLES",
    "OCR_STATUS",
    "PROCESS_STATUS",
    "SHARED_TABLES",
    "Base",
    "BatchExecution",
    "ChainExecution",
    "LoadReject",
    "LoaderCall",
    "OCRExecution",
    "OCRResultVersion",
    "OCRStatus",
    "OCRTextBox",
    "ProcessStatus",
    "SchemaVersion",
    "TaskLog",
    "batch_status",
    "engine_url",
    "include_except_loader_objects",
    "include_object",
]

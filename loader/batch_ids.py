"""What a batch id may be: the one check every entry point (save, the CLI, Celery) applies."""

from __future__ import annotations

import unicodedata

from loader.validate import path_problem

# schema.sql: CHECK (batch_id <> '' AND length(batch_id) <= 255), in characters.
MAX_BATCH_ID_CHARS = 255


def batch_id_problem(batch_id: str) -> str | None:
    """Why ``batch_id`` cannot name a batch, or None.

    The length is checked first and in the schema's unit (characters), so a long id is
    told the limit it broke rather than the path check's byte limit. Control characters
    (Unicode category Cc: ESC, newlines, ...) are refused: an id is printed by
    `loader status` and in messages, where a terminal would act on them.
    """
    if len(batch_id) > MAX_BATCH_ID_CHARS:
        return f"batch_id is longer than {MAX_BATCH_ID_CHARS} characters ({len(batch_id):,})"
    control = next((c for c in batch_id if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"batch_id contains the control character U+{ord(control):04X} ({control!r})"
    return path_problem(batch_id, "batch_id")

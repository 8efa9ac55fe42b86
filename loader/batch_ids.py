"""The arguments every entry point checks the same way (save, the async API, the CLI, Celery).

A batch id, a total, a position offset: refused here with a ConfigurationError that
says what was wrong, before anything reaches the database.
"""

from __future__ import annotations

import unicodedata

from loader.errors import ConfigurationError, PositionBeyondTotalError, quoted
from loader.fields import path_problem

# schema.sql: CHECK (batch_id <> '' AND length(batch_id) <= 255), in characters.
MAX_BATCH_ID_CHARS = 255
# Largest position: the position columns are 4-byte integers.
MAX_POSITION = 2**31 - 1


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


def check_batch_id(batch_id: object) -> str:
    if not isinstance(batch_id, str):
        raise ConfigurationError(f"batch_id must be a string, got {type(batch_id).__name__}")
    problem = batch_id_problem(batch_id)
    if problem:
        raise ConfigurationError(f"unusable batch_id {quoted(batch_id)}: {problem}")
    return batch_id


def check_total(total_images: object) -> int | None:
    if total_images is None:
        return None
    if not isinstance(total_images, int) or isinstance(total_images, bool) or total_images < 0:
        raise ConfigurationError(f"total_images must be a non-negative integer, got {total_images!r}")
    if total_images > 2**31 - 1:
        raise ConfigurationError(f"total_images {total_images} is larger than the column allows")
    return total_images


def check_offset(position_offset: object) -> int:
    if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
        raise ConfigurationError(f"position_offset must be a non-negative integer, got {position_offset!r}")
    return position_offset


def check_last_position(last: int) -> None:
    if last > MAX_POSITION:
        # Binary COPY would wrap larger positions around silently, not fail.
        raise ConfigurationError(
            f"position {last} does not fit the position columns (at most {MAX_POSITION}); "
            "number the inputs from a smaller offset"
        )


def total_conflict(batch_id: str, asked: int | None, declared: int | None) -> str | None:
    """Why a call's total_images contradicts the total declared for the batch, or None.

    Compared with the declared total, not the stored one: that one grows past it
    when another writer stored images in the batch at no position, and every call
    of the batch still declares the batch's size.
    """
    if asked is None or declared is None or asked == declared:
        return None
    return (
        f"batch {quoted(batch_id)} was declared with total_images={declared}, but this call says {asked}; "
        "pass the batch's total (not the chunk's), or none, with every call of a batch"
    )


def check_inside(batch_id: str, last_position: int | None, declared: int | None) -> None:
    """Refuse a call whose highest position lies at or past the batch's declared total.

    Positions are 0 .. total - 1, so once every one of them received its input the
    batch is complete: an input past the total would let the counts reach it with
    positions inside it never received (issue 20, item 9).
    """
    if declared is None or last_position is None or last_position < declared:
        return
    raise PositionBeyondTotalError(
        f"batch {quoted(batch_id)} was declared with total_images={declared}, so its positions are "
        f"0 to {declared - 1}, but this call sends an input at position {last_position}; nothing of "
        "the call was kept. Number each call's inputs by their place in the batch (position_offset), "
        "or declare the batch with its real total",
        last_position,
        declared,
    )
